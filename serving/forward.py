"""A chat request answered by vLLM (`serving.backend = "vllm"`): the checked request goes to the user's server
under the variant's adapter name, and the answer comes back under Flywheel's response id and variant name,
streamed or whole. Every choice is logged through the outbox before the client sees the answer's end, as with
the built-in generator; an answer that vLLM did not finish (it died, the client left) is not logged.

vLLM honours the whole request (`n`, `logprobs`, `response_format`, `tools`, penalties, `seed`, `stop`), so
nothing is refused here beyond Flywheel's own limits; vLLM's own refusals pass through with their status. A
tool-call answer is logged as its text followed by the calls as JSON (`{"tool_calls": [{name, arguments}]}`),
so a rating on it has something to train on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
from fastapi.responses import JSONResponse, StreamingResponse

from ingest.contracts import BASE, MAX_FIELD_CHARS
from serving.errors import ApiError
from serving.generator import GenResult
from serving.schemas import ChatRequest
from serving.upstream import BASE_NAME, Server, VllmBackend, error_message, unavailable

# Set by Flywheel, not forwarded as the client sent them: the adapter, the answer's length, the stream's
# usage (always asked for, for the metrics; passed on only when the client asked), the raw user id (never sent).
OWN = {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "user"}
MESSAGE_KEYS = ("tool_calls", "tool_call_id", "name")
DELTA_KEYS = ("role", "content", "tool_calls", "refusal")


def payload(body: ChatRequest, texts: list[str], variant: str, max_tokens: int) -> dict:
    """The body vLLM gets: the client's parameters, the messages as checked (developer as system, text parts
    joined), the variant's served name and Flywheel's cap on the answer's length."""
    sent = {k: v for k, v in body.model_dump(exclude_unset=True).items() if k not in OWN and v is not None}
    messages = []
    for m, text in zip(body.messages, texts):
        message = {"role": "system" if m.role == "developer" else m.role, "content": text}
        message.update({k: getattr(m, k) for k in MESSAGE_KEYS if getattr(m, k) is not None})
        messages.append(message)
    sent.update(messages=messages, model=BASE_NAME if variant == BASE else variant, max_tokens=max_tokens)
    if body.stream:
        sent.update(stream=True, stream_options={"include_usage": True})
    return sent


def logged_text(content: str | None, calls: list[dict] | None) -> str:
    """What the chat log stores as the answer: its text, then its tool calls as JSON."""
    text = content or ""
    if calls:
        named = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]
        text = (text + "\n" if text else "") + json.dumps({"tool_calls": named})
    return text[:MAX_FIELD_CHARS]


def results(texts: list[str], reasons: list[str], usage: dict) -> list[GenResult]:
    """Per choice; vLLM counts the answer's tokens over all choices: choice 0 carries them."""
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return [GenResult(t, r, prompt, completion if i == 0 else 0) for i, (t, r) in enumerate(zip(texts, reasons))]


