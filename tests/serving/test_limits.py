"""Rate limits, readiness and metrics through the app (in-process client)."""

import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving import ids
from serving.app import create_app
from serving.config import ServingConfig
from serving.generator import BatchGenerator
from serving.outbox import Outbox


def test_rate_limit_metrics_and_health(tiny_lm, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    gen = BatchGenerator(AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval(), tokenizer).start()
    ready = {"ok": True}
    app = create_app(ServingConfig(api_keys={"a": ids.hash_key("k")}, rate_limit_per_s=0.01, rate_burst=3,
                                   max_tokens=3), generator=gen, tokenizer=tokenizer,
                     outbox=Outbox(tmp_path / "o.sqlite"), chats_topic="c", feedback_topic="f", secret=b"s" * 32, user_key=b"u" * 32,
                     route=lambda u: ("base", None), variants=lambda: ["base"], ready=lambda: ready["ok"])
    client = TestClient(app, base_url="http://127.0.0.1")
    auth = {"Authorization": "Bearer k"}
    try:
        codes = [client.post("/v1/chat/completions", headers=auth,
                             json={"messages": [{"role": "user", "content": "hi"}]}).status_code for _ in range(5)]
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

    cfg = ServingConfig(api_keys={"a": ids.hash_key("right-key")}, admin_keys={"dpo": ids.hash_key("admin-key")},
                        guess_burst=5, guess_per_s=2)
    app = create_app(cfg, generator=None, tokenizer=None, outbox=Outbox(tmp_path / "o.sqlite"), chats_topic="c",
                     feedback_topic="f", secret=b"s" * 32, user_key=b"u" * 32, route=lambda u: ("base", None),
                     variants=lambda: ["base"])
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
