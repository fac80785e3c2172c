"""Flywheel in front of a real vLLM (its CPU build, from `make vllm`) on the bundled SmolLM2-135M: the `Api` of
`flywheel up` with `serving.backend = "vllm"` starts and supervises the server, loads adapters as routing.json
changes, and passes the whole chat request through; apps use the official openai client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import httpx
import openai
import pytest

from abtest.routing import Routing
from infra import keys
from infra.api import Api
from infra.models import resolve_base_model
from ingest.contracts import BASE
from serving import ids
from serving.routing import publish
from tests.helpers.adapters import random_adapter
from tests.helpers.kafka import stored, topic_config

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
KEY = "flywheel-demo-key"  # the demo app's key (serving.api_keys' default)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}},
            "required": ["city"],
        },
    },
}


def peft_answer(base, folder, tokenizer, messages, n_tokens: int) -> str:
    """What peft answers greedily (the reference vLLM must match)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    if folder is not None:
        model = PeftModel.from_pretrained(model, folder).eval()
    ids_ = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids_, max_new_tokens=n_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids_["input_ids"].shape[1] :], skip_special_tokens=True)


ASK = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    from transformers import AutoTokenizer

    data = tmp_path_factory.mktemp("vllm") / "var"
    data.mkdir()
    settings = {"serving.backend": "vllm", "serving.port": 0, "serving.max_tokens": 64, "serving.vllm.port": 0}
    cfg, _ = topic_config(broker, data, **settings)
    base = resolve_base_model(cfg.base_model, data / "models")
    tokenizer = AutoTokenizer.from_pretrained(base)
    folders = {v: data / "adapters" / v for v in ("v0001", "v0002", "v0003")}
    probes = {v: random_adapter(base, f, seed, tokenizer) for seed, (v, f) in enumerate(folders.items())}
    answers = {v: peft_answer(base, folders.get(v), tokenizer, ASK, 12) for v in (BASE, "v0001", "v0002")}
    third = 1 / 3
    split = ((BASE, third), ("v0001", third), ("v0002", 1 - 2 * third))
    publish(data, Routing("exp-1", "salt", split, {v: str(folders[v]) for v in ("v0001", "v0002")}))
    failures: list[tuple[str, str]] = []
    api = Api(cfg, broker.bootstrap, on_adapter_failed=lambda v, why: failures.append((v, why)))
    try:
        yield {
            "api": api, "cfg": cfg, "data": data, "folders": folders, "probes": probes, "answers": answers,
            "failures": failures, "kafka": cfg.kafka, "broker": broker,
        }  # fmt: skip
    finally:
        api.close()


def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["api"].url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def user_on(stack, variant: str, start: int = 0) -> str:
    """A user id (as the app sends it) that the current split routes to `variant`."""
    key = keys.data_dir_key(stack["data"], "user-pseudonyms")
    routing = stack["api"].router.current
    for i in range(start, start + 10_000):
        if routing.assign(ids.pseudonym(key, "demo", f"user-{i}")) == variant:
            return f"user-{i}"
    raise AssertionError(f"no user on {variant}")


def served(stack) -> dict[str, str]:
    """The adapters vLLM holds (its /v1/models), name -> folder."""
    url = stack["api"].upstream.servers[0].url
    return {m["id"]: m["root"] for m in httpx.get(f"{url}/v1/models").json()["data"] if m.get("parent")}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_chats_reach_base_and_both_adapters_as_peft_answers(stack):
    c = client(stack)
    got = {}
    for variant in (BASE, "v0001", "v0002"):
        raw = c.chat.completions.with_raw_response.create(
            model="ignored", messages=ASK, max_tokens=12, temperature=0, user=user_on(stack, variant)
        )
        reply = raw.parse()
        assert raw.headers["x-flywheel-variant"] == variant == reply.model
        assert reply.id.startswith("chatcmpl-fw")
        got[variant] = (reply.id, reply.choices[0].message.content)
    assert {v: text for v, (_, text) in got.items()} == stack["answers"]
    assert len(set(stack["answers"].values())) == 3  # the adapters change the answer: each one served its own
    logged = stored(stack, {rid for rid, _ in got.values()}, kinds=("chat",))["chat"]
    assert {(e.response_id, e.variant, e.response) for e in logged} == {(rid, v, t) for v, (rid, t) in got.items()}


