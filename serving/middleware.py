"""ASGI layers that answer before FastAPI runs: the Host check (DNS rebinding), the body limit (413 before
anything parses), and the feedback fast path (the hottest route, straight from the ASGI messages)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from serving.config import ServingConfig
from serving.errors import ApiError, send_error, send_json


def host_name(host: str) -> str:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1", "a.example:80" -> "a.example")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def client_address(scope) -> str:
    """The peer's address (not X-Forwarded-For: a client could send any)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def served_hosts(cfg: ServingConfig) -> list[str]:
    """serving.allowed_hosts, plus the address it listens on when that is one address (not 0.0.0.0 or ::)."""
    return cfg.allowed_hosts + ([cfg.host] if cfg.host not in ("0.0.0.0", "::", "") else [])


def too_large(limit: int) -> str:
    return f"request body over {limit} bytes (serving.max_body_bytes)"


def body_limit(app, limit: int):
    """A body over `limit` bytes gets 413 before anything parses it."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await send_error(send, ApiError(413, too_large(limit)))
        seen, refused = 0, False

        # A streamed body: once over the limit, answer 413 here and tell the app the client left. (An
        # exception raised from `receive` would reach FastAPI's body parsing, which answers it with a 400.)
        async def limited():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                refused = True
                await send_error(send, ApiError(413, too_large(limit)))
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message):
            if not refused:  # the 413 is already out: whatever the app says after it is dropped
                await send(message)

        return await app(scope, limited, unless_refused)

    return middleware


def host_check(app, allowed: list[str]):
    """A request whose Host is not one of `allowed` gets 400 before anything else runs (DNS rebinding: a page
    on evil.example that resolves its name to 127.0.0.1 sends Host: evil.example)."""
    names = {h.lower() for h in allowed}
    if "*" in names:
        return app

    async def middleware(scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_name(host) not in names:
                return await send_error(
                    send, ApiError(400, f"Host {host!r} is not served here (serving.allowed_hosts)")
                )
        return await app(scope, receive, send)

    return middleware


def fast_feedback(app, accept: Callable[[str, str, bytes], Awaitable[dict]]):
    """POST /v1/feedback answered straight from the ASGI messages (about twice the throughput of the same
    handler behind Starlette's routing); everything else goes on to `app`. Sits inside `body_limit`, which
    answers 413 for a body over the limit and then reports a disconnect here."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/feedback" or scope["method"] != "POST":
            return await app(scope, receive, send)
        try:
            chunks, more = [], True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            payload = await accept(authorization, client_address(scope), b"".join(chunks))
        except ApiError as e:
            return await send_error(send, e)
        await send_json(send, 202, payload)

    return middleware
