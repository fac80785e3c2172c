"""What `/openapi.json` says the API answers: response bodies, the error shape every route shares, and the
Bearer key. Handlers build their JSON by hand (the hot routes skip response-model validation); these models
document it, and `tests/serving/test_openapi.py` (Schemathesis) checks every answer against them."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class FeedbackAccepted(BaseModel):
    id: str
    object: Literal["feedback"]
    accepted: bool


class Decided(BaseModel):
    decided: int
    decision: Literal["approve", "reject"]
    reviewer: str


class CommandResult(BaseModel):
    exit_code: int = Field(description="What the command exits with when run locally (0 ok, 1 failed, 2 usage).")
    stdout: str
    stderr: str


class Forgotten(BaseModel):
    user_hash: str
    deleted: dict[str, int]
    snapshots: list[str]
    adapters: list[str]
    routing: list[str] = Field(default_factory=list, description="What serves instead of a tainted adapter.")
    compaction: str


# One server-sent event of a streamed answer (Open API 3.1: the schema of `text/event-stream` is one event).
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "A chat.completion.chunk as JSON; the last event is [DONE]."}
    },
}


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool


# Declares the Bearer scheme in the schema; `auto_error=False` leaves the 401 (in OpenAI's shape) to the
# handlers, which also rate-limit per key.
bearer = HTTPBearer(
    auto_error=False,
    description="An app's API key (serving.api_keys) or, for /v1/admin, an admin key (serving.admin_keys).",
)


# Error answers for `responses=`: any 4xx (400 bad input, 401 no or a wrong key, 403 another app's response,
# 404 unknown id, 413 body over serving.max_body_bytes, 429 rate limit), and 503 where a route can be busy.
# Declaring 4XX also keeps FastAPI from documenting a 422 that the API never sends (bad input is 400).
ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "The request was refused; `error.message` says why."}
}
ERRORS_OR_BUSY: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    503: {
        "model": ErrorBody,
        "description": "Not now: the model is busy, its version "
        "changed, or the route needs the database (Retry-After).",
    },
}


def json_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` for a route that parses its own body: documents `model` as the required JSON body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def json_body_ref(name: str) -> dict:
    """`openapi_extra` for a route that parses its own body into the model `name`, whose schema
    `serving.app.document_limits` puts into the components (where the limits are written into it)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }
