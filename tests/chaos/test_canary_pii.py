"""1,000 distinct canary PII values through every entry point, in one run of the whole loop as a user runs it:
`flywheel up` (chats and ratings through the API; malformed events straight into Kafka), then `flywheel
curate`, `flywheel review approve --all-pending` and `flywheel retrain --now`. None of the values may be in
the DuckDB file (its bytes, and every column of every table read back), the Parquet snapshots (bytes and
rows), the adapter folders or any log.

Each carrier also holds a marker that is not PII (`TKT0001ZQ`): the same scans must find those, so a scan that
looks in the wrong place, or a file that compression hides from a byte search, cannot pass for clean."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from infra.broker import free_port
from infra.config import to_toml_dict
from infra.kafka import client_settings
from ingest.producer import EventProducer
from ingest.synthetic import PII_TEMPLATES, pii_value
from retrain.config import LoraConfig, RetrainConfig
from tests.helpers.kafka import topic_config
from tests.helpers.retrain import TINY_TARGETS

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
KEY = "flywheel-demo-key"  # the embedded demo app's key
KINDS = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS", "STREET_ADDRESS"]
CHATS, COMMENTS, CORRECTIONS, BROKEN, INVALID = 400, 200, 200, 100, 100  # 1,000 canaries in all
ANSWERS = [
    "Thanks, I have updated your details.",
    "I have noted that on your account.",
    "Our courier will use that from now on.",
    "The refund goes there within 5 business days.",
    "I have passed that on to our billing team.",
    "You will get a confirmation shortly.",
]


def canaries(n: int, seed: int = 9) -> list[tuple[str, str, str]]:
    """n distinct (kind, value, sentence) triples, the kinds in turn; each sentence says the value once."""
    rng, seen, out = random.Random(seed), set(), []
    templates = {kind: [t for k, t in PII_TEMPLATES if k == kind] for kind in KINDS}
    while len(out) < n:
        kind = KINDS[len(out) % len(KINDS)]
        value = pii_value(kind, rng)
        if value in seen or any(value in v or v in value for v in seen):
            continue
        seen.add(value)
        out.append((kind, value, rng.choice(templates[kind]).format(v=value)))
    return out


def marker(i: int) -> str:
    return f"TKT{i:04d}ZQ"


def run(args: list[str], cfg_file: Path, logs: Path, name: str, timeout: float = 600) -> str:
    """A `flywheel` command with the test's config; its stdout and stderr go to a log file that is scanned."""
    out = subprocess.run(
        [sys.executable, "-m", "infra.cli", "-c", str(cfg_file), *args], capture_output=True, text=True, timeout=timeout
    )
    (logs / f"{name}.out").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def ingested(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("flywheel_ingest_events_total{")
    )


