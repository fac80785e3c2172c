"""`/v1/models` and `/v1/chat/completions` (OpenAI-compatible, streamed or not). Every answer is logged as
a ChatLog event through the outbox, with the variant that produced it, before the client sees its end;
past the key check the user is a pseudonym of (app, user): the raw id is never stored, sent or logged."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ingest import contracts
from ingest.contracts import ChatLog, Message
from serving import ids, openapi
from serving.deps import App, Context, Ctx
from serving.errors import ApiError, busy
from serving.generator import AdapterGone, GenRequest, GenResult, QueueFull
from serving.limits import MAX_CHAT_BYTES
from serving.schemas import ROLES, ChatRequest

router = APIRouter(prefix="/v1")


@router.get("/models", response_model=openapi.ModelList, responses=openapi.ERRORS)
async def models(ctx: Ctx, _app: App):
    return {
        "object": "list",
        "data": [{"id": v, "object": "model", "created": 0, "owned_by": "flywheel"} for v in ctx.variants()],
    }


def checked_messages(ctx: Context, body: ChatRequest, app_id: str) -> list[dict]:
    """The request's messages as plain dicts, within serving's limits and the event contract's."""
    cfg = ctx.cfg
    if len(body.messages) > cfg.max_messages:
        raise ApiError(400, f"{len(body.messages)} messages: at most {cfg.max_messages} (serving.max_messages)")
    for m in body.messages:
        if len(m.content or "") > cfg.max_message_chars:
            raise ApiError(
                400,
                f"a message of {len(m.content or '')} characters: at most {cfg.max_message_chars} "
                "(serving.max_message_chars)",
            )
        if m.role not in ROLES:
            raise ApiError(400, f"unknown role {m.role!r}")
    messages = [{"role": m.role, "content": m.content or ""} for m in body.messages]
    size = sum(len(m["content"].encode()) + 32 for m in messages)
    if size > MAX_CHAT_BYTES:
        raise ApiError(
            413,
            f"the messages are {size} bytes: at most {MAX_CHAT_BYTES} (a chat log event holds "
            f"{contracts.MAX_EVENT_BYTES} bytes with its answer)",
        )
    ctx.scrub.charge(app_id, [m["content"] for m in messages])
    return messages


async def prompt_ids(ctx: Context, messages: list[dict]) -> list[int]:
    """The chat template's tokens, in a worker thread (up to a second for the largest bodies), only once the
    queue has room."""
    if ctx.model().full:
        raise busy()
    prompt = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: ctx.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"],
    )
    if len(prompt) > ctx.prompt_limit:
        raise ApiError(
            400, f"the prompt is {len(prompt)} tokens: at most {ctx.prompt_limit} (serving.max_prompt_tokens)"
        )
    return prompt


@dataclass
class Answer:
    """One request being answered: what its log event and its chunks need."""

    ctx: Context
    response_id: str
    app_id: str
    user_id: str
    variant: str
    experiment: str | None
    messages: list[dict]
    started: float
    created: int

    async def finish(self, result: GenResult) -> None:
        latency = (time.perf_counter() - self.started) * 1000
        await self.ctx.log(
            ChatLog(
                response_id=self.response_id,
                app_id=self.app_id,
                user_id=self.user_id,
                variant=self.variant,
                experiment_id=self.experiment,
                messages=[Message(**m) for m in self.messages],
                response=result.text,
                latency_ms=round(latency, 2),
            )
        )
        self.ctx.metrics.tokens.labels(self.variant).inc(result.completion_tokens)
        self.ctx.metrics.latency.labels("chat", self.variant).observe(latency / 1000)

    def completion(self, result: GenResult) -> dict:
        return {
            "id": self.response_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.variant,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            },
        }

    def chunk(self, delta: dict, reason: str | None = None) -> str:
        return (
            "data: "
            + json.dumps(
                {
                    "id": self.response_id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.variant,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                }
            )
            + "\n\n"
        )


async def chunks(answer: Answer, req: GenRequest, future, pieces: asyncio.Queue):
    """Server-sent chunks as the text comes; the last one is sent after the chat is logged."""
    try:
        yield answer.chunk({"role": "assistant", "content": ""})
        waiter = asyncio.wrap_future(future)
        while True:
            getter = asyncio.ensure_future(pieces.get())
            done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield answer.chunk({"content": getter.result()})
                continue
            getter.cancel()
            while not pieces.empty():
                yield answer.chunk({"content": pieces.get_nowait()})
            result = waiter.result()
            await answer.finish(result)
            yield answer.chunk({}, result.finish_reason)
            yield "data: [DONE]\n\n"
            return
    finally:  # the client left (or the answer is done): a row still decoding stops at its next token
        req.cancel.set()


@router.post(
    "/chat/completions",
    response_model=openapi.ChatCompletion,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": openapi.SSE_EVENT}},
            "description": "The answer; with `stream: true`, server-sent chunks ending in [DONE].",
        },
        **openapi.ERRORS_OR_BUSY,
    },
)
async def chat_completions(body: ChatRequest, request: Request, ctx: Ctx, app_id: App):
    started = time.perf_counter()
    messages = checked_messages(ctx, body, app_id)
    user_id = ids.pseudonym(ctx.user_key, app_id, body.user or request.headers.get("x-flywheel-user") or "anonymous")
    variant, experiment = ctx.route(user_id)
    prompt = await prompt_ids(ctx, messages)
    response_id = ids.issue(ctx.secret, ids.ResponseClaims(app_id, user_id, variant, experiment, time.time()))
    headers = {"X-Flywheel-Variant": variant, "X-Flywheel-Response-Id": response_id}
    loop, pieces = asyncio.get_running_loop(), asyncio.Queue[str]()

    def on_text(text: str) -> None:  # from the model thread
        loop.call_soon_threadsafe(pieces.put_nowait, text)

    req = GenRequest(
        prompt,
        max_tokens=min(body.max_completion_tokens or body.max_tokens or ctx.cfg.max_tokens, ctx.cfg.max_tokens),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
        seed=body.seed,
        adapter=variant,
        on_text=on_text if body.stream else None,
    )
    try:
        future = ctx.model().submit(req)
    except QueueFull:
        raise busy() from None
    answer = Answer(ctx, response_id, app_id, user_id, variant, experiment, messages, started, int(time.time()))
    if body.stream:
        return StreamingResponse(chunks(answer, req, future, pieces), media_type="text/event-stream", headers=headers)
    try:
        result = await asyncio.wrap_future(future)
    except AdapterGone:
        raise busy("the model version changed: try again") from None
    await answer.finish(result)
    return JSONResponse(answer.completion(result), headers=headers)
