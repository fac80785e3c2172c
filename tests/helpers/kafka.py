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
