"""A chat through vLLM, the parts that need no server: what Flywheel sends on and what it logs. The real
server is in tests/serving/test_vllm.py."""

import json

from serving import forward
from serving.schemas import ChatRequest
from serving.upstream import BASE_NAME


def request(**fields) -> ChatRequest:
    return ChatRequest.model_validate({"model": "app-model", **fields})


def test_payload_forwards_the_request_as_checked_and_keeps_what_is_flywheels():
    body = request(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]},
        ],
        user="maria@example.com", n=2, logprobs=True, top_logprobs=2, seed=7, max_completion_tokens=500,
        response_format={"type": "json_object"}, stream=True, stream_options={"include_usage": False},
    )  # fmt: skip
    sent = forward.payload(body, ["Be brief.", "Hi there"], "v0003", 64)
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert sent["model"] == "v0003" and sent["max_tokens"] == 64 and "max_completion_tokens" not in sent
    assert "user" not in sent  # the raw id stays at the gateway
    assert (sent["n"], sent["logprobs"], sent["top_logprobs"], sent["seed"]) == (2, True, 2, 7)
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["stream_options"] == {"include_usage": True}  # always: the usage is counted even if not shown
    assert forward.payload(request(messages=[{"role": "user", "content": "x"}]), ["x"], "base", 8)["model"] == BASE_NAME


def test_tool_turns_go_through_and_tool_call_answers_are_logged_with_their_calls():
    call = {"id": "call-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    body = request(
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call-1", "content": "Sunny"},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    sent = forward.payload(body, ["Weather in Paris?", "", "Sunny"], "base", 8)
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][2]["tool_call_id"] == "call-1" and sent["tools"][0]["function"]["name"] == "get_weather"
    logged = forward.logged_text("Let me look.", [call])
    text, calls = logged.split("\n", 1)
    assert text == "Let me look."
    assert json.loads(calls) == {"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]}
    assert forward.logged_text(None, None) == ""


def test_streamed_choices_are_gathered_per_index_with_their_tool_call_pieces():
    got = forward.Choices()
    pieces = [
        {"index": 0, "delta": {"role": "assistant", "content": "Hel"}},
        {"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": "{"}}]}},
        {"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"},
        {"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}},
        {"index": 1, "delta": {}, "finish_reason": "tool_calls"},
    ]
    for piece in pieces:
        got.add(piece)
    assert got.texts() == ["Hello", json.dumps({"tool_calls": [{"name": "get_weather", "arguments": "{}"}]})]
    assert got.reason == {0: "stop", 1: "tool_calls"}
