"""Rated chats stored the way ingest stores them: real contracts, the real scrubber, the real sink."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ingest import sink
from ingest.batch import Record, prepare
from ingest.contracts import ChatLog, Feedback, Message

_offsets = itertools.count()
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _id(*parts) -> uuid.UUID:
    """Ids derived from the content: the same test data is the same data in every run (sample ids, order)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "\0".join(map(str, parts)))


def chat(user: str, question: str, answer: str, *, minutes: int = 0, system: str | None = None) -> ChatLog:
    messages = ([Message(role="system", content=system)] if system else []) + [Message(role="user", content=question)]
    key = _id(user, question, answer, minutes, system)
    return ChatLog(
        event_id=key,
        response_id=f"resp-{key.hex}",
        app_id="store",
        user_id=user,
        messages=messages,
        response=answer,
        variant="base",
        latency_ms=100.0,
        created_at=T0 + timedelta(minutes=minutes),
    )


def rate(c: ChatLog, rating: int, correction: str | None = None, *, minutes: int = 1, comment: str | None = None):
    return Feedback(
        event_id=_id(c.response_id, rating, correction, minutes, comment),
        response_id=c.response_id,
        app_id=c.app_id,
        user_id=c.user_id,
        rating=rating,
        correction=correction,
        comment=comment,
        created_at=c.created_at + timedelta(minutes=minutes),
    )


def store(con, events, scrub) -> None:
    """Write events as ingest does (prepare: parse + scrub; sink: one transaction)."""
    records = [
        Record("chats" if isinstance(e, ChatLog) else "feedback", 0, next(_offsets), e.model_dump_json().encode())
        for e in events
    ]
    sink.write(con, "test", None, prepare(records, {"chats": "chat", "feedback": "feedback"}, scrub, "test"))


@pytest.fixture
def put(db, scrub_pool):
    return lambda events: store(db, events, scrub_pool.scrub)
