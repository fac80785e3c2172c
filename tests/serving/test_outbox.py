"""Broker down: chats keep answering, feedback is accepted, and the outbox drains after recovery."""

import time

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer

from infra.broker import EmbeddedBroker
from infra.config import KafkaConfig
from infra.kafka import client_settings, ensure_topics
from serving import ids
from serving.config import ServingConfig
from serving.outbox import Outbox, OutboxSender
from serving.relay import OutboxRelay
from tests.conftest import tiny_generator
from tests.helpers.api import make_app

KEY = "k"


@pytest.mark.slow
def test_broker_outage_loses_nothing(tiny_lm, tmp_path):
    from infra.broker import free_port

    kafka = KafkaConfig(port=free_port("127.0.0.1"), partitions=1)
    broker = EmbeddedBroker(kafka, tmp_path / "b1").start()
    tokenizer, gen = tiny_generator(tiny_lm)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    settings = client_settings(kafka, broker.bootstrap)
    sender = OutboxSender.to_kafka(outbox, settings, "no-ingest-here").start()
    app = make_app(
        ServingConfig(api_keys={"app": ids.hash_key(KEY)}, max_tokens=4),
        generator=gen,
        tokenizer=tokenizer,
        outbox=outbox,
        chats_topic=kafka.chats_topic,
        feedback_topic=kafka.feedback_topic,
        ready=lambda: sender.healthy,
    )
    client = TestClient(app, base_url="http://127.0.0.1")
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        broker.stop()  # the in-memory broker and its topics are gone
        answered = []
        for i in range(5):
            r = client.post(
                "/v1/chat/completions",
                headers=auth,
                json={"messages": [{"role": "user", "content": f"question {i}"}], "user": f"u{i}"},
            )
            assert r.status_code == 200  # chats keep answering while Kafka is down
            answered.append(r.json()["id"])
        for rid in answered[:3]:
            assert (
                client.post("/v1/feedback", headers=auth, json={"response_id": rid, "rating": "up"}).status_code == 202
            )
        deadline = time.monotonic() + 60
        while sender.healthy and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outbox.size() == 8 and client.get("/readyz").status_code == 503

        broker = EmbeddedBroker(kafka, tmp_path / "b2").start()  # back, same address, empty
        ensure_topics(kafka, broker.bootstrap)
        deadline = time.monotonic() + 60
        while outbox.unsent() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert outbox.unsent() == 0 and client.get("/readyz").status_code == 200
        assert outbox.size() == 8  # kept until ingest has stored them: no ingest runs in this test
        consumer = KafkaConsumer(
            kafka.chats_topic, kafka.feedback_topic, **settings, auto_offset_reset="earliest", consumer_timeout_ms=5000
        )
        values = [r.value for r in consumer]
        consumer.close()
        assert len(values) >= 8  # at least once to Kafka; ingest dedupes on event_id
        assert {v for v in values if b'"kind":"chat"' in v} and all(
            any(rid.encode() in v for v in values) for rid in answered
        )
    finally:
        sender.close(drain_s=0)
        gen.close()
        broker.stop()


def _commit(settings: dict, group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Commit offsets for `group` as ingest does after its DuckDB transaction."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(**settings, group_id=group, enable_auto_commit=False)
    try:
        consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()})
    finally:
        consumer.close()


