"""`POST /v1/admin/reviews`, `/v1/admin/forget` and `/v1/admin/command`, for a reviewer's admin key. The key
is checked before the body is read, so a caller without one learns nothing about the schema."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving import openapi
from serving.deps import Admin, Ctx
from serving.errors import ApiError, parse_body
from serving.pages import BadDecision
from serving.schemas import CommandRequest, DecisionRequest, ForgetRequest

router = APIRouter(prefix="/v1/admin")


@router.post(
    "/reviews",
    response_model=openapi.Decided,
    responses=openapi.ERRORS_OR_BUSY,
    openapi_extra=openapi.json_body(DecisionRequest),
)
async def admin_reviews(request: Request, ctx: Ctx, reviewer: Admin):
    """Approve or reject samples as the reviewer whose admin key is sent."""
    body = parse_body(DecisionRequest, await request.body())
    try:
        n = await run_in_threadpool(ctx.backend().decide, body.sample_ids, body.decision, reviewer, body.reason)
    except BadDecision as e:
        raise ApiError(e.status, str(e)) from None
    return {"decided": n, "decision": body.decision, "reviewer": reviewer}


@router.post(
    "/forget",
    response_model=openapi.Forgotten,
    responses=openapi.ERRORS_OR_BUSY,
    openapi_extra=openapi.json_body(ForgetRequest),
)
async def admin_forget(request: Request, ctx: Ctx, actor: Admin):
    """Erase a user's data (right to be forgotten); answers what was deleted and what was trained on it."""
    body = parse_body(ForgetRequest, await request.body())
    try:
        return JSONResponse(await run_in_threadpool(ctx.backend().forget, body.app, body.user, actor))
    except BadDecision as e:
        raise ApiError(e.status, str(e)) from None


@router.post(
    "/command",
    response_model=openapi.CommandResult,
    responses=openapi.ERRORS_OR_BUSY,
    openapi_extra=openapi.json_body(CommandRequest),
)
async def admin_command(request: Request, ctx: Ctx, actor: Admin):
    """Run a read or admin `flywheel` command in the service, on its database, as the reviewer whose key is
    sent: what the CLI does while `flywheel up` holds the database. Answers what it printed and its exit code."""
    body = parse_body(CommandRequest, await request.body())
    return await run_in_threadpool(ctx.backend().command, [*body.command.split(), *body.args], actor)
