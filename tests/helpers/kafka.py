"""Topics of their own on the session's bundled broker, and waiting for ingest to store all of them."""

from __future__ import annotations

import threading
import time
import uuid

from infra.config import load_config
from infra.kafka import client_settings, end_offsets, ensure_topics
from infra.services import build_ingest, run_ingest
from ingest import sink
from ingest.producer import EventProducer


def topic_config(broker, tmp_path, **extra):
    name = uuid.uuid4().hex[:8]
    overrides = [
        f"data_dir={tmp_path}",
        f"kafka.bootstrap_servers={broker.bootstrap}",
        f"kafka.chats_topic=chats-{name}",
        f"kafka.feedback_topic=feedback-{name}",
        f"ingest.group_id=ingest-{name}",
        "ingest.batch_max_ms=200",
        "ingest.pii.workers=0",
        "kafka.session_timeout_ms=6000",
    ] + [f"{k}={v}" for k, v in extra.items()]
    cfg = load_config(overrides=overrides, env={})
    ensure_topics(cfg.kafka, broker.bootstrap)
    return cfg, overrides


def process_env(overrides: list[str]) -> dict:
    """The environment of a `flywheel` subprocess that sees the same settings as `topic_config`'s overrides."""
    import os

    return {
        **os.environ,
        **{f"FLYWHEEL_{k.upper().replace('.', '__')}": v for k, v in (o.split("=", 1) for o in overrides)},
    }


def producer(cfg, broker):
    return EventProducer.connect(
        client_settings(cfg.kafka, broker.bootstrap), cfg.kafka.chats_topic, cfg.kafka.feedback_topic
    )


def stored_all(con, cfg, broker) -> bool:
    ends = {}
    for topic in (cfg.kafka.chats_topic, cfg.kafka.feedback_topic):
        ends |= {(topic, p): o for p, o in end_offsets(cfg.kafka, broker.bootstrap, topic).items()}
    stored = {k: v[0] for k, v in sink.stored_offsets(con, cfg.ingest.group_id).items()}
    return all(stored.get(k, 0) == v for k, v in ends.items()), stored, ends


def ingest_until_caught_up(cfg, broker, con, timeout=90):
    ingest = build_ingest(cfg, broker.bootstrap, con.cursor())
    stop = threading.Event()
    thread = threading.Thread(target=run_ingest, args=(ingest, stop.is_set))
    thread.start()
    reader = con.cursor()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            done, stored, ends = stored_all(reader, cfg, broker)
            if done:
                return stored, ends
            time.sleep(0.5)
        raise AssertionError(f"ingest did not catch up: stored {stored}, ends {ends}")
    finally:
        stop.set()
        thread.join(30)


def stored(server, response_ids: set[str], kinds=("chat", "feedback"), wait_s: float = 30) -> dict[str, list]:
    """The chat and feedback events in Kafka whose response id is one of `response_ids` (waits for each of
    `kinds`), and under "raw" their records' key + value bytes. `server` holds "kafka" (its KafkaConfig) and
    "broker"."""
    from kafka import KafkaConsumer

    from ingest.contracts import parse_event

    kafka, broker = server["kafka"], server["broker"]
    consumer = KafkaConsumer(
        kafka.chats_topic,
        kafka.feedback_topic,
        **client_settings(kafka, broker.bootstrap),
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=10_000,
    )
    seen: dict[str, list] = {"chat": [], "feedback": [], "raw": []}
    deadline = time.monotonic() + wait_s
    for record in consumer:
        kind = "chat" if record.topic == kafka.chats_topic else "feedback"
        event = parse_event(record.value, kind)
        if event.response_id in response_ids:
            seen[kind].append(event)
            seen["raw"].append(record.key + record.value)
        if all({e.response_id for e in seen[k]} == response_ids for k in kinds) or time.monotonic() > deadline:
            break
    consumer.close()
    return seen
