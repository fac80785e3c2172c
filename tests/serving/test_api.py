"""The API as apps use it: the official openai client against a running server (tiny model)."""

import base64
import uuid

import httpx
import openai
import pytest

from infra.config import KafkaConfig
from infra.kafka import client_settings, ensure_topics
from serving import ids
from serving.config import ServingConfig
from serving.outbox import Outbox, OutboxSender
from tests.conftest import serve_in_thread, tiny_generator
from tests.helpers.api import make_app
from tests.helpers.kafka import stored

KEY_A, KEY_B = "key-of-app-a", "key-of-app-b"


@pytest.fixture(scope="module")
def server(tiny_lm, broker, tmp_path_factory):
    tokenizer, generator = tiny_generator(tiny_lm, queue_depth=8)
    kafka = KafkaConfig(chats_topic=f"chats-{uuid.uuid4().hex[:6]}", feedback_topic=f"fb-{uuid.uuid4().hex[:6]}")
    ensure_topics(kafka, broker.bootstrap)
    outbox = Outbox(tmp_path_factory.mktemp("outbox") / "outbox.sqlite")
    sender = OutboxSender.to_kafka(outbox, client_settings(kafka, broker.bootstrap), "no-ingest-here").start()
    cfg = ServingConfig(
        api_keys={"app-a": ids.hash_key(KEY_A), "app-b": ids.hash_key(KEY_B)},
        max_tokens=16,
        max_messages=4,
        max_body_bytes=20_000,
        rate_limit_per_s=1000,
        rate_burst=1000,
        scrub_cost_per_s=1e9,
        scrub_cost_burst=10**9,
    )
    app = make_app(
        cfg,
        generator=generator,
        tokenizer=tokenizer,
        outbox=outbox,
        chats_topic=kafka.chats_topic,
        feedback_topic=kafka.feedback_topic,
        secret=b"test-secret" * 32,
        route=lambda user: ("base", None),
    )
    with serve_in_thread(app) as url:
        yield {"url": url, "kafka": kafka, "broker": broker, "outbox": outbox}
    sender.close()
    generator.close()


def client(server, key=KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, max_retries=0)


def test_chat_models_and_stream_with_the_openai_client(server):
    c = client(server)
    reply = c.chat.completions.create(
        model="anything",
        messages=[{"role": "user", "content": "Where is my order?"}],
        max_tokens=8,
        temperature=0,
        user="user-1",
    )
    assert reply.id.startswith("chatcmpl-") and reply.model == "base"
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 8
    assert [m.id for m in c.models.list().data] == ["base"]
    stream = c.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Where is my order?"}],
        max_tokens=8,
        temperature=0,
        user="user-1",
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == reply.choices[0].message.content  # greedy: the same answer, streamed


def test_auth_limits_and_errors(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    assert httpx.get(server["url"] + "/v1/models").status_code == 401
    with pytest.raises(openai.BadRequestError, match="at most 4"):
        client(server).chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}] * 5)
    big = httpx.post(
        server["url"] + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY_A}"},
        content=b"{" + b" " * 30_000 + b"}",
    )
    assert big.status_code == 413 and "max_body_bytes" in big.json()["error"]["message"]
    broken = httpx.post(
        server["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY_A}"}, content=b"{not json"
    )
    assert broken.status_code == 400
    garbled = httpx.post(
        server["url"] + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"},
        content=b"\xff\xfe{",
    )  # not UTF-8
    assert garbled.status_code == 400 and garbled.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(server["url"] + "/v1/nowhere").json()["error"]["code"] == 404
    huge_seed = httpx.post(
        server["url"] + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY_A}"},
        json={"messages": [{"role": "user", "content": "hi"}], "seed": 2**70, "max_tokens": 2},
    )
    assert huge_seed.status_code == 200


def post_feedback(server, key, response_id, rating="up", **extra):
    return httpx.post(
        server["url"] + "/v1/feedback",
        headers={"Authorization": f"Bearer {key}"},
        json={"response_id": response_id, "rating": rating, **extra},
    )


