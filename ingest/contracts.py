"""Event contracts: what serving produces to Kafka and ingest accepts. Validated on both sides.

Every event carries a client-generated `event_id` (the idempotency key) and `schema_version`. Limits here
are the hard ceiling of what ingest stores; serving refuses larger requests earlier with 400/413.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION: Literal[1] = 1
BASE = "base"  # the variant that names the base model without an adapter (in events, routing and the registry)
MAX_MESSAGES = 64
MAX_FIELD_CHARS = 16_000
MAX_ID_CHARS = 128
MAX_EVENT_BYTES = 512 * 1024

# What scrubbing a text costs, in units of about 0.02 ms of Presidio on this machine: its characters, and 20
# per digit (phone, card and SSN recognizers on digit runs; 16,000 phone-shaped characters took 3.7 s where
# 16,000 of prose took 0.33 s). One text may cost MAX_TEXT_COST (under ~0.8 s): serving refuses more with
# 400 and ingest quarantines it unscrubbed-and-unstored, so no single text can stall ingest.
DIGIT_COST = 20
MAX_TEXT_COST = 40_000


def scrub_cost(text: str | None) -> int:
    if not text:
        return 0
    return len(text) + DIGIT_COST * sum(c.isdigit() for c in text)


# forgotten_users.user_hash = sha256(FORGET_PREFIX || user_id): ingest drops late copies of a forgotten user's
# events, curation and snapshots leave them out, forget writes it.
FORGET_PREFIX = "flywheel-forget:"

MAX_RESPONSE_ID_CHARS = 1024  # a signed response id carries app, user, variant and experiment ids
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
ResponseId = Annotated[str, Field(min_length=1, max_length=MAX_RESPONSE_ID_CHARS)]
Text = Annotated[str, Field(max_length=MAX_FIELD_CHARS)]


def _now() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(Contract):
    role: Literal["system", "user", "assistant", "tool"]
    content: Text


class _EventFields(Contract):
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: UUID = Field(default_factory=uuid4)  # client-generated idempotency key
    response_id: ResponseId
    app_id: Id
    user_id: Id  # pseudonymous; the Kafka key
    created_at: datetime = Field(default_factory=_now)


class ChatLog(_EventFields):
    """One answered chat request, as logged by serving."""

    kind: Literal["chat"] = "chat"
    conversation_id: Id | None = None
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    response: Text
    variant: Id  # adapter version that answered, or "base"
    experiment_id: Id | None = None
    latency_ms: float = Field(ge=0)
    # Tokens of this answer: the A/B latency guardrail compares time per answer token, so that a challenger
    # whose answers are longer (a new policy's text) is not called slow for it. None: not known (older logs).
    completion_tokens: int | None = Field(None, ge=0)


class Feedback(_EventFields):
    """A thumbs-up/down on one response, with an optional comment and corrected answer."""

    kind: Literal["feedback"] = "feedback"
    rating: Literal[1, -1]
    comment: Text | None = None
    correction: Text | None = None
    # When the rated answer was given (from its response id): a rating sent after its user was forgotten, on
    # an answer from before, must not bring the user back (ingest drops it).
    answered_at: datetime | None = None


Event = ChatLog | Feedback
KINDS: dict[str, type[ChatLog] | type[Feedback]] = {"chat": ChatLog, "feedback": Feedback}


def encode(event: Event) -> tuple[bytes, bytes]:
    """The Kafka (key, value) of an event: the pseudonymous user (per-user order) and the event's JSON."""
    return event.user_id.encode(), event.model_dump_json().encode()


class Rejected(Exception):
    """Why a Kafka value is not a valid event: the reason stored with its dead letter."""


def parse_event(value: bytes | None, expected_kind: str) -> Event:
    """Bytes from Kafka to a validated event, or `Rejected` with a short reason."""
    if value is None:
        raise Rejected("empty value")
    if len(value) > MAX_EVENT_BYTES:
        raise Rejected(f"oversize: {len(value)} bytes > {MAX_EVENT_BYTES}")
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        raise Rejected("not JSON") from None
    if not isinstance(data, dict):
        raise Rejected("not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise Rejected(f"unknown schema version {version!r}")
    data.setdefault("kind", expected_kind)
    model = KINDS.get(data["kind"]) if isinstance(data["kind"], str) else None
    if model is None or data["kind"] != expected_kind:
        raise Rejected(f"kind {data['kind']!r} on the {expected_kind} topic")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        raise Rejected(f"schema: {where}: {first['msg']}"[:300]) from None
