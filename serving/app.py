"""The HTTP API: OpenAI-compatible chat completions, feedback, models, health and metrics.

`create_app` receives everything it uses (config section, generator, tokenizer, outbox, router, secret);
there is no module-level app. Every answer is logged as a ChatLog event through the outbox before the
client sees it, with the variant that produced it; feedback is accepted (2xx) once it is in the outbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest import contracts
from ingest.contracts import ChatLog, Feedback, Message
from serving import ids, openapi
from serving.config import ServingConfig
from serving.generator import BASE, AdapterGone, GenRequest, QueueFull
from serving.outbox import Outbox
from serving.pages import add_review_routes, first_error, parse_body

log = logging.getLogger(__name__)
FEEDBACK_NAMESPACE = uuid.UUID("5b0e9c1e-8d6f-4c38-9a57-0c1f3f0e7b21")


_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """An answer in OpenAI's error shape; `kind` follows from the status unless given."""

    def __init__(self, status: int, message: str, kind: str | None = None, headers: dict | None = None):
        self.status, self.message, self.headers = status, message, headers or {}
        self.kind = kind or _KINDS.get(status, "invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}


ROLES = ("system", "user", "assistant", "tool")


def _whole(value):
    """JSON Schema's integers include 8.0; strict pydantic takes only 8."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON types as /openapi.json states them, strictly (no "stream": 0 for false, no "8" for 8), except that a
# whole float is an integer as JSON Schema has it. Unknown fields are ignored.
Int = Annotated[int, BeforeValidator(_whole)]
Count = Annotated[int, Field(ge=1), BeforeValidator(_whole)]


MAX_STOPS, MAX_STOP_CHARS = 4, 64
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
# What the chat log event may hold for the messages: the contract's event size less room for the longest
# answer (MAX_FIELD_CHARS characters of up to 4 UTF-8 bytes) and the ids. Larger chats were answered 200 and
# then dead-lettered by ingest.
MAX_CHAT_BYTES = contracts.MAX_EVENT_BYTES - 4 * contracts.MAX_FIELD_CHARS - 8 * 1024


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: str = Field(json_schema_extra={"enum": list(ROLES)})  # checked in the handler, with a clearer message
    content: str | None = ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # OpenAI clients send fields we do not use (n=1, ...)
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    # OpenAI allows 4; 80,000 were accepted once (1.16 s of the shared model thread per answer to check them).
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOPS)] | None = None
    seed: Int | None = None  # any integer: the generator takes it modulo 2**64
    stream: bool = False
    user: str | None = Field(None, max_length=128)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    response_id: str = Field(max_length=1024)
    rating: str | Int = Field(description="up | down (or 1 | -1)", json_schema_extra={"enum": ["up", "down", 1, -1]})
    comment: str | None = Field(None, max_length=16_000)
    correction: str | None = Field(None, max_length=16_000)


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter("flywheel_http_requests", "Requests", ["route", "status"], registry=registry)
        self.latency = Histogram("flywheel_http_seconds", "Latency", ["route", "variant"], registry=registry)
        self.tokens = Counter("flywheel_generated_tokens", "Tokens generated", ["variant"], registry=registry)
        self.queue = Gauge("flywheel_generation_queue_depth", "Requests waiting for the model", registry=registry)
        self.outbox = Gauge("flywheel_outbox_events", "Events held in the outbox: not yet stored by ingest",
                            registry=registry)
        self.outbox_unsent = Gauge("flywheel_outbox_unsent", "Events not yet acknowledged by Kafka", registry=registry)
        self.outbox_rejected = Gauge("flywheel_outbox_rejected",
                                     "Events Kafka refused for good, set aside in outbox_rejected", registry=registry)


class RateLimiter:
    """A token bucket per app: `rate` per second, up to `burst` at once (a request may cost several)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst, self.buckets = rate, burst, {}

    def allow(self, key: str, cost: float = 1) -> bool:
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < cost:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - cost, now)
        return True