def test_openai_request_matrix(stack):
    c, user = client(stack), user_on(stack, BASE)  # random adapters make the tiny model ramble
    two = c.chat.completions.create(
        model="x", messages=ASK, max_tokens=8, n=2, logprobs=True, top_logprobs=2, seed=7, user=user
    )
    assert [ch.index for ch in two.choices] == [0, 1]
    assert all(len(ch.logprobs.content[0].top_logprobs) == 2 for ch in two.choices)
    again = c.chat.completions.create(model="x", messages=ASK, max_tokens=8, n=2, seed=7, user=user)
    assert [ch.message.content for ch in again.choices] == [ch.message.content for ch in two.choices]  # seed

    as_json = c.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "A JSON object with a name."}], max_tokens=32,
        response_format={"type": "json_object"}, temperature=0, user=user,
    )  # fmt: skip
    if as_json.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(as_json.choices[0].message.content), dict)
    else:  # cut at max_tokens: still the start of a JSON object
        assert as_json.choices[0].message.content.lstrip().startswith("{")
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}
    shaped = c.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=32, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}, user=user,
    )  # fmt: skip
    assert set(json.loads(shaped.choices[0].message.content)) == {"city"}

    called = c.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "What is the weather in Paris?"}], max_tokens=64,
        tools=[WEATHER], tool_choice="required", temperature=0, user=user,
    )  # fmt: skip
    assert called.choices[0].message.tool_calls, called
    call = called.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and called.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments)["city"] in {"Paris", "London"}  # an object, in the tool's schema
    follow_up = c.chat.completions.create(
        model="x", max_tokens=8, user=user, tools=[WEATHER],
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
        ],
    )  # fmt: skip
    assert follow_up.choices[0].message.content is not None

    stream = c.chat.completions.create(
        model="x", messages=ASK, max_tokens=6, n=2, stream=True, stream_options={"include_usage": True}, user=user
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert {ch.choices[0].index for ch in chunks if ch.choices and ch.choices[0].finish_reason} == {0, 1}

    hi = [{"type": "text", "text": "Hi"}]
    parts = c.chat.completions.create(
        model="x", max_completion_tokens=5, temperature=0, user=user,
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": hi}],
    )  # fmt: skip
    plain = c.chat.completions.create(
        model="x", max_tokens=5, temperature=0, user=user,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    )  # fmt: skip
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.completion_tokens <= 5
    stopped = c.chat.completions.create(
        model="x", messages=ASK, max_tokens=32, temperature=0, stop=["."], frequency_penalty=0.5,
        presence_penalty=0.5, user=user,
    )  # fmt: skip
    assert "." not in stopped.choices[0].message.content

    # Feedback on a second choice and on a tool-call answer; both chats are logged with what they said.
    for response_id, choice in ((two.id, 1), (called.id, 0)):
        r = httpx.post(
            stack["api"].url + "/v1/feedback", headers={"Authorization": f"Bearer {KEY}"},
            json={"response_id": response_id, "choice": choice, "rating": "up"},
        )  # fmt: skip
        assert r.status_code == 202, r.text
    logged = stored(stack, {ids.choice_id(two.id, 1), called.id}, kinds=("chat", "feedback"))
    by_id = {e.response_id: e for e in logged["chat"]}
    assert by_id[ids.choice_id(two.id, 1)].response == two.choices[1].message.content
    assert json.loads(by_id[called.id].response)["tool_calls"][0]["name"] == "get_weather"
    assert {e.response_id for e in logged["feedback"]} == {ids.choice_id(two.id, 1), called.id}


def test_unauthenticated_bad_body_gets_401(stack):
    r = httpx.post(stack["api"].url + "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 401


def traffic(stack, stop: threading.Event, results: list, start: int):
    """Users chatting without pause until `stop`: each answer's (status, variant)."""
    c = client(stack)
    i = start
    while not stop.is_set():
        try:
            raw = c.chat.completions.with_raw_response.create(model="x", messages=ASK, max_tokens=4, user=f"u{i}")
            results.append((raw.http_response.status_code, raw.headers["x-flywheel-variant"]))
        except openai.APIStatusError as e:
            results.append((e.status_code, None))
        i += 1


def test_adapter_hot_loaded_and_retired_during_traffic(stack):
    folders, stop, results = stack["folders"], threading.Event(), []
    threads = [threading.Thread(target=traffic, args=(stack, stop, results, 1000 * k)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) >= 8, 120, "traffic")
        split = ((BASE, 0.2), ("v0003", 0.4), ("v0002", 0.4))  # v0003 arrives, v0001 retires
        publish(stack["data"], Routing("exp-2", "salt", split, {v: str(folders[v]) for v in ("v0002", "v0003")}))
        wait_for(lambda: set(served(stack)) == {"v0002", "v0003"}, 60, "v0003 loaded and v0001 unloaded")
        seen = len(results)
        wait_for(lambda: len(results) >= seen + 12, 120, "traffic after the switch")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200]
    assert "v0003" in {v for _, v in results[seen:]}
    assert "v0001" not in {v for _, v in results[seen:]}


def test_a_wrong_probe_keeps_the_split_and_reports_the_candidate(stack):
    folders, data = stack["folders"], stack["data"]
    bad = data / "adapters" / "v0004"
    shutil.copytree(folders["v0002"], bad)
    wrong = stack["probes"]["v0001"]  # another adapter's tokens: vLLM's answer cannot match
    (bad / "probe.json").write_text(json.dumps(wrong))
    before = stack["api"].router.current
    split = ((BASE, 0.5), ("v0004", 0.5))
    publish(data, Routing("exp-3", "salt", split, {"v0004": str(bad)}))
    failure = wait_for(lambda: stack["failures"], 60, "the failure report")
    assert failure[0][0] == "v0004" and "probe" in failure[0][1]
    assert stack["api"].router.current == before
    assert "v0004" not in served(stack)


def test_vllm_killed_answers_503_then_recovers(stack):
    api, c = stack["api"], client(stack)
    restored = api.router.current
    user = user_on(stack, "v0002")
    os.killpg(api.vllm.proc.pid, signal.SIGKILL)
    with pytest.raises(openai.APIStatusError) as refused:
        wait_for(lambda: not api.upstream.servers[0].healthy, 30, "the gateway to notice")
        c.chat.completions.create(model="x", messages=ASK, max_tokens=4, user=user)
    assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"]
    assert "x-flywheel-response-id" not in refused.value.response.headers  # nothing was answered, nothing logged

    def answers():
        try:
            return c.chat.completions.with_raw_response.create(model="x", messages=ASK, max_tokens=4, user=user)
        except openai.APIStatusError as e:
            assert e.status_code == 503
            return None

    raw = wait_for(answers, 300, "vLLM to come back")
    assert raw.headers["x-flywheel-variant"] == "v0002"  # its adapter was loaded again before it served
    assert api.vllm.restarts == 1 and api.router.current == restored