def _wait(condition, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_rows_wait_for_ingest_and_go_again_to_a_new_broker(tmp_path):
    """A row leaves the outbox only once the ingest group has committed past it; a broker that loses its log
    (a new bundled broker, a new cluster id) is sent every row ingest had not stored, and nothing else."""
    from infra.broker import free_port

    kafka = KafkaConfig(port=free_port("127.0.0.1"), partitions=1)
    broker = EmbeddedBroker(kafka, tmp_path / "b1").start()
    settings = client_settings(kafka, broker.bootstrap)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.append_many([(kafka.chats_topic, b"u", b"event-%d" % i) for i in range(10)])
    sender = OutboxSender.to_kafka(outbox, settings, "ingest").start()
    try:
        _wait(lambda: outbox.unsent() == 0)
        time.sleep(3 * OutboxSender.CONFIRM_EVERY_S)
        assert outbox.size() == 10  # in Kafka, not yet stored by ingest: kept
        _commit(settings, "ingest", {(kafka.chats_topic, 0): 6})  # ingest stored offsets 0..5
        _wait(lambda: outbox.size() == 4)

        broker.stop()  # its log (and the group's offsets) die with it
        broker = EmbeddedBroker(kafka, tmp_path / "b2").start()
        _wait(lambda: outbox.size() == 4 and outbox.unsent() == 0 and _values(settings, kafka) == 4)
        assert sorted(_read(settings, kafka)) == [b"event-%d" % i for i in range(6, 10)]
        _commit(settings, "ingest", {(kafka.chats_topic, 0): 4})
        _wait(lambda: outbox.size() == 0)
    finally:
        sender.close(drain_s=0)
        outbox.close()
        broker.stop()


@pytest.mark.slow
def test_settle_waits_for_rows_a_broker_acknowledged_and_then_lost(tmp_path):
    """A row Kafka acknowledged counts as sent (`drain` is done with it); if that broker died before ingest
    stored it, `settle` (what `flywheel up` waits on when it stops) waits until it went again and was stored."""
    from infra.broker import free_port

    kafka = KafkaConfig(port=free_port("127.0.0.1"), partitions=1)
    broker = EmbeddedBroker(kafka, tmp_path / "b").start()
    settings = client_settings(kafka, broker.bootstrap)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.append_many([(kafka.chats_topic, b"u", b"event-%d" % i) for i in range(3)])
    outbox.mark_sent("a-cluster-that-is-gone", [(seq, 0, seq - 1) for seq in (1, 2, 3)])
    outbox.close()
    relay = OutboxRelay(tmp_path / "outbox.sqlite", settings, "ingest")
    try:
        assert not relay.settle(2)  # in no live broker's log, stored by no one: not settled
        _wait(lambda: _values(settings, kafka) == 3)  # the relay sent them to the live broker
        assert relay.drain(0) and not relay.settle(1)  # sent, not yet stored
        _commit(settings, "ingest", {(kafka.chats_topic, 0): 3})
        assert relay.settle(60)
    finally:
        relay.close(drain_s=0)
        broker.stop()


def _read(settings: dict, kafka: KafkaConfig) -> list[bytes]:
    consumer = KafkaConsumer(kafka.chats_topic, **settings, auto_offset_reset="earliest", consumer_timeout_ms=2000)
    try:
        return [r.value for r in consumer]
    finally:
        consumer.close()


def _values(settings: dict, kafka: KafkaConfig) -> int:
    return len(_read(settings, kafka))


def test_a_row_kafka_refuses_for_good_is_set_aside_and_the_rest_flows(tmp_path):
    from infra.broker import free_port

    kafka = KafkaConfig(port=free_port("127.0.0.1"), partitions=1)
    broker = EmbeddedBroker(kafka, tmp_path / "b").start()
    settings = client_settings(kafka, broker.bootstrap)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.append_many(
        [
            (kafka.chats_topic, b"u", b"before"),
            (kafka.chats_topic, b"u", b"x" * 2_000_000),
            ("not a topic!", b"u", b"bad topic"),
            (kafka.chats_topic, b"u", b"after"),
        ]
    )
    sender = OutboxSender.to_kafka(outbox, settings, "ingest").start()
    try:
        _wait(lambda: outbox.unsent() == 0)
        assert sorted(_read(settings, kafka)) == [b"after", b"before"]
        assert outbox.rejected() == 2 and sender.rejected == 2 and outbox.size() == 2
        reasons = sorted(r for (r,) in outbox._db.execute("SELECT reason FROM outbox_rejected"))
        assert reasons[0].startswith("MessageSizeTooLargeError") and "illegal" in reasons[1]
    finally:
        sender.close(drain_s=0)
        outbox.close()
        broker.stop()


def test_no_raw_copy_stays_in_the_file_once_ingest_has_stored_it(tmp_path):
    """secure_delete overwrites the rows, the WAL is truncated after each deletion; the files are 0600."""
    from infra.broker import free_port

    kafka = KafkaConfig(port=free_port("127.0.0.1"), partitions=1)
    broker = EmbeddedBroker(kafka, tmp_path / "b").start()
    settings = client_settings(kafka, broker.bootstrap)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    canary = b"canary-maria.gonzalez@example.com"
    for i in range(50):  # 50 transactions: 50 copies in the WAL before the fix
        outbox.append_many([(kafka.chats_topic, b"u", canary + b" %d" % i)])
    sender = OutboxSender.to_kafka(outbox, settings, "ingest").start()
    try:
        _wait(lambda: outbox.unsent() == 0)
        _commit(settings, "ingest", {(kafka.chats_topic, 0): 50})
        _wait(lambda: outbox.size() == 0)
        sender.close(drain_s=0)
        files = sorted(tmp_path.glob("outbox.sqlite*"))
        assert files and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
        assert not any(canary in f.read_bytes() for f in files)
    finally:
        sender.close(drain_s=0)
        outbox.close()
        broker.stop()
