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
