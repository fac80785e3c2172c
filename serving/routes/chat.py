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
from serving import forward, ids, openapi
from serving.deps import App, Context, Ctx
from serving.errors import ApiError, busy, parse_body
from serving.forward import logged_text
from serving.generator import AdapterGone, GenRequest, GenResult, QueueFull
from serving.limits import MAX_CHAT_BYTES
from serving.schemas import ROLES, ChatMessage, ChatRequest

router = APIRouter(prefix="/v1")


@router.get("/models", response_model=openapi.ModelList, responses=openapi.ERRORS)
async def models(ctx: Ctx, _app: App):
    return {
        "object": "list",
        "data": [{"id": v, "object": "model", "created": 0, "owned_by": "flywheel"} for v in ctx.variants()],
    }


# What this server's generator (serving.generator.BatchGenerator) cannot honour: a request that sets one gets
# 400 naming it, never an answer that quietly ignored it.
UNSUPPORTED = (
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
)
# The values of UNSUPPORTED that ask for nothing (what clients send by default): accepted, and /openapi.json
# lists them, so that the schema and this check agree (Schemathesis found `tools: []` accepted, documented null).
NEUTRAL: dict[str, list] = {
    "logprobs": [False],
    "frequency_penalty": [0.0],
    "presence_penalty": [0.0],
    "response_format": [{"type": "text"}],
    "tools": [[]],
    "tool_choice": ["none"],
    "logit_bias": [{}],
}


def document_unsupported(models: dict) -> None:
    """/openapi.json states what this server takes: the parameters of UNSUPPORTED only unset (or neutral), no
    tool turns among the messages."""
    request = models["ChatRequest"]["properties"]
    for name in UNSUPPORTED:
        request[name] = {"enum": [None, *NEUTRAL[name]]} if name in NEUTRAL else {"type": "null"}
    message = models["ChatMessage"]["properties"]
    message["role"]["enum"] = [r for r in message["role"]["enum"] if r != "tool"]
    message["tool_calls"] = {"type": "null"}
    part = models["ContentPart"]
    part["properties"]["text"], part["required"] = {"type": "string"}, ["type", "text"]


def unsupported(body: ChatRequest) -> list[str]:
    """The parameters `body` sets that the generator cannot honour (their neutral values are fine)."""
    return [
        name
        for name in UNSUPPORTED
        if (value := getattr(body, name)) is not None and value not in NEUTRAL.get(name, [])
    ]


def text_of(m: ChatMessage, i: int) -> str:
    """A message's text: its string, or its `text` parts joined by newlines (other part types: 400)."""
    if not isinstance(m.content, list):
        return m.content or ""
    for part in m.content:
        if part.type != "text":
            raise ApiError(400, f"messages.{i}.content: a {part.type!r} part; this server reads text parts only")
        if part.text is None:
            raise ApiError(400, f"messages.{i}.content: a text part without its text")
    return "\n".join(part.text or "" for part in m.content)


def tool_calls_of(m: ChatMessage, i: int) -> list[dict]:
    """An assistant message's tool calls, each with its function's name and arguments (as OpenAI sends them)."""
    for j, call in enumerate(m.tool_calls or []):
        function = call.get("function")
        if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
            raise ApiError(400, f"messages.{i}.tool_calls.{j}.function: a name and arguments are required")
        if not isinstance(function.get("arguments", ""), str):
            raise ApiError(400, f"messages.{i}.tool_calls.{j}.function.arguments: a JSON string")
    return m.tool_calls or []


