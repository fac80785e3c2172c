"""Producing events with the contracts: key = user_id (per-user order), value = the event's JSON."""

from __future__ import annotations

from typing import Any

from ingest.contracts import ChatLog, Event, encode


class EventProducer:
    """Thin wrapper over a KafkaProducer (acks=all) that routes each event kind to its topic."""

    def __init__(self, producer: Any, chats_topic: str, feedback_topic: str):
        self.producer = producer
        self.topics = {"chat": chats_topic, "feedback": feedback_topic}

    @classmethod
    def connect(cls, settings: dict[str, Any], chats_topic: str, feedback_topic: str, **options: Any) -> EventProducer:
        from kafka import KafkaProducer

        options = {"acks": "all", "linger_ms": 5, **options}
        return cls(KafkaProducer(**settings, **options), chats_topic, feedback_topic)

    def send(self, event: Event) -> Any:
        """Returns the send future; `.get(timeout)` blocks until the broker acknowledged it."""
        topic = self.topics["chat" if isinstance(event, ChatLog) else "feedback"]
        key, value = encode(event)
        return self.producer.send(topic, key=key, value=value)

    def send_raw(self, topic: str, key: bytes | None, value: bytes) -> Any:
        return self.producer.send(topic, key=key, value=value)

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout)

    def close(self) -> None:
        self.producer.close()
