"""Every refusal in OpenAI's error shape, `{"error": {"message", "type", "code"}}`: raised as `ApiError` by
the routes and dependencies, answered by the handlers installed here, and written straight to ASGI by the
middleware that answers before FastAPI runs. A message names the field or the setting behind the refusal."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """An answer in OpenAI's error shape; `kind` follows from the status unless given."""

    def __init__(self, status: int, message: str, kind: str | None = None, headers: Mapping[str, str] | None = None):
        self.status, self.message, self.headers = status, message, dict(headers or {})
        self.kind = kind or KINDS.get(status, "invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}


def busy(message: str = "the model is busy: try again shortly") -> ApiError:
    return ApiError(503, message, headers={"Retry-After": "1"})


def first_error(errors: Sequence[Any]) -> str:
    """The first validation error as one line that names the field (FastAPI's 'body' prefix left out)."""
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    if first.get("type") == "extra_forbidden":
        return f"{where}: unknown parameter (not one this API takes; see /openapi.json)"
    return f"{where}: {first['msg']}"


def parse_body(model: type[BaseModel], raw: bytes):
    """The JSON body as `model`, or a 400 whose message names the field: 'rating: Field required'. For routes
    that check the caller's key before they read the body (a stranger learns nothing about the schema)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise ApiError(400, first_error(e.errors())) from None


def install_error_handlers(app: FastAPI) -> None:
    def answer(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), e.status, e.headers)

    async def api_error(_request, e: ApiError):
        return answer(e)

    async def http_error(_request, e: StarletteHTTPException):  # unknown route, wrong method, unreadable body
        return answer(ApiError(e.status_code, str(e.detail), headers=e.headers))

    async def server_error(_request, e: Exception):
        log.error("request failed", exc_info=e)
        return answer(ApiError(500, f"internal error ({type(e).__name__}); it is logged"))

    async def bad_request(_request, e: RequestValidationError):
        return answer(ApiError(400, first_error(e.errors())))

    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]  # Starlette types handlers loosely
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, server_error)
    app.add_exception_handler(RequestValidationError, bad_request)  # type: ignore[arg-type]


async def send_error(send, e: ApiError) -> None:
    """Answer `e` on a raw ASGI `send` (for middleware that runs before FastAPI)."""
    await send_json(send, e.status, e.body(), e.headers)


async def send_json(send, status: int, payload: dict, headers: dict | None = None) -> None:
    body = json.dumps(payload).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})
