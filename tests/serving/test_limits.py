"""Rate limits, readiness and metrics through the app (in-process client)."""

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving import ids
from serving.config import ServingConfig
from serving.generator import BatchGenerator
from serving.outbox import Outbox
from tests.helpers.api import make_app


def test_rate_limit_metrics_and_health(tiny_lm, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    gen = BatchGenerator(AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval(), tokenizer).start()
    ready = {"ok": True}
    app = make_app(
        ServingConfig(api_keys={"a": ids.hash_key("k")}, rate_limit_per_s=0.01, rate_burst=3, max_tokens=3),
        generator=gen,
        tokenizer=tokenizer,
        outbox=Outbox(tmp_path / "o.sqlite"),
        ready=lambda: ready["ok"],
    )
    client = TestClient(app, base_url="http://127.0.0.1")
    auth = {"Authorization": "Bearer k"}
    try:
        codes = [
            client.post(
                "/v1/chat/completions", headers=auth, json={"messages": [{"role": "user", "content": "hi"}]}
            ).status_code
            for _ in range(5)
        ]
        assert codes == [200, 200, 200, 429, 429]
        limited = client.get("/v1/models", headers=auth)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
        feedback = client.post("/v1/feedback", headers=auth, json={"response_id": "x", "rating": "up"})
        assert feedback.status_code == 429 and feedback.headers["Retry-After"] == "1"
        metrics = client.get("/metrics").text
        assert 'flywheel_generated_tokens_total{variant="base"}' in metrics
        assert "flywheel_outbox_events 3.0" in metrics  # nothing ships them in this test
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        ready["ok"] = False
        assert client.get("/readyz").status_code == 503
    finally:
        gen.close()


def test_wrong_key_guessing_is_throttled_per_address(tmp_path):
    """900 wrong keys took 0.3 s before: now an address gets `guess_burst` tries, then `guess_per_s`."""
    import time

    cfg = ServingConfig(
        api_keys={"a": ids.hash_key("right-key")},
        admin_keys={"dpo": ids.hash_key("admin-key")},
        guess_burst=5,
        guess_per_s=2,
    )
    app = make_app(cfg, outbox=Outbox(tmp_path / "o.sqlite"))
    guesser = TestClient(app, base_url="http://127.0.0.1")
    other = TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.2", 50000))
    wrong = {"Authorization": "Bearer guess"}
    codes = [guesser.get("/v1/models", headers=wrong).status_code for _ in range(8)]
    assert codes == [401] * 5 + [429] * 3
    assert guesser.post("/v1/feedback", headers=wrong, json={}).status_code == 429  # the fast route too
    assert guesser.post("/v1/admin/forget", headers=wrong, json={}).status_code == 429  # and admin keys
    right = guesser.get("/v1/models", headers={"Authorization": "Bearer right-key"})
    assert right.status_code == 429 and right.headers["Retry-After"] == "1"  # every key, until it refills
    assert other.get("/v1/models", headers={"Authorization": "Bearer right-key"}).status_code == 200
    time.sleep(0.6)  # 2 tokens/s: one more try
    assert guesser.get("/v1/models", headers={"Authorization": "Bearer right-key"}).status_code == 200
    started, tried = time.monotonic(), 0
    while time.monotonic() - started < 1.0:
        tried += guesser.get("/v1/models", headers=wrong).status_code == 401
    elapsed = time.monotonic() - started
    assert tried <= 1 + cfg.guess_per_s * elapsed  # guessing runs at guess_per_s, not at the server's speed


def _chat_app(tiny_lm, tmp_path, **settings):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    gen = BatchGenerator(
        AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval(),
        tokenizer,
        queue_depth=settings.pop("queue_depth", 64),
    )
    cfg = ServingConfig(api_keys={"a": ids.hash_key("k")}, max_tokens=4, **settings)
    app = make_app(cfg, generator=gen, tokenizer=tokenizer, outbox=Outbox(tmp_path / "o.sqlite"))
    return app, gen, tokenizer


def test_prompt_tokens_are_bounded_and_counted_off_the_event_loop(tiny_lm, tmp_path):
    """A body under max_body_bytes became a 180,385-token prompt for an 8,192-token model: now 400 (the tiny
    model's context is 512 tokens, so at most 512 - max_tokens)."""
    import threading

    app, gen, tokenizer = _chat_app(tiny_lm, tmp_path)
    gen.start()
    threads, real = [], tokenizer.apply_chat_template

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    tokenizer.apply_chat_template = spy
    client = TestClient(app, base_url="http://127.0.0.1")
    auth = {"Authorization": "Bearer k"}
    try:
        long = client.post(
            "/v1/chat/completions", headers=auth, json={"messages": [{"role": "user", "content": "refund " * 2_000}]}
        )
        assert long.status_code == 400
        assert "at most 508 (serving.max_prompt_tokens)" in long.json()["error"]["message"]
        assert (
            client.post(
                "/v1/chat/completions", headers=auth, json={"messages": [{"role": "user", "content": "hi"}]}
            ).status_code
            == 200
        )
        assert threads and not any(name == "MainThread" or "loop" in name.lower() for name in threads), threads
    finally:
        gen.close()
    with pytest.raises(ValueError, match="at most 508"):
        _chat_app(tiny_lm, tmp_path, max_prompt_tokens=600)


def test_a_full_queue_answers_503_before_tokenizing(tiny_lm, tmp_path):
    app, gen, tokenizer = _chat_app(tiny_lm, tmp_path, queue_depth=1)  # not started: nothing drains the queue
    calls = []
    real = tokenizer.apply_chat_template
    tokenizer.apply_chat_template = lambda *a, **k: calls.append(1) or real(*a, **k)
    from serving.generator import GenRequest

    gen.submit(GenRequest([1, 2, 3]))
    r = TestClient(app, base_url="http://127.0.0.1").post(
        "/v1/chat/completions",
        headers={"Authorization": "Bearer k"},
        json={"messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 503 and calls == []


def test_a_batch_stays_within_its_token_budget(tiny_lm):
    """One long prompt does not pad short ones to its length: it waits for them (first in line), then runs."""
    from serving.generator import GenRequest

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    gen = BatchGenerator(
        AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval(),
        tokenizer,
        max_batch=8,
        max_wait_ms=300,
        max_batch_tokens=200,
    )
    widths, real = [], gen._join

    def join(rows, state, batch):  # observe what each prefill admits
        widths.append(
            (len(rows) + len(batch), max(len(r.prompt_ids) + r.max_tokens for r in [*(x.req for x in rows), *batch]))
        )
        return real(rows, state, batch)

    gen._join = join
    gen.start()
    try:
        short = [GenRequest([5] * 10, max_tokens=20) for _ in range(4)]
        long = GenRequest([5] * 150, max_tokens=20)
        futures = [gen.submit(r) for r in short[:2]] + [gen.submit(long)] + [gen.submit(r) for r in short[2:]]
        # all answered (sampled at temperature 1, an answer may end at its first token: no count asserted)
        assert all(f.result(timeout=60).finish_reason in ("stop", "length") for f in futures)
    finally:
        gen.close()
    assert all(rows * width <= 200 or rows == 1 for rows, width in widths), widths
    assert any(width == 170 for _, width in widths)  # the long one ran


def test_stop_strings_and_chat_size_are_bounded_by_the_contract(tiny_lm, tmp_path):
    from ingest import contracts
    from serving.limits import MAX_CHAT_BYTES

    app, gen, _ = _chat_app(tiny_lm, tmp_path, max_prompt_tokens=None)
    gen.start()
    client = TestClient(app, base_url="http://127.0.0.1")
    auth = {"Authorization": "Bearer k"}
    hi = [{"role": "user", "content": "hi"}]
    try:
        for stop, ok in (
            (["a", "b", "c", "d"], True),
            (["x"] * 80_000, False),
            (["a"] * 5, False),
            ("z" * 65, False),
            (["y" * 64], True),
        ):
            r = client.post("/v1/chat/completions", headers=auth, json={"messages": hi, "stop": stop})
            assert (r.status_code == 200) == ok and (ok or r.status_code == 400), (len(stop), r.text[:200])
        # 40 messages of 15,000 characters (600 kB) passed every per-message limit, then ingest dead-lettered
        # the chat log (512 KiB contract).
        big = [{"role": "user", "content": "e" * 15_000}] * 40
        r = client.post("/v1/chat/completions", headers=auth, json={"messages": big})
        assert r.status_code == 413 and f"at most {MAX_CHAT_BYTES}" in r.json()["error"]["message"]
    finally:
        gen.close()
    with pytest.raises(ValueError, match="less than or equal to 64"):
        ServingConfig(max_messages=contracts.MAX_MESSAGES + 1)
    with pytest.raises(ValueError, match="less than or equal to 16000"):
        ServingConfig(max_message_chars=contracts.MAX_FIELD_CHARS + 1)


def test_a_stream_whose_client_left_stops_generating(tiny_lm, tmp_path):
    import httpx

    from tests.conftest import serve_in_thread

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    gen = BatchGenerator(AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval(), tokenizer).start()
    cfg = ServingConfig(api_keys={"a": ids.hash_key("k")}, max_tokens=480)
    app = make_app(cfg, generator=gen, tokenizer=tokenizer, outbox=Outbox(tmp_path / "o.sqlite"))
    submitted, real_submit = [], gen.submit

    def submit(req):  # a slow client-side consumer of tokens (fault injection): 480 tokens take ~5 s
        inner = req.on_text
        req.on_text = lambda text: (time.sleep(0.01), inner(text))[1]
        submitted.append(req)
        return real_submit(req)

    import time

    gen.submit = submit
    try:
        with serve_in_thread(app) as url:
            with httpx.stream(
                "POST",
                url + "/v1/chat/completions",
                headers={"Authorization": "Bearer k"},
                json={"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 480},
            ) as r:
                assert r.status_code == 200
                next(r.iter_lines())  # the first chunk, then the client goes away
            result = submitted[0].future.result(timeout=30)
            assert result.finish_reason == "cancelled" and result.completion_tokens < 480, result
    finally:
        gen.close()


def test_text_to_scrub_is_bounded_per_text_and_per_key(tmp_path):
    """One key's text must not take ingest's scrubbing from every other tenant."""
    import time

    from ingest.contracts import MAX_TEXT_COST

    cfg = ServingConfig(
        api_keys={"a": ids.hash_key("k"), "b": ids.hash_key("k2")}, scrub_cost_per_s=1_000, scrub_cost_burst=40_000
    )
    app = make_app(cfg, outbox=Outbox(tmp_path / "o.sqlite"))
    client = TestClient(app, base_url="http://127.0.0.1")
    rid = ids.issue(b"s" * 32, ids.ResponseClaims("a", "u-1", "base", None, time.time()))
    rid_b = ids.issue(b"s" * 32, ids.ResponseClaims("b", "u-2", "base", None, time.time()))

    def rate(key, response_id, comment):
        return client.post(
            "/v1/feedback",
            headers={"Authorization": f"Bearer {key}"},
            json={"response_id": response_id, "rating": "down", "comment": comment},
        )

    phones = rate("k", rid, "call 555-123-4567 " * 200)  # 3,600 characters, 2,000 digits
    assert phones.status_code == 400 and f"at most {MAX_TEXT_COST}" in phones.json()["error"]["message"]
    prose = "The parcel never came and nobody answered my emails. " * 300  # 15,900 characters
    assert [rate("k", rid, prose + str(i)).status_code for i in range(3)] == [202, 202, 429]
    assert rate("k2", rid_b, prose).status_code == 202  # another key has its own share


def test_response_ids_expire(tmp_path):
    import time

    app = make_app(
        ServingConfig(api_keys={"a": ids.hash_key("k")}, feedback_window_days=30), outbox=Outbox(tmp_path / "o.sqlite")
    )
    client = TestClient(app, base_url="http://127.0.0.1")
    for age_days, status in ((29.9, 202), (30.1, 404)):
        rid = ids.issue(b"s" * 32, ids.ResponseClaims("a", "u-1", "base", None, time.time() - age_days * 86_400))
        r = client.post(
            "/v1/feedback", headers={"Authorization": "Bearer k"}, json={"response_id": rid, "rating": "up"}
        )
        assert r.status_code == status, (age_days, r.text)
    assert "serving.feedback_window_days" in r.json()["error"]["message"]


def test_a_rating_on_an_answer_from_before_a_forget_is_refused(db, tmp_path):
    """Late ratings must not bring an erased user back: the API in `flywheel up` refuses them (404)."""
    import time

    from infra import keys
    from infra.config import Config
    from infra.services import ReviewStore

    cfg = ServingConfig(api_keys={"a": ids.hash_key("k")}, admin_keys={"dpo": ids.hash_key("admin-key")})
    store = ReviewStore(db, Config(data_dir=tmp_path, serving=cfg))
    app = make_app(cfg, outbox=Outbox(tmp_path / "o.sqlite"), review=store, forgotten=store.forgotten_before)
    client = TestClient(app, base_url="http://127.0.0.1")
    ann = ids.pseudonym(keys.data_dir_key(tmp_path, "user-pseudonyms"), "a", "ann")
    before = ids.issue(b"s" * 32, ids.ResponseClaims("a", ann, "base", None, time.time() - 60))

    def rate(rid):
        return client.post(
            "/v1/feedback", headers={"Authorization": "Bearer k"}, json={"response_id": rid, "rating": "up"}
        )

    assert rate(before).status_code == 202
    erased = client.post(
        "/v1/admin/forget", headers={"Authorization": "Bearer admin-key"}, json={"app": "a", "user": "ann"}
    )
    assert erased.status_code == 200
    refused = rate(before)
    assert refused.status_code == 404 and "erased" in refused.json()["error"]["message"]
    after = ids.issue(b"s" * 32, ids.ResponseClaims("a", ann, "base", None, time.time() + 1))
    assert rate(after).status_code == 202  # an answer given after the forget is new data