def test_feedback_is_checked_idempotent_and_lands_in_kafka(server):
    reply = client(server).chat.completions.create(  # greedy: sampled, an answer may end at its first token
        model="x", messages=[{"role": "user", "content": "Returns?"}], max_tokens=4, user="user-7", temperature=0
    )
    first = post_feedback(server, KEY_A, reply.id, "down", correction="Returns are free within 30 days.")
    again = post_feedback(server, KEY_A, reply.id, "down", correction="Returns are free within 30 days.")
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    assert post_feedback(server, KEY_B, reply.id).status_code == 403
    forged = reply.id[:-4] + ("AAAA" if not reply.id.endswith("AAAA") else "BBBB")
    assert post_feedback(server, KEY_A, forged).status_code == 404
    assert post_feedback(server, KEY_A, "chatcmpl-made-up").status_code == 404

    seen = stored(server, {reply.id})
    [chat] = [e for e in seen["chat"] if e.response_id == reply.id]
    user = ids.pseudonym(b"u" * 32, "app-a", "user-7")  # the raw id stays at the API
    assert chat.user_id == user and chat.variant == "base" and chat.response == reply.choices[0].message.content
    assert chat.completion_tokens == reply.usage.completion_tokens > 0  # the latency guardrail's per-token time
    fb = [e for e in seen["feedback"] if e.response_id == reply.id]
    assert fb and fb[0].rating == -1 and fb[0].user_id == user and fb[0].correction.startswith("Returns")
    raw = seen["raw"]
    assert len(raw) >= 2 and not any(b"user-7" in r for r in raw)  # not in the Kafka key, the event, the id
    assert b"user-7" not in base64.urlsafe_b64decode(reply.id.split(".")[1] + "==")


def test_feedback_errors(server):
    """The feedback route is answered below FastAPI (serving.app._fast_feedback): it must keep every check."""
    url, auth = server["url"] + "/v1/feedback", {"Authorization": f"Bearer {KEY_A}"}
    reply = client(server).chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, user="user-8"
    )
    assert post_feedback(server, "wrong", reply.id).status_code == 401
    missing = httpx.post(url, json={"response_id": reply.id, "rating": "up"})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    declared = httpx.post(url, headers=auth, content=b"{" + b" " * 30_000 + b"}")
    assert declared.status_code == 413 and "max_body_bytes" in declared.json()["error"]["message"]
    streamed = httpx.post(url, headers=auth, content=iter([b"{" + b" " * 10_000] * 3))  # chunked: no length
    assert streamed.status_code == 413
    assert httpx.post(url, headers=auth, content=b"{not json").status_code == 400
    unknown_field = post_feedback(server, KEY_A, reply.id, stars=5)
    assert unknown_field.status_code == 400 and "stars" in unknown_field.json()["error"]["message"]
    sideways = post_feedback(server, KEY_A, reply.id, "sideways")
    assert sideways.status_code == 400 and "rating" in sideways.json()["error"]["message"]
    assert httpx.get(url, headers=auth).status_code == 405
    assert post_feedback(server, KEY_A, reply.id).status_code == 202


def test_the_longest_ids_still_round_trip(server):
    user = "u" * 128  # the longest user id the contracts accept
    reply = client(server).chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, user=user
    )
    assert len(reply.id) > 128
    assert post_feedback(server, KEY_A, reply.id).status_code == 202


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.chaos
def test_oversized_bodies_get_413_without_memory_growth(server):
    """320 MB of oversized bodies (declared or streamed) against a 20 kB limit: every one 413, and the server
    (in this process) does not buffer them."""
    body = b"x" * (8 << 20)
    auth = {"Authorization": f"Bearer {KEY_A}"}

    def chunks():
        for i in range(0, len(body), 1 << 16):
            yield body[i : i + (1 << 16)]

    codes = []
    with httpx.Client(base_url=server["url"], headers=auth, timeout=30) as c:
        codes.append(c.post("/v1/chat/completions", content=body).status_code)  # warm-up
        before = rss_bytes()
        for i in range(40):
            path = "/v1/feedback" if i % 2 else "/v1/chat/completions"
            try:
                codes.append(c.post(path, content=body if i % 4 < 2 else chunks()).status_code)
            except httpx.HTTPError:  # the server may close the connection before the upload ends
                codes.append("closed")
        grown = rss_bytes() - before
    assert set(codes) <= {413, "closed"} and codes.count(413) >= 30, codes
    assert grown < 48 << 20, f"RSS grew {grown >> 20} MB over 320 MB of refused bodies"