def test_1000_canaries_reach_no_file_and_no_log(broker, tmp_path, tiny_lm):
    data, logs = tmp_path / "var", tmp_path / "logs"
    data.mkdir()
    logs.mkdir()
    port = free_port("127.0.0.1")
    cfg, _ = topic_config(
        broker,
        data,
        base_model=str(tiny_lm),
        **{"serving.port": port, "serving.max_tokens": 4, "serving.rate_limit_per_s": 10_000, "ingest.pii.workers": 1},
    )
    cfg = cfg.model_copy(
        update={
            "retrain": RetrainConfig(
                min_new_samples=1,
                epochs=2,
                learning_rate=0.03,
                tokens_per_batch=512,
                max_seq_len=128,
                forgetting_tolerance=100.0,
                lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=TINY_TARGETS),
            )
        }
    )
    import tomli_w

    cfg_file = tmp_path / "flywheel.toml"
    cfg_file.write_text(tomli_w.dumps(to_toml_dict(cfg)))
    values = canaries(CHATS + COMMENTS + CORRECTIONS + BROKEN + INVALID)
    assert len({v for _, v, _ in values}) == 1_000

    # 1. The service: chats and ratings through the API, malformed events straight into Kafka.
    url = f"http://127.0.0.1:{port}"
    with open(logs / "up.out", "w") as up_log:
        up = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "-c", str(cfg_file), "up", "--demo-keys"],
            stdout=up_log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while "flywheel is up" not in (logs / "up.out").read_text():
                assert up.poll() is None and time.monotonic() < deadline, (logs / "up.out").read_text()[-3000:]
                time.sleep(0.3)
            auth = {"Authorization": f"Bearer {KEY}"}

            def chat(i: int) -> str:
                kind, value, sentence = values[i]
                with httpx.Client(base_url=url, headers=auth, timeout=60) as c:
                    r = c.post(
                        "/v1/chat/completions",
                        json={
                            "user": f"user-{i:04d}",
                            "messages": [{"role": "user", "content": f"{sentence} Ticket {marker(i)}."}],
                        },
                    )
                    assert r.status_code == 200, r.text
                    rid = r.json()["id"]
                    if i < COMMENTS:  # a thumbs-down whose comment carries the next canary
                        j = CHATS + i
                        fb = {"rating": "down", "comment": f"{values[j][2]} Ticket {marker(j)}."}
                    elif i < COMMENTS + CORRECTIONS:  # a correction that carries one
                        j = CHATS + i
                        fb = {
                            "rating": "down",
                            "correction": f"{ANSWERS[i % len(ANSWERS)]} {values[j][2]} Ticket {marker(j)}.",
                        }
                    else:
                        fb = {"rating": "up"}
                    assert c.post("/v1/feedback", json={"response_id": rid, **fb}).status_code == 202
                return rid

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(chat, range(CHATS)))
            producer = EventProducer.connect(
                client_settings(cfg.kafka, broker.bootstrap), cfg.kafka.chats_topic, cfg.kafka.feedback_topic
            )
            first = CHATS + COMMENTS + CORRECTIONS
            for i in range(first, first + BROKEN):  # not JSON at all
                text = f"Ticket {marker(i)}. {values[i][2]}"
                producer.send_raw(cfg.kafka.chats_topic, b"u", f'{{"messages": [{{"content": "{text}'.encode())
            for i in range(first + BROKEN, first + BROKEN + INVALID):  # JSON that breaks the contract
                text = f"Ticket {marker(i)}. {values[i][2]}"
                producer.send_raw(
                    cfg.kafka.feedback_topic,
                    b"u",
                    json.dumps({"response_id": f"resp-{i}", "rating": "sideways", "comment": text}).encode(),
                )
            producer.flush()
            producer.close()
            expected = CHATS * 2 + BROKEN + INVALID  # chats, ratings, dead letters
            deadline = time.monotonic() + 240
            while ingested(url) < expected:
                assert time.monotonic() < deadline, f"ingested {ingested(url)} of {expected}"
                time.sleep(1)
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=120)
    assert up.returncode == 0, (logs / "up.out").read_text()[-3000:]

    # 2. Curation, review and training, from the command line.
    run(["curate"], cfg_file, logs, "curate")
    run(["review", "list", "--limit", "500"], cfg_file, logs, "review-list")
    run(["review", "approve", "--all-pending", "--reviewer", "dpo"], cfg_file, logs, "approve")
    trained = run(["retrain", "--now"], cfg_file, logs, "retrain")
    assert "retrain v0001: " in trained
    run(["db", "info"], cfg_file, logs, "db-info")

    # 3. The scans.
    import duckdb
    import pyarrow.parquet as pq

    con = duckdb.connect(str(cfg.db_path), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        rows = {t: str(con.execute(f'SELECT CAST(COLUMNS(*) AS VARCHAR) FROM "{t}"').fetchall()) for t in tables}
        types = {r[0] for r in con.execute("SELECT DISTINCT entity_type FROM pii_findings").fetchall()}
        counts = con.execute(
            "SELECT (SELECT count(*) FROM chats), (SELECT count(*) FROM feedback), (SELECT count(*) FROM dead_letters)"
        ).fetchone()
    finally:
        con.close()
    assert counts == (CHATS, CHATS, BROKEN + INVALID)
    assert set(KINDS) <= types, types

    snapshots = sorted((data / "snapshots").rglob("*.parquet"))
    adapters = [p for p in (data / "adapters").rglob("*") if p.is_file()]
    assert snapshots and any(p.name == "adapter_model.safetensors" for p in adapters)
    places = {
        "duckdb rows": "\n".join(rows.values()).encode(),
        "duckdb file": b"".join(p.read_bytes() for p in data.glob("flywheel.duckdb*")),
        "parquet rows": "\n".join(str(pq.read_table(p).to_pylist()) for p in snapshots).encode(),
        "parquet files": b"".join(p.read_bytes() for p in snapshots),
        "snapshot folder": b"".join(p.read_bytes() for p in (data / "snapshots").rglob("*") if p.is_file()),
        "adapter folders": b"".join(p.read_bytes() for p in adapters),
        "logs": b"".join(p.read_bytes() for p in [*logs.iterdir(), *data.rglob("*.log")]),
    }
    leaks = {place: [v for _, v, _ in values if v.encode() in blob] for place, blob in places.items()}
    markers = {place: sum(marker(i).encode() in blob for i in range(len(values))) for place, blob in places.items()}
    outbox = b"".join(p.read_bytes() for p in data.glob("outbox.sqlite*"))
    in_outbox = sum(v.encode() in outbox for _, v, _ in values)
    print(
        f"\ncanaries found: { {k: len(v) for k, v in leaks.items()} }; markers found: {markers}; "
        f"in the outbox file (raw events before Kafka, by design): {in_outbox}"
    )
    assert all(not found for found in leaks.values()), {k: v[:5] for k, v in leaks.items() if v}
    # The scans see the text: the markers of the chats, comments, corrections and dead letters are in the rows
    # read back and in the file's bytes (spaCy takes a few markers for names and scrubs them: over-scrubbing
    # fails closed), and the approved samples are in the snapshot's rows. Parquet pages are compressed, so
    # there only the rows read back are evidence; the byte scan of them finds no marker.
    assert markers["duckdb rows"] >= 0.95 * len(values) and markers["duckdb file"] >= 0.95 * len(values)
    assert markers["parquet rows"] >= CORRECTIONS
