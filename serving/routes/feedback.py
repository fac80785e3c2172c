"""`POST /v1/feedback`: a thumbs-up or -down (with an optional comment and correction) on a response id this
service signed. Accepted (202) once the event is in the outbox. The route is documented here and answered
by `serving.middleware.fast_feedback`, which calls `accept` without Starlette's request objects."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ingest.contracts import Feedback
from serving import ids, openapi
from serving.deps import App, Context, Ctx, authenticate
from serving.errors import ApiError, parse_body
from serving.schemas import FeedbackRequest

router = APIRouter(prefix="/v1")
NAMESPACE = uuid.UUID("5b0e9c1e-8d6f-4c38-9a57-0c1f3f0e7b21")
RATINGS: dict[str | int, Literal[1, -1]] = {"up": 1, "down": -1, 1: 1, -1: -1}


async def accept(ctx: Context, authorization: str, address: str, raw: bytes) -> dict:
    """The fast path's entry: the key, then the body."""
    return await record(ctx, authenticate(ctx, authorization, address), raw)


async def record(ctx: Context, app_id: str, raw: bytes) -> dict:
    body = parse_body(FeedbackRequest, raw)
    claims = ids.verify(ctx.secret, body.response_id)
    if claims is None:
        raise ApiError(404, "unknown response_id")
    if claims.app_id != app_id:
        raise ApiError(403, "this response_id was issued to another app")
    if ctx.forgotten is not None and ctx.forgotten(claims.user_id, claims.issued_at):
        raise ApiError(404, "unknown response_id: its user's data was erased")
    if time.time() - claims.issued_at > ctx.cfg.feedback_window_days * 86_400:
        raise ApiError(
            404,
            f"this response_id expired: feedback is taken for {ctx.cfg.feedback_window_days:g} "
            "days (serving.feedback_window_days)",
        )
    if body.choice >= claims.choices:
        raise ApiError(404, f"unknown choice {body.choice}: this answer has choices 0 to {claims.choices - 1}")
    rating = RATINGS.get(body.rating)
    if rating is None:
        raise ApiError(400, "rating: 'up' or 'down' (or 1 or -1)")
    ctx.scrub.charge(app_id, [body.comment, body.correction])
    # The same rating sent twice is one event: the id is derived from what it says.
    response_id = ids.choice_id(body.response_id, body.choice)
    key = json.dumps([response_id, rating, body.comment, body.correction])
    event = Feedback(
        event_id=uuid.uuid5(NAMESPACE, key),
        response_id=response_id,
        app_id=app_id,
        user_id=claims.user_id,
        rating=rating,
        comment=body.comment,
        correction=body.correction,
        answered_at=datetime.fromtimestamp(claims.issued_at, UTC),
    )
    await ctx.log(event)
    return {"id": str(event.event_id), "object": "feedback", "accepted": True}


# Not reached in service (the middleware answers first): it documents the route in /openapi.json, and
# answers the same way when the app runs without the middleware.
@router.post(
    "/feedback",
    status_code=202,
    response_model=openapi.FeedbackAccepted,
    responses=openapi.ERRORS,
    openapi_extra=openapi.json_body(FeedbackRequest),
)
async def feedback(request: Request, ctx: Ctx, app_id: App):
    return JSONResponse(await record(ctx, app_id, await request.body()), 202)
