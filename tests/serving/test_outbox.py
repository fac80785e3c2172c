"""Broker down: chats keep answering, feedback is accepted, and the outbox drains after recovery."""

import time

from fastapi.testclient import TestClient
from kafka import KafkaConsumer, KafkaProducer

from infra.broker import EmbeddedBroker
from infra.config import KafkaConfig
from infra.kafka import client_settings, ensure_topics
from serving import ids
from serving.app import create_app
from serving.config import ServingConfig
from serving.outbox import PRODUCER_OPTIONS, Outbox, OutboxSender
from tests.conftest import tiny_generator

KEY = "k"


def test_broker_outage_loses_nothing(tiny_lm, tmp_path):
    from infra.broker import free_port

    kafka = KafkaConfig(port=free_port("127.0.0.1"), partitions=1)
    broker = EmbeddedBroker(kafka, tmp_path / "b1").start()
    tokenizer, gen = tiny_generator(tiny_lm)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    settings = client_settings(kafka, broker.bootstrap)
    sender = OutboxSender(outbox, lambda: KafkaProducer(**settings, **PRODUCER_OPTIONS)).start()
    app = create_app(ServingConfig(api_keys={"app": ids.hash_key(KEY)}, max_tokens=4), generator=gen,
                     tokenizer=tokenizer, outbox=outbox, chats_topic=kafka.chats_topic,
                     feedback_topic=kafka.feedback_topic, secret=b"s", route=lambda u: ("base", None),
                     variants=lambda: ["base"], ready=lambda: sender.healthy)
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        broker.stop()  # the in-memory broker and its topics are gone
        answered = []
        for i in range(5):
            r = client.post("/v1/chat/completions", headers=auth, json={
                "messages": [{"role": "user", "content": f"question {i}"}], "user": f"u{i}"})
            assert r.status_code == 200  # chats keep answering while Kafka is down
            answered.append(r.json()["id"])
        for rid in answered[:3]:
            assert client.post("/v1/feedback", headers=auth, json={"response_id": rid, "rating": "up"}).status_code == 202
        deadline = time.monotonic() + 60
        while sender.healthy and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outbox.size() == 8 and client.get("/readyz").status_code == 503

        broker = EmbeddedBroker(kafka, tmp_path / "b2").start()  # back, same address, empty
        ensure_topics(kafka, broker.bootstrap)
        deadline = time.monotonic() + 60
        while outbox.size() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert outbox.size() == 0 and client.get("/readyz").status_code == 200
        consumer = KafkaConsumer(kafka.chats_topic, kafka.feedback_topic, **settings, auto_offset_reset="earliest",
                                 consumer_timeout_ms=5000)
        values = [r.value for r in consumer]
        consumer.close()
        assert len(values) >= 8  # at least once to Kafka; ingest dedupes on event_id
        assert {v for v in values if b'"kind":"chat"' in v} and all(
            any(rid.encode() in v for v in values) for rid in answered)
    finally:
        sender.close(drain_s=0)
        gen.close()
        broker.stop()
