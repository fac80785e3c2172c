"""kill -9 of the bundled broker under load, 10 times, then SIGTERM of `flywheel up` while clients still send:
every chat answered 200 and every rating answered 202 is in DuckDB when `up` has stopped.

The broker keeps its log in memory, so each kill loses whatever ingest had not yet stored; `up` restarts it on
the same port and the API's outbox sends it every event ingest had not stored (rows wait for the ingest
group's committed offset, not for Kafka's ack). The stop runs HTTP → outbox → ingest to the end offsets."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import httpx
import pytest

from infra.broker import free_port
from infra.config import load_config
from infra.db import open_store
from tests.helpers.kafka import process_env
from tests.helpers.load import Load

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
KEY = "flywheel-demo-key"  # the embedded demo app's key


def broker_pid(data_dir) -> int | None:
    try:
        return json.loads((data_dir / "broker.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_kill_9_of_the_bundled_broker_and_a_stop_mid_load_lose_no_acknowledged_event(tmp_path, tiny_lm):
    port = free_port("127.0.0.1")
    overrides = [
        f"data_dir={tmp_path}",
        f"base_model={tiny_lm}",
        f"serving.port={port}",
        "serving.max_tokens=4",
        "serving.rate_limit_per_s=10000",
        "ingest.batch_max_ms=200",
        "ingest.pii.workers=0",
        "kafka.session_timeout_ms=6000",
    ]
    cfg = load_config(overrides=overrides, env={})
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up", "--demo-keys"],
        env=process_env(overrides),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError(f"flywheel up did not start: {proc.communicate()[0][-3000:]}")

    load = Load(url, KEY, clients=6, timeout=30)
    rng, kills = random.Random(18), 0
    try:
        for _ in range(10):
            time.sleep(rng.uniform(0.3, 2.5))
            pid = broker_pid(tmp_path)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            kills += 1
            deadline = time.monotonic() + 30
            while broker_pid(tmp_path) in (pid, None):  # `up` starts a new broker on the same port
                assert time.monotonic() < deadline and proc.poll() is None, "the broker was not restarted"
                time.sleep(0.1)
        time.sleep(2)
        before = len(load.acked_chats)
        proc.send_signal(signal.SIGTERM)  # mid-load: the clients keep sending until the API has closed
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    finally:
        load.stop()
        proc.kill()
    con = open_store(cfg.db_path)
    try:
        chats = {r[0] for r in con.execute("SELECT response_id FROM chats").fetchall()}
        feedback = {str(r[0]) for r in con.execute("SELECT event_id FROM feedback").fetchall()}
    finally:
        con.close()
    acked_chats, acked_feedback = load.acked_chats, load.acked_feedback
    assert kills == 10 and before > 0 and acked_feedback
    loose = [
        f"{p.relative_to(tmp_path)} {p.stat().st_mode & 0o777:o}"
        for p in [tmp_path, *tmp_path.rglob("*")]
        if p.stat().st_mode & 0o077
    ]
    assert not loose, f"readable by others: {loose[:10]}"  # the data dir 0700, every file in it 0600
    with closing(sqlite3.connect(tmp_path / "outbox.sqlite")) as db:
        held = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert held == 0, f"{held} events still in the outbox after a clean stop:\n{out[-3000:]}"
    outbox = b"".join(p.read_bytes() for p in tmp_path.glob("outbox.sqlite*"))
    assert not any(rid.encode() in outbox for rid in acked_chats)  # stored by ingest, gone from the outbox
    assert acked_chats <= chats, f"{len(acked_chats - chats)} of {len(acked_chats)} acknowledged chats missing"
    assert acked_feedback <= feedback, f"{len(acked_feedback - feedback)} acknowledged ratings missing"
    print(
        f"\n10 broker kills and a stop under load: {len(acked_chats)} chats and {len(acked_feedback)} ratings "
        f"acknowledged, all in DuckDB; {load.failed} requests refused once HTTP closed\n{out[-800:]}"
    )
