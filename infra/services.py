"""Wiring: turns the config into the long-running parts (`flywheel up`, `flywheel ingest`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import duckdb

from infra.config import Config

log = logging.getLogger(__name__)


def build_ingest(cfg: Config, bootstrap: str, con: duckdb.DuckDBPyConnection, registry=None):
    """An IngestConsumer with its Kafka consumer and scrub workers (the workers start here)."""
    from kafka import KafkaConsumer

    from infra.kafka import client_settings, consumer_settings
    from ingest.consumer import IngestConsumer
    from ingest.scrub import ScrubPool

    consumer = KafkaConsumer(
        **client_settings(cfg.kafka, bootstrap), **consumer_settings(cfg.kafka), group_id=cfg.ingest.group_id,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    return IngestConsumer(
        consumer, con, ScrubPool(cfg.ingest.pii),
        kind_of_topic={cfg.kafka.chats_topic: "chat", cfg.kafka.feedback_topic: "feedback"},
        group_id=cfg.ingest.group_id, batch_max_events=cfg.ingest.batch_max_events,
        batch_max_ms=cfg.ingest.batch_max_ms, registry=registry,
    )


def run_ingest(ingest, should_stop: Callable[[], bool]) -> None:
    try:
        ingest.run(should_stop)
    finally:
        ingest.consumer.close()
        ingest.scrubber.close()


def start_ingest_thread(ingest, stop: threading.Event) -> threading.Thread:
    """Ingest in a thread of this process (DuckDB has one writer process: this one)."""

    def target():
        try:
            run_ingest(ingest, stop.is_set)
        except Exception:
            log.exception("ingest stopped on an error; stopping flywheel")
            stop.set()

    thread = threading.Thread(target=target, name="ingest", daemon=True)
    thread.start()
    return thread


def produce_synthetic(cfg: Config, bootstrap: str, n: int, seed: int = 0, malformed: int = 0) -> int:
    """Produce n synthetic store-support events (chats and feedback) and `malformed` broken ones."""
    from infra.kafka import client_settings
    from ingest.producer import EventProducer
    from ingest.synthetic import events

    producer = EventProducer.connect(client_settings(cfg.kafka, bootstrap), cfg.kafka.chats_topic,
                                     cfg.kafka.feedback_topic)
    try:
        for event in events(n, seed=seed):
            producer.send(event)
        for i in range(malformed):
            producer.send_raw(cfg.kafka.chats_topic, b"simulated", b'{"schema_version": 1, "broken": ' + str(i).encode())
        producer.flush(timeout=cfg.kafka.connect_timeout_s * 3)
    finally:
        producer.close()
    return n + malformed