def checked_messages(ctx: Context, body: ChatRequest, app_id: str, tools: bool = False) -> list[dict]:
    """The request's messages as plain dicts (as the chat log stores them), within serving's limits and the
    event contract's. `developer` (the newer SDKs' name for the system prompt) is stored and templated as
    `system`. Tool turns only where the backend takes tools (vLLM); an assistant's calls are logged as JSON."""
    cfg = ctx.cfg
    if len(body.messages) > cfg.max_messages:
        raise ApiError(400, f"{len(body.messages)} messages: at most {cfg.max_messages} (serving.max_messages)")
    messages = []
    for i, m in enumerate(body.messages):
        role = "system" if m.role == "developer" else m.role
        if role not in ROLES:
            raise ApiError(400, f"messages.{i}.role: unknown role {m.role!r}")
        if not tools and (m.tool_calls or role == "tool"):
            raise ApiError(400, f"messages.{i}: tool calls and tool results need tools, which this server lacks")
        text = logged_text(text_of(m, i), tool_calls_of(m, i))
        if len(text) > cfg.max_message_chars:
            raise ApiError(
                400, f"a message of {len(text)} characters: at most {cfg.max_message_chars} (serving.max_message_chars)"
            )
        messages.append({"role": role, "content": text})
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
    """One request being answered (its `n` choices): what its log events and its chunks need."""

    ctx: Context
    response_id: str
    app_id: str
    user_id: str
    variant: str
    experiment: str | None
    messages: list[dict]
    started: float
    created: int

    async def finish(self, results: list[GenResult]) -> None:
        """Log each choice as its own chat (stored under `ids.choice_id`, which its feedback names too)."""
        latency = (time.perf_counter() - self.started) * 1000
        for i, result in enumerate(results):
            await self.ctx.log(
                ChatLog(
                    response_id=ids.choice_id(self.response_id, i),
                    app_id=self.app_id,
                    user_id=self.user_id,
                    variant=self.variant,
                    experiment_id=self.experiment,
                    messages=[Message(**m) for m in self.messages],
                    response=result.text,
                    latency_ms=round(latency, 2),
                    completion_tokens=result.completion_tokens,
                )
            )
            self.ctx.metrics.tokens.labels(self.variant).inc(result.completion_tokens)
        self.ctx.metrics.latency.labels("chat", self.variant).observe(latency / 1000)

    @staticmethod
    def usage(results: list[GenResult]) -> dict:
        prompt, completion = results[0].prompt_tokens, sum(r.completion_tokens for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion(self, results: list[GenResult]) -> dict:
        return {
            "id": self.response_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.variant,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
                for i, result in enumerate(results)
            ],
            "usage": self.usage(results),
        }

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        body: dict = {
            "id": self.response_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.variant,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return "data: " + json.dumps(body) + "\n\n"


def delta(index: int, content: dict, reason: str | None = None) -> dict:
    return {"index": index, "delta": content, "finish_reason": reason}


async def chunks(answer: Answer, reqs: list[GenRequest], futures: list, pieces: asyncio.Queue, include_usage: bool):
    """Server-sent chunks as the text of each choice comes; the last ones are sent after the chats are logged."""
    try:
        for i in range(len(reqs)):
            yield answer.chunk([delta(i, {"role": "assistant", "content": ""})])
        waiter = asyncio.ensure_future(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        while True:
            getter = asyncio.ensure_future(pieces.get())
            done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                index, text = getter.result()
                yield answer.chunk([delta(index, {"content": text})])
                continue
            getter.cancel()
            while not pieces.empty():
                index, text = pieces.get_nowait()
                yield answer.chunk([delta(index, {"content": text})])
            results = waiter.result()
            await answer.finish(results)
            for i, result in enumerate(results):
                yield answer.chunk([delta(i, {}, result.finish_reason)])
            if include_usage:  # OpenAI's last chunk: no choices, the usage of the whole answer
                yield answer.chunk([], Answer.usage(results))
            yield "data: [DONE]\n\n"
            return
    finally:  # the client left (or the answer is done): rows still decoding stop at their next token
        for req in reqs:
            req.cancel.set()


def submit_all(ctx: Context, reqs: list[GenRequest]) -> list:
    """All n rows or none: when the queue takes only some, those are cancelled and the client gets 503."""
    futures = []
    try:
        for req in reqs:
            futures.append(ctx.model().submit(req))
    except QueueFull:
        for req in reqs:
            req.cancel.set()
        raise busy() from None
    return futures


def new_answer(ctx: Context, body: ChatRequest, app_id, user_id, variant, experiment, messages, started):
    """The answer's signed response id (it carries n, for feedback on each choice) and its headers."""
    claims = ids.ResponseClaims(app_id, user_id, variant, experiment, time.time(), body.n)
    response_id = ids.issue(ctx.secret, claims)
    headers = {"X-Flywheel-Variant": variant, "X-Flywheel-Response-Id": response_id}
    answer = Answer(ctx, response_id, app_id, user_id, variant, experiment, messages, started, int(time.time()))
    return answer, headers


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
    openapi_extra=openapi.json_body_ref("ChatRequest"),
)
async def chat_completions(request: Request, ctx: Ctx, app_id: App):
    # The key is checked (the App dependency) before the body is read: a stranger learns nothing of the schema.
    started = time.perf_counter()
    body = parse_body(ChatRequest, await request.body())
    upstream = ctx.upstream
    if upstream is None and (names := unsupported(body)):
        raise ApiError(400, f"{', '.join(names)}: not supported by this server's built-in generator")
    messages = checked_messages(ctx, body, app_id, tools=upstream is not None)
    user_id = ids.pseudonym(ctx.user_key, app_id, body.user or request.headers.get("x-flywheel-user") or "anonymous")
    variant, experiment = ctx.route(user_id)
    max_tokens = min(body.max_completion_tokens or body.max_tokens or ctx.cfg.max_tokens, ctx.cfg.max_tokens)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    if upstream is not None:  # vLLM generates: the request goes through as it came, checked
        answer, headers = new_answer(ctx, body, app_id, user_id, variant, experiment, messages, started)
        sent = forward.payload(body, [text_of(m, i) for i, m in enumerate(body.messages)], variant, max_tokens)
        return await forward.answer(upstream, answer, sent, user_id, include_usage, headers)
    prompt = await prompt_ids(ctx, messages)
    answer, headers = new_answer(ctx, body, app_id, user_id, variant, experiment, messages, started)
    loop, pieces = asyncio.get_running_loop(), asyncio.Queue[tuple[int, str]]()

    def on_text(index: int):
        def put(text: str) -> None:  # from the model thread
            loop.call_soon_threadsafe(pieces.put_nowait, (index, text))

        return put

    reqs = [
        GenRequest(
            prompt,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            seed=None if body.seed is None else body.seed + i,  # n samples, not n copies of one
            adapter=variant,
            on_text=on_text(i) if body.stream else None,
        )
        for i in range(body.n)
    ]
    futures = submit_all(ctx, reqs)
    if body.stream:
        return StreamingResponse(
            chunks(answer, reqs, futures, pieces, include_usage), media_type="text/event-stream", headers=headers
        )
    try:
        results = list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
    except AdapterGone:
        raise busy("the model version changed: try again") from None
    finally:
        for req in reqs:
            req.cancel.set()  # the client left, or a sibling failed: free the rows
    await answer.finish(results)
    return JSONResponse(answer.completion(results), headers=headers)
