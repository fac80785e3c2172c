"""The A/B loop on live traffic: with two adapters registered, `flywheel up` starts an experiment, users
chat through the real openai client and rate, the control process decides, and serving switches to the
winner without restart."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from infra.db import open_store
from retrain import registry

KEY = "flywheel-demo-key"


def make_adapter(tiny_lm, path, seed):
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_lm),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(path)


@pytest.mark.slow
def test_up_runs_an_experiment_on_live_traffic_promotes_and_serving_follows(tmp_path, tiny_lm):
    data = tmp_path / "var"
    data.mkdir()
    con = open_store(data / "flywheel.duckdb")
    for i, (version, status) in enumerate((("v0001", "live"), ("v0002", "candidate"))):
        make_adapter(tiny_lm, data / "adapters" / version, 10 + i)
        registry.register(
            con,
            version,
            status=status,
            parent=None,
            base_model="tiny",
            base_hash=None,
            snapshot_id=None,
            path=str(data / "adapters" / version),
            metrics={},
        )
    con.close()
    env = {
        **os.environ,
        "FLYWHEEL_DATA_DIR": str(data),
        "FLYWHEEL_BASE_MODEL": str(tiny_lm),
        "FLYWHEEL_SERVING__PORT": "0",
        "FLYWHEEL_SERVING__MAX_TOKENS": "4",
        "FLYWHEEL_INGEST__PII__WORKERS": "1",
    }
    # Eleven users per arm decide here. Their p95 latency on a busy 2-core machine, and whether a random tiny
    # model's 4 sampled tokens are blank, are noise: those guardrails (tested in tests/abtest) get wide margins.
    overrides = [
        "abtest.evaluate_every_s=2",
        "abtest.min_duration_s=0",
        "abtest.min_users_per_arm=11",
        "abtest.ramp=[0.5]",
        "abtest.latency_margin=100",
        "abtest.empty_answer_margin=1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up", "--demo-keys", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("api "):
                url = line.split()[1]
            if "flywheel is up" in line:
                break
        assert url, proc.stderr.read()
        # Keep reading both pipes: a full pipe would block the service's logging, and with it the service.
        logs = {"out": [], "err": []}
        for name, pipe in (("out", proc.stdout), ("err", proc.stderr)):
            threading.Thread(target=lambda n=name, p=pipe: logs[n].extend(p), daemon=True).start()

        def split():
            return json.loads((data / "routing.json").read_text())["split"]

        deadline = time.monotonic() + 30
        while split() == [["v0001", 1.0]] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert split() == [["v0002", 0.5], ["v0001", 0.5]]  # the candidate went to half of the users

        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=3)

        def chat(user):
            return client.chat.completions.create(
                model="x", user=user, max_tokens=4, messages=[{"role": "user", "content": "Where is my order?"}]
            )

        # Serving follows routing.json on its next refresh, after loading v0002; until then every user gets v0001
        # outside the experiment (and is not counted). The first user served v0002 shows the split is applied.
        deadline = time.monotonic() + 60
        probes = 0
        while chat(f"probe-{probes}").model != "v0002" and time.monotonic() < deadline:
            probes += 1
        served = {}
        for u in range(80):
            reply = chat(f"user-{u}")
            served[u] = reply.model
            rating = "up" if reply.model == "v0002" else "down"  # users prefer the challenger
            r = httpx.post(
                url.rsplit("/v1", 1)[0] + "/v1/feedback",
                json={"response_id": reply.id, "rating": rating},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert r.status_code == 202
        assert set(served.values()) == {"v0001", "v0002"}

        deadline = time.monotonic() + 90
        while split() != [["v0002", 1.0]] and time.monotonic() < deadline:
            time.sleep(1)
        assert split() == [["v0002", 1.0]], "".join(logs["err"])[-3000:]
        time.sleep(2.5)  # serving picks the new split up
        after = client.chat.completions.create(
            model="x",
            user="user-0" if served[0] == "v0001" else "user-1",
            max_tokens=4,
            messages=[{"role": "user", "content": "Hi"}],
        )
        assert after.model == "v0002"
        assert [m.id for m in client.models.list().data] == ["base", "v0002"]  # v0001 unloaded
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, "".join(logs["err"])[-2000:]
    con = open_store(data / "flywheel.duckdb")
    try:
        assert registry.live(con)["version"] == "v0002" and registry.get(con, "v0001")["status"] == "retired"
        assert con.execute("SELECT status FROM experiments").fetchall() == [("promoted",)]
        reason = con.execute("SELECT reason FROM decisions WHERE decision = 'promote'").fetchone()[0]
        assert reason.startswith("better")
    finally:
        con.close()
