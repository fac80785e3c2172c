"""`/healthz` (the process answers), `/readyz` (Kafka takes events) and `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving import openapi
from serving.deps import Ctx

router = APIRouter()


@router.get("/healthz", response_model=openapi.Health)
async def healthz():
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=openapi.Readiness,
    responses={503: {"model": openapi.Readiness, "description": "Kafka is away: events wait in the outbox."}},
)
async def readyz(ctx: Ctx):
    ok = ctx.ready()
    return JSONResponse({"ready": ok}, 200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(ctx: Ctx):
    m = ctx.metrics
    if ctx.generator is not None:
        m.queue.set(ctx.generator.depth)
    if ctx.outbox is not None:
        m.outbox.set(ctx.outbox.size())
        m.outbox_unsent.set(ctx.outbox.unsent())
        m.outbox_rejected.set(ctx.outbox.rejected())
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
