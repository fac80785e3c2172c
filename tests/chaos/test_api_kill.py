"""kill -9 the API process (`flywheel serve`) under load, twice: every request that got a 2xx has its event in
DuckDB after recovery (the outbox is on disk before the answer; the restarted API ships what the killed one
had not), and the killed API's outbox relay does not outlive it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from infra.broker import free_port
from infra.db import open_store
from tests.helpers.kafka import ingest_until_caught_up, process_env, topic_config
from tests.helpers.load import Load

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
KEY = "flywheel-demo-key"  # the embedded demo app's key


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_under_load_loses_no_acknowledged_event(broker, tmp_path, tiny_lm):
    port = free_port("127.0.0.1")
    cfg, overrides = topic_config(
        broker,
        tmp_path,
        base_model=str(tiny_lm),
        **{"serving.port": port, "serving.max_tokens": 4, "serving.rate_limit_per_s": 10_000},
    )
    env = process_env(overrides)
    url = f"http://127.0.0.1:{port}"

    def start():
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "serve", "--demo-keys"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.kill()
        raise AssertionError("flywheel serve did not start")

    proc = start()
    load = Load(url, KEY, clients=8)
    relays = []
    try:
        for _ in range(2):
            time.sleep(6)
            relays += children(proc.pid)
            before = len(load.acked_chats)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert before > 0
            proc = start()
        time.sleep(4)
        load.stop()
        proc.send_signal(signal.SIGTERM)  # drains the outbox to Kafka before it exits
        assert proc.wait(60) == 0
    finally:
        load.stop()
        proc.kill()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in relays) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert relays and not any(alive(p) for p in relays)  # orphaned relays stop on their own
    con = open_store(cfg.db_path)
    try:
        ingest_until_caught_up(cfg, broker, con)
        chats = {r[0] for r in con.execute("SELECT response_id FROM chats").fetchall()}
        feedback = {str(r[0]) for r in con.execute("SELECT event_id FROM feedback").fetchall()}
    finally:
        con.close()
    acked_chats, acked_feedback = load.acked_chats, load.acked_feedback
    assert acked_chats and acked_feedback and load.failed > 0
    assert acked_chats <= chats, f"{len(acked_chats - chats)} acknowledged chats missing"
    assert acked_feedback <= feedback, f"{len(acked_feedback - feedback)} acknowledged ratings missing"
    print(
        f"\n2 kills under load: {len(acked_chats)} chats and {len(acked_feedback)} ratings acknowledged, all in "
        f"DuckDB; {load.failed} requests failed while the API was down"
    )