async def answer(backend: VllmBackend, answer, sent: dict, user_id: str, include_usage: bool, headers: dict):
    """The whole answer (JSONResponse) or its stream (StreamingResponse), from the user's server; a server
    that cannot be reached is marked down and the next one tried, before anything was generated."""
    tried: set[str] = set()
    while True:
        server = backend.server_for(user_id, avoid=tried)
        try:
            with backend.using(answer.variant):
                if sent.get("stream"):
                    response = await open_stream(backend, server, sent)
                    return StreamingResponse(
                        relay(backend, response, answer, include_usage), media_type="text/event-stream", headers=headers
                    )
                r = await backend.client.post(f"{server.url}/v1/chat/completions", json=sent)
                check(r, answer.variant)
                return JSONResponse(await whole(answer, r.json()), headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            backend.down(server, e)
            tried.add(server.url)
        except httpx.HTTPError as e:  # it went away while answering: nothing was logged
            backend.down(server, e)
            raise unavailable("the model server failed while answering: try again") from None


def check(r: httpx.Response, variant: str) -> None:
    """vLLM's refusal as Flywheel's: its 4xx with its message; an adapter it does not know (it restarted and
    has not reloaded yet, or the split just changed) as 503 so the client's retry is routed anew."""
    if r.status_code == 200:
        return
    message = error_message(r)
    if r.status_code == 404 and variant in message:
        raise ApiError(503, "the model version changed: try again", headers={"Retry-After": "1"})
    if r.status_code < 500:
        raise ApiError(r.status_code, message)
    raise ApiError(502, f"the model server failed: {message}")


async def whole(answer, data: dict) -> dict:
    choices = data["choices"]
    texts = [logged_text(c["message"].get("content"), c["message"].get("tool_calls")) for c in choices]
    await answer.finish(results(texts, [c["finish_reason"] for c in choices], data.get("usage") or {}))
    out = {
        "id": answer.response_id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.variant,
        "choices": [
            {
                "index": c["index"],
                "message": {k: v for k, v in c["message"].items() if k in DELTA_KEYS and v is not None},
                "logprobs": c.get("logprobs"),
                "finish_reason": c["finish_reason"],
            }
            for c in choices
        ],
        "usage": usage_of(data.get("usage") or {}),
    }
    for c in out["choices"]:
        c["message"].setdefault("content", None)
    return out


def usage_of(usage: dict) -> dict:
    return {k: usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


async def open_stream(backend: VllmBackend, server: Server, sent: dict) -> httpx.Response:
    """The upstream stream, opened before Flywheel answers 200: a refusal is still an error status."""
    request = backend.client.build_request("POST", f"{server.url}/v1/chat/completions", json=sent)
    response = await backend.client.send(request, stream=True)
    if response.status_code != 200:
        await response.aread()
        await response.aclose()
        check(response, sent["model"])
    return response


class Choices:
    """The text and tool calls of each choice, gathered from the deltas."""

    def __init__(self) -> None:
        self.text: dict[int, list[str]] = {}
        self.calls: dict[int, dict[int, dict]] = {}
        self.reason: dict[int, str] = {}

    def add(self, choice: dict) -> None:
        i, delta = choice["index"], choice.get("delta") or {}
        self.text.setdefault(i, []).append(delta.get("content") or "")
        for call in delta.get("tool_calls") or []:
            mine = self.calls.setdefault(i, {}).setdefault(
                call.get("index", 0), {"function": {"name": "", "arguments": ""}}
            )
            function = call.get("function") or {}
            mine["function"]["name"] += function.get("name") or ""
            mine["function"]["arguments"] += function.get("arguments") or ""
        if choice.get("finish_reason"):
            self.reason[i] = choice["finish_reason"]

    def texts(self) -> list[str]:
        return [
            logged_text("".join(self.text.get(i, [])), [c for _, c in sorted(self.calls.get(i, {}).items())])
            for i in sorted(self.text)
        ]


def cleaned(choice: dict) -> dict:
    delta = {k: v for k, v in (choice.get("delta") or {}).items() if k in DELTA_KEYS and v is not None}
    return {
        "index": choice["index"],
        "delta": delta,
        "logprobs": choice.get("logprobs"),
        "finish_reason": choice.get("finish_reason"),
    }


def failed(message: str) -> str:
    return "data: " + json.dumps({"error": {"message": message, "type": "server_error", "code": 503}}) + "\n\n"


async def relay(backend: VllmBackend, response: httpx.Response, answer, include_usage: bool) -> AsyncIterator[str]:
    """vLLM's chunks under Flywheel's id and variant; the chunks that end a choice wait until every choice is
    logged. A stream vLLM breaks off ends with an error event and no [DONE], and nothing is logged."""
    got, held, usage, done = Choices(), [], None, False
    with backend.using(answer.variant):
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    yield failed(str(chunk["error"].get("message", "the model server failed")))
                    return
                usage = chunk.get("usage") or usage
                choices = [cleaned(c) for c in chunk.get("choices") or []]
                for c in chunk.get("choices") or []:
                    got.add(c)
                if not choices:
                    continue
                text = answer.chunk(choices)
                if any(c["finish_reason"] for c in choices):
                    held.append(text)
                else:
                    yield text
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
    if not done:
        yield failed("the model server failed while answering: try again")
        return
    texts = got.texts()
    await answer.finish(results(texts, [got.reason.get(i, "stop") for i in sorted(got.text)], usage or {}))
    for text in held:
        yield text
    if include_usage:
        yield answer.chunk([], usage_of(usage or {}))
    yield "data: [DONE]\n\n"