class GroupCommit:
    """Events of concurrent requests go to the outbox together: one thread hop and one fsync per group,
    instead of one per request. Each request still returns only after its own event is on disk."""

    def __init__(self, outbox: Outbox):
        self.outbox, self.pending, self.task = outbox, [], None

    async def put(self, row: tuple[str, bytes, bytes]) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.pending.append((row, done))
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            group, self.pending = self.pending, []
            try:
                await loop.run_in_executor(None, self.outbox.append_many, [row for row, _ in group])
            except Exception as e:
                for _, done in group:
                    done.set_exception(e)
                continue
            for _, done in group:
                done.set_result(None)


def _too_large(limit: int) -> str:
    return f"request body over {limit} bytes (serving.max_body_bytes)"


def _body_limit(app, limit: int):
    """ASGI middleware: a body over `limit` bytes gets 413 before anything parses it."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_error(send, ApiError(413, _too_large(limit)))
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
                await _send_error(send, ApiError(413, _too_large(limit)))
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message):
            if not refused:  # the 413 is already out: whatever the app says after it is dropped
                await send(message)

        return await app(scope, limited, unless_refused)

    return middleware


async def _send_error(send, e: ApiError) -> None:
    await _send_json(send, e.status, e.body(), e.headers)


async def _send_json(send, status: int, payload: dict, headers: dict | None = None) -> None:
    body = json.dumps(payload).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


def host_name(host: str) -> str:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1", "a.example:80" -> "a.example")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def prompt_tokens_limit(cfg: ServingConfig, context: int | None) -> int:
    """serving.max_prompt_tokens, checked against the model's context (prompt + answer must fit)."""
    if context is None:
        return cfg.max_prompt_tokens or 1 << 62
    room = context - cfg.max_tokens
    if room < 1:
        raise ValueError(f"serving.max_tokens={cfg.max_tokens} leaves no room for a prompt in the model's "
                         f"{context}-token context")
    if cfg.max_prompt_tokens is not None and cfg.max_prompt_tokens > room:
        raise ValueError(f"serving.max_prompt_tokens={cfg.max_prompt_tokens}: at most {room} (the model's "
                         f"{context}-token context minus serving.max_tokens={cfg.max_tokens})")
    return cfg.max_prompt_tokens or room


def client_address(scope) -> str:
    """The peer's address (not X-Forwarded-For: a client could send any)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def served_hosts(cfg: ServingConfig) -> list[str]:
    """serving.allowed_hosts, plus the address it listens on when that is one address (not 0.0.0.0 or ::)."""
    return cfg.allowed_hosts + ([cfg.host] if cfg.host not in ("0.0.0.0", "::", "") else [])


def _host_check(app, allowed: list[str]):
    """ASGI: a request whose Host is not one of `allowed` gets 400 before anything else runs (DNS rebinding:
    a page on evil.example that resolves its name to 127.0.0.1 sends Host: evil.example)."""
    names = {h.lower() for h in allowed}
    if "*" in names:
        return app

    async def middleware(scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_name(host) not in names:
                return await _send_error(send, ApiError(400, f"Host {host!r} is not served here (serving.allowed_hosts)"))
        return await app(scope, receive, send)

    return middleware


def _fast_feedback(app, accept: Callable):
    """ASGI: POST /v1/feedback answered straight from the ASGI messages (about twice the throughput of the
    same handler behind Starlette's routing); everything else goes on to `app`. Sits inside `_body_limit`,
    which answers 413 for a body over the limit and then reports a disconnect here."""

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
            return await _send_error(send, e)
        await _send_json(send, 202, payload)

    return middleware


def install_error_handlers(app: FastAPI) -> None:
    """Errors in OpenAI's shape: {"error": {"message", "type", "code"}}."""

    def answer(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), e.status, e.headers)

    @app.exception_handler(ApiError)
    async def api_error(_request, e: ApiError):
        return answer(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e: StarletteHTTPException):  # unknown route, wrong method, unreadable body
        return answer(ApiError(e.status_code, str(e.detail), headers=e.headers))

    @app.exception_handler(Exception)
    async def server_error(_request, e: Exception):
        log.error("request failed", exc_info=e)
        return answer(ApiError(500, f"internal error ({type(e).__name__}); it is logged"))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request, e: RequestValidationError):
        return answer(ApiError(400, first_error(e.errors())))


