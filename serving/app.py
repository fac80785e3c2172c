"""The HTTP API: OpenAI-compatible chat completions, feedback, models, health, metrics, the review pages and
the admin API.

`create_app` receives everything it uses (config section, generator, tokenizer, outbox, router, secrets) and
keeps it in one `serving.deps.Context`; there is no module-level app. The routes are in `serving/routes/`,
one router per concern; the ASGI layers that answer before them in `serving/middleware.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry

from serving.config import ServingConfig
from serving.deps import Context, ReviewBackend
from serving.errors import install_error_handlers
from serving.generator import Generator
from serving.limits import prompt_tokens_limit
from serving.metrics import Metrics
from serving.middleware import body_limit, fast_feedback, host_check, served_hosts
from serving.outbox import Outbox
from serving.routes import admin, chat, feedback, health, pages
from serving.routes.chat import document_unsupported
from serving.schemas import ChatRequest
from serving.upstream import VllmBackend

__all__ = ["create_app", "prompt_tokens_limit"]


def document_limits(app: FastAPI, cfg: ServingConfig) -> None:
    """/openapi.json states this server's limits (serving.max_messages, max_message_chars) and apps, which the
    handlers enforce with messages that name the setting."""

    def schema() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            models = doc["components"]["schemas"]
            chat = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            models.update(chat.pop("$defs", {}), ChatRequest=chat)  # the chat route reads its own body
            document_unsupported(models)
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

    app.openapi = schema  # type: ignore[method-assign]  # FastAPI documents this way


def create_app(
    cfg: ServingConfig,
    *,
    generator: Generator | None,
    tokenizer,
    outbox: Outbox | None,
    chats_topic: str,
    feedback_topic: str,
    secret: bytes,
    user_key: bytes,
    route: Callable[[str], tuple[str, str | None]],
    variants: Callable[[], list[str]],
    ready: Callable[[], bool] = lambda: True,
    registry: CollectorRegistry | None = None,
    review: ReviewBackend | None = None,
    forgotten: Callable[[str, float], bool] | None = None,
    upstream: VllmBackend | None = None,
) -> FastAPI:
    """`forgotten(user, answered_at)`: whether that user was erased after that answer (then its rating is
    refused); None where the API has no database (`flywheel serve`: ingest drops such ratings instead).
    `upstream`: the vLLM servers that answer chats instead of `generator` (serving.backend = vllm)."""
    for name, key in (("secret", secret), ("user_key", user_key)):
        if len(key) < 32:  # guessable: forged response ids, reviewer cookies, reversible pseudonyms
            raise ValueError(f"create_app: {name} is {len(key)} bytes, at least 32 are needed")
    ctx = Context(
        cfg,
        generator,
        tokenizer,
        outbox,
        {"chat": chats_topic, "feedback": feedback_topic},
        secret,
        user_key,
        route,
        variants,
        ready,
        review,
        forgotten,
        Metrics(registry or CollectorRegistry()),
        prompt_tokens_limit(cfg, getattr(generator, "context_tokens", None)),
        upstream,
    )
    app = FastAPI(title="Flywheel", version="0.1.0")
    app.state.flywheel = ctx
    install_error_handlers(app)
    for module in (health, chat, feedback, pages, admin):
        app.include_router(module.router)
    document_limits(app, cfg)

    async def accept_feedback(authorization: str, address: str, raw: bytes) -> dict:
        return await feedback.accept(ctx, authorization, address, raw)

    app.add_middleware(
        lambda inner: host_check(
            body_limit(fast_feedback(inner, accept_feedback), cfg.max_body_bytes), served_hosts(cfg)
        )
    )
    return app
