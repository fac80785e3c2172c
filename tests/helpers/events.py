"""Rated chats stored the way ingest stores them: real contracts, the real scrubber, the real sink."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

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


QUESTIONS = [
    "Where is my order? It was due on Tuesday.",
    "Can I return a jacket that does not fit?",
    "What warranty do the headphones have?",
    "How long does shipping to Canada take?",
    "Do you ship on weekends?",
    "Can I pay with PayPal?",
]


ANSWERS = [
    "Your order left the warehouse yesterday.",
    "Yes, unworn items can be returned within 30 days.",
    "Headphones have a one-year limited warranty.",
    "Shipping to Canada takes 5 to 8 business days.",
    "We ship Monday to Saturday.",
    "We accept cards and PayPal at checkout.",
]


def population(users: int = 60, per_user: int = 3):
    """Rated chats from many users: up, down, and down with a correction, in turn."""
    events = []
    for u in range(users):
        for k in range(per_user):
            i = (u + k) % len(QUESTIONS)
            c = chat(
                f"user-{u:03d}", f"{QUESTIONS[i]} (ticket {u}-{k})", f"{ANSWERS[i]} Ref {u}-{k}.", minutes=u * 10 + k
            )
            kind = (u + k) % 3
            events += [
                c,
                rate(c, 1) if kind == 0 else rate(c, -1, f"Corrected for {u}-{k}: {ANSWERS[i]}" if kind == 2 else None),
            ]
    return events


def more_ratings(users: range):
    events = []
    for u in users:
        # Answers differ (a tracking reference each): identical ones would meet the per-answer cap.
        c = chat(f"user-{u:03d}", f"Is order {u:06d} on its way?", f"It left the warehouse today, tracking {u:06d}.")
        events += [c, rate(c, 1)]
    return events