def document_limits(app: FastAPI, cfg: ServingConfig) -> None:
    """/openapi.json states this server's limits (serving.max_messages, max_message_chars) and apps, which the
    handlers enforce with messages that name the setting."""

    def schema() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            models = doc["components"]["schemas"]
            models["ChatRequest"]["properties"]["messages"]["maxItems"] = cfg.max_messages
            for option in models["ChatMessage"]["properties"]["content"]["anyOf"]:
                if option.get("type") == "string":
                    option["maxLength"] = cfg.max_message_chars
            forget = doc["paths"].get("/v1/admin/forget")
            if forget:
                body = forget["post"]["requestBody"]["content"]["application/json"]["schema"]
                body["properties"]["app"]["enum"] = sorted(cfg.api_keys)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = schema


def create_app(
    cfg: ServingConfig,
    *,
    generator,
    tokenizer,
    outbox: Outbox,
    chats_topic: str,
    feedback_topic: str,
    secret: bytes,
    user_key: bytes,
    route: Callable[[str], tuple[str, str | None]],
    variants: Callable[[], list[str]],
    ready: Callable[[], bool] = lambda: True,
    registry: CollectorRegistry | None = None,
    review=None,
    forgotten: Callable[[str, float], bool] | None = None,
) -> FastAPI:
    """`forgotten(user, answered_at)`: whether that user was erased after that answer (then its rating is
    refused); None where the API has no database (`flywheel serve`: ingest drops such ratings instead)."""
    for name, key in (("secret", secret), ("user_key", user_key)):
        if len(key) < 32:  # guessable: forged response ids, reviewer cookies, reversible pseudonyms
            raise ValueError(f"create_app: {name} is {len(key)} bytes, at least 32 are needed")
    prompt_limit = prompt_tokens_limit(cfg, getattr(generator, "context_tokens", None))
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    limiter = RateLimiter(cfg.rate_limit_per_s, cfg.rate_burst)
    scrub_budget = RateLimiter(cfg.scrub_cost_per_s, cfg.scrub_cost_burst)

    def charge_text(app_id: str, texts: list[str | None]) -> None:
        """Refuse a text that would stall ingest (400), and more text per second than the key's share (429)."""
        costs = [contracts.scrub_cost(t) for t in texts]
        if max(costs, default=0) > contracts.MAX_TEXT_COST:
            raise ApiError(400, f"a text costs {max(costs)} to scrub (characters + {contracts.DIGIT_COST} per digit): "
                                f"at most {contracts.MAX_TEXT_COST}")
        total = sum(costs)
        if total > cfg.scrub_cost_burst:
            raise ApiError(413, f"this request's text costs {total} to scrub: at most {cfg.scrub_cost_burst} "
                                "(serving.scrub_cost_burst)")
        if not scrub_budget.allow(app_id, total):
            raise ApiError(429, f"text to scrub over this key's {cfg.scrub_cost_per_s:g}/s (serving.scrub_cost_per_s)",
                           headers={"Retry-After": "1"})
    throttle = ids.GuessThrottle(cfg.guess_burst, cfg.guess_per_s)
    commits = GroupCommit(outbox)
    app = FastAPI(title="Flywheel", version="0.1.0")
    install_error_handlers(app)

    def authenticate(request: Request | tuple[str, str]) -> str:
        """The app of the request's key; `request` may be (authorization header, client address)."""
        if isinstance(request, tuple):
            header, address = request
        else:
            header, address = request.headers.get("authorization", ""), client_address(request.scope)
        if not header.lower().startswith("bearer "):
            raise ApiError(401, "missing API key: send Authorization: Bearer <key>")
        if throttle.blocked(address):
            raise ApiError(429, "too many wrong keys from this address: try again later (serving.guess_per_s)",
                           headers={"Retry-After": str(math.ceil(1 / cfg.guess_per_s))})
        app_id = ids.app_for_key(header[7:].strip(), cfg.api_keys)
        if app_id is None:
            throttle.failed(address)
            raise ApiError(401, "invalid API key")
        if not limiter.allow(app_id):
            raise ApiError(429, f"rate limit of {cfg.rate_limit_per_s:g} requests/s exceeded",
                           headers={"Retry-After": "1"})
        return app_id

    async def log_event(topic: str, event) -> None:
        """Returns once the event is durable (committed to the outbox)."""
        await commits.put((topic, event.user_id.encode(), event.model_dump_json().encode()))

    keyed = [Depends(openapi.bearer)]

    @app.get("/healthz", response_model=openapi.Health)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=openapi.Readiness,
             responses={503: {"model": openapi.Readiness, "description": "Kafka is away: events wait in the outbox."}})
    async def readyz():
        ok = ready()
        return JSONResponse({"ready": ok}, 200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        metrics.queue.set(generator.depth)
        metrics.outbox.set(outbox.size())
        metrics.outbox_unsent.set(outbox.unsent())
        metrics.outbox_rejected.set(outbox.rejected())
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=openapi.ModelList, responses=openapi.ERRORS, dependencies=keyed)
    async def models(request: Request):
        authenticate(request)
        return {"object": "list", "data": [{"id": v, "object": "model", "created": 0, "owned_by": "flywheel"}
                                           for v in variants()]}

    @app.post("/v1/chat/completions", response_model=openapi.ChatCompletion, dependencies=keyed,
              responses={200: {"content": {"text/event-stream": {"schema": openapi.SSE_EVENT}},
                               "description": "The answer; with `stream: true`, server-sent chunks ending in [DONE]."},
                         **openapi.ERRORS_OR_BUSY})
    async def chat_completions(body: ChatRequest, request: Request):
        started = time.perf_counter()
        app_id = authenticate(request)
        if len(body.messages) > cfg.max_messages:
            raise ApiError(400, f"{len(body.messages)} messages: at most {cfg.max_messages} (serving.max_messages)")
        for m in body.messages:
            if len(m.content or "") > cfg.max_message_chars:
                raise ApiError(400, f"a message of {len(m.content)} characters: at most {cfg.max_message_chars} "
                                    "(serving.max_message_chars)")
            if m.role not in ROLES:
                raise ApiError(400, f"unknown role {m.role!r}")
        # Past this line the user is a pseudonym of (app, user): the raw id is never stored, sent or logged.
        user_id = ids.pseudonym(user_key, app_id, body.user or request.headers.get("x-flywheel-user") or "anonymous")
        variant, experiment = route(user_id)
        max_tokens = min(body.max_completion_tokens or body.max_tokens or cfg.max_tokens, cfg.max_tokens)
        messages = [{"role": m.role, "content": m.content or ""} for m in body.messages]
        size = sum(len(m["content"].encode()) + 32 for m in messages)
        if size > MAX_CHAT_BYTES:
            raise ApiError(413, f"the messages are {size} bytes: at most {MAX_CHAT_BYTES} (a chat log event holds "
                                f"{contracts.MAX_EVENT_BYTES} bytes with its answer)")
        charge_text(app_id, [m["content"] for m in messages])
        if generator.full:  # before the tokenizer's work (up to a second for the largest bodies)
            raise ApiError(503, "the model is busy: try again shortly", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        prompt = await loop.run_in_executor(None, lambda: tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        if len(prompt) > prompt_limit:
            raise ApiError(400, f"the prompt is {len(prompt)} tokens: at most {prompt_limit} "
                                "(serving.max_prompt_tokens)")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        response_id = ids.issue(secret, ids.ResponseClaims(app_id, user_id, variant, experiment, time.time()))
        headers = {"X-Flywheel-Variant": variant, "X-Flywheel-Response-Id": response_id}
        pieces: asyncio.Queue = asyncio.Queue()
        req = GenRequest(prompt, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                         stop=stops, seed=body.seed, adapter=variant if variant != BASE else BASE,
                         on_text=(lambda t: loop.call_soon_threadsafe(pieces.put_nowait, t)) if body.stream else None)
        try:
            future = generator.submit(req)
        except QueueFull:
            raise ApiError(503, "the model is busy: try again shortly", headers={"Retry-After": "1"}) from None
        created = int(time.time())

        async def finish(result) -> None:
            latency = (time.perf_counter() - started) * 1000
            await log_event(chats_topic, ChatLog(
                response_id=response_id, app_id=app_id, user_id=user_id, variant=variant, experiment_id=experiment,
                messages=[Message(**m) for m in messages], response=result.text, latency_ms=round(latency, 2)))
            metrics.tokens.labels(variant).inc(result.completion_tokens)
            metrics.latency.labels("chat", variant).observe(latency / 1000)

        if not body.stream:
            try:
                result = await asyncio.wrap_future(future)
            except AdapterGone:
                raise ApiError(503, "the model version changed: try again", headers={"Retry-After": "1"}) from None
            await finish(result)
            return JSONResponse({
                "id": response_id, "object": "chat.completion", "created": created, "model": variant,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": result.finish_reason}],
                "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                          "total_tokens": result.prompt_tokens + result.completion_tokens},
            }, headers=headers)

        def chunk(delta: dict, reason: str | None = None) -> str:
            return "data: " + json.dumps({"id": response_id, "object": "chat.completion.chunk", "created": created,
                                          "model": variant, "choices": [{"index": 0, "delta": delta,
                                                                         "finish_reason": reason}]}) + "\n\n"

        async def events():
            try:
                async for piece in stream():
                    yield piece
            finally:  # the client left (or the answer is done): a row still decoding stops at its next token
                req.cancel.set()

        async def stream():
            yield chunk({"role": "assistant", "content": ""})
            waiter = asyncio.wrap_future(future)
            while True:
                getter = asyncio.ensure_future(pieces.get())
                done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield chunk({"content": getter.result()})
                    continue
                getter.cancel()
                while not pieces.empty():
                    yield chunk({"content": pieces.get_nowait()})
                result = waiter.result()
                await finish(result)
                yield chunk({}, result.finish_reason)
                yield "data: [DONE]\n\n"
                return

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def accept_feedback(authorization: str, address: str, raw: bytes) -> dict:
        app_id = authenticate((authorization, address))
        body = parse_body(FeedbackRequest, raw, ApiError)
        claims = ids.verify(secret, body.response_id)
        if claims is None:
            raise ApiError(404, "unknown response_id")
        if claims.app_id != app_id:
            raise ApiError(403, "this response_id was issued to another app")
        if forgotten is not None and forgotten(claims.user_id, claims.issued_at):
            raise ApiError(404, "unknown response_id: its user's data was erased")
        if time.time() - claims.issued_at > cfg.feedback_window_days * 86_400:
            raise ApiError(404, f"this response_id expired: feedback is taken for {cfg.feedback_window_days:g} days "
                                "(serving.feedback_window_days)")
        rating = {"up": 1, "down": -1, 1: 1, -1: -1}.get(body.rating)
        if rating is None:
            raise ApiError(400, "rating: 'up' or 'down' (or 1 or -1)")
        charge_text(app_id, [body.comment, body.correction])
        # The same rating sent twice is one event: the id is derived from what it says.
        key = json.dumps([body.response_id, rating, body.comment, body.correction])
        event = Feedback(event_id=uuid.uuid5(FEEDBACK_NAMESPACE, key), response_id=body.response_id, app_id=app_id,
                         user_id=claims.user_id, rating=rating, comment=body.comment, correction=body.correction,
                         answered_at=datetime.fromtimestamp(claims.issued_at, timezone.utc))
        await log_event(feedback_topic, event)
        return {"id": str(event.event_id), "object": "feedback", "accepted": True}

    # Documents the route in /openapi.json; requests are answered by `_fast_feedback` below, which skips
    # Starlette's request objects and routing on the hottest route.
    @app.post("/v1/feedback", status_code=202, response_model=openapi.FeedbackAccepted, dependencies=keyed,
              responses=openapi.ERRORS, openapi_extra=openapi.json_body(FeedbackRequest))
    async def feedback(request: Request):
        return JSONResponse(await accept_feedback(request.headers.get("authorization", ""),
                                                  client_address(request.scope), await request.body()),
                            202)

    add_review_routes(app, review, cfg.admin_keys, secret, ApiError, throttle=throttle)
    document_limits(app, cfg)
    app.add_middleware(lambda inner: _host_check(_body_limit(_fast_feedback(inner, accept_feedback),
                                                             cfg.max_body_bytes), served_hosts(cfg)))
    return app