def test_a_foreign_host_header_reaches_nothing(server):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends Host: evil.example."""
    url, auth = server["url"], {"Authorization": f"Bearer {KEY_A}"}
    for path, method in (("/v1/models", "GET"), ("/v1/feedback", "POST"), ("/review", "GET"), ("/healthz", "GET")):
        r = httpx.request(method, url + path, headers={**auth, "Host": "evil.example"}, json={})
        assert r.status_code == 400 and "serving.allowed_hosts" in r.json()["error"]["message"], path
    for host in ("127.0.0.1", "localhost:1234", "[::1]:80"):
        assert httpx.get(url + "/v1/models", headers={**auth, "Host": host}).status_code == 200, host


def test_what_current_sdks_send_developer_role_and_content_parts(server):
    c = client(server)
    plain = c.chat.completions.create(
        model="x",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Returns?\nShipping?"}],
        max_tokens=6,
        temperature=0,
    )
    parts = c.chat.completions.create(
        model="x",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Returns?"}, {"type": "text", "text": "Shipping?"}]},
        ],
        max_completion_tokens=6,
        temperature=0,
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content  # the same prompt, greedy
    with pytest.raises(openai.BadRequestError, match="'image_url' part"):
        c.chat.completions.create(
            model="x", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
        )


def test_n_choices_each_logged_and_rated(server):
    c = client(server)
    reply = c.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, n=3, seed=11, user="n-user"
    )
    assert [ch.index for ch in reply.choices] == [0, 1, 2]
    assert post_feedback(server, KEY_A, reply.id, "up", choice=2).status_code == 202
    assert post_feedback(server, KEY_A, reply.id, "down").status_code == 202
    missing = post_feedback(server, KEY_A, reply.id, "up", choice=3)
    assert missing.status_code == 404 and "choices 0 to 2" in missing.json()["error"]["message"]
    wanted = {reply.id, f"{reply.id}:1", f"{reply.id}:2"}
    seen = stored(server, wanted)
    chats = {e.response_id: e.response for e in seen["chat"]}
    assert chats == {ids.choice_id(reply.id, ch.index): ch.message.content for ch in reply.choices}
    assert {(e.response_id, e.rating) for e in seen["feedback"]} == {(f"{reply.id}:2", 1), (reply.id, -1)}

    stream = c.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        n=2,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, usage = ["", ""], None
    for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
        usage = chunk.usage or usage
    single = c.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0
    )
    assert texts == [single.choices[0].message.content] * 2  # greedy: each choice is the same answer
    assert usage is not None and usage.completion_tokens == 2 * single.usage.completion_tokens
    assert usage.prompt_tokens == single.usage.prompt_tokens


@pytest.mark.parametrize(
    "extra, named",
    [
        ({"logprobs": True, "top_logprobs": 2}, "logprobs, top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
    ],
)
def test_what_the_generator_cannot_do_is_refused_by_name(server, extra, named):
    with pytest.raises(openai.BadRequestError, match=f"{named}: not supported"):
        client(server).chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], **extra)


def test_neutral_values_and_unknown_parameters(server):
    c = client(server)
    reply = c.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
        logprobs=False,
        frequency_penalty=0,
        response_format={"type": "text"},
        tools=[],  # /openapi.json lists each neutral value too (Schemathesis checks the two agree)
        logit_bias={},
        stream_options={"include_usage": True},  # usage is in every unstreamed answer
    )
    assert reply.choices[0].message.content is not None and reply.usage.total_tokens > 0
    with pytest.raises(openai.BadRequestError, match="modalities: unknown parameter"):
        c.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "Hi"}], extra_body={"modalities": ["audio"]}
        )


def test_the_key_is_checked_before_the_body(server):
    url = server["url"] + "/v1/chat/completions"
    for body in (b"{not json", b'{"messages": 5}', b'{"messages": [], "nonsense": 1}'):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.post(url, content=body, headers={"Content-Type": "application/json", **headers})
            assert r.status_code == 401, (body, headers, r.text)
