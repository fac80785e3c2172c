"""From Kafka records to rows: parse, dedupe, scrub. Pure apart from the scrub function it is given.

Every record ends in exactly one place: a chat or feedback row, a dead letter (could not be parsed), a
quarantine entry (could not be scrubbed), or counted as a duplicate of an event earlier in the batch.
Unscrubbed text never reaches a row: an event whose scrubbing fails keeps only hashes and metadata.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from ingest.contracts import MAX_TEXT_COST, ChatLog, Event, Rejected, parse_event, scrub_cost
from ingest.scrub import Scrubbed, ScrubFailed

EXCERPT_CHARS = 200
# A dead letter's excerpt is cut from its scrubbed text, never before scrubbing (a value split by the cut
# would not be recognised: "4111 1111 1111 " survives). Longer values get no excerpt: scrubbing one costs
# ~0.2 s per 16 kB of Presidio on this machine, and their reason, length and hash stay.
EXCERPT_SCRUB_MAX = 16_384
ScrubFn = Callable[[list[str]], list[Scrubbed]]
Row = dict[str, Any]  # one row of a table, by column name


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class Prepared:
    chats: list[Row] = field(default_factory=list)
    feedback: list[Row] = field(default_factory=list)
    findings: list[Row] = field(default_factory=list)
    dead_letters: list[Row] = field(default_factory=list)
    quarantine: list[Row] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    duplicates: int = 0


def sha256(value: bytes | None) -> str:
    return hashlib.sha256(value or b"").hexdigest()


def text_fields(event: Event) -> list[tuple[str, str]]:
    """(field name, text) for every free-text field of an event, in a fixed order."""
    if isinstance(event, ChatLog):
        fields = [(f"messages[{i}].content", m.content) for i, m in enumerate(event.messages)]
        return fields + [("response", event.response)]
    return [(name, text) for name, text in (("comment", event.comment), ("correction", event.correction)) if text]


def _row(event: Event, record: Record, scrubbed: dict[str, str]) -> Row:
    base = {
        "event_id": str(event.event_id),
        "schema_version": event.schema_version,
        "response_id": event.response_id,
        "app_id": event.app_id,
        "user_id": event.user_id,
        "created_at": event.created_at,
        "kafka_topic": record.topic,
        "kafka_partition": record.partition,
        "kafka_offset": record.offset,
    }
    if isinstance(event, ChatLog):
        messages = [
            {"role": m.role, "content": scrubbed[f"messages[{i}].content"]} for i, m in enumerate(event.messages)
        ]
        return base | {
            "conversation_id": event.conversation_id,
            "messages": messages,
            "response": scrubbed["response"],
            "variant": event.variant,
            "experiment_id": event.experiment_id,
            "latency_ms": event.latency_ms,
            "completion_tokens": event.completion_tokens,
        }
    return base | {
        "rating": event.rating,
        "comment": scrubbed.get("comment"),
        "correction": scrubbed.get("correction"),
        "answered_at": event.answered_at,
    }  # not stored: ingest's forgotten-user check reads it


def _scrub_each(scrub: ScrubFn, groups: list[list[str]]) -> list[list[Scrubbed] | str]:
    """Scrub groups of texts in one call; if that fails, group by group. A failed group gives its reason."""
    flat = [t for g in groups for t in g]
    try:
        done = scrub(flat)
    except ScrubFailed:
        out: list[list[Scrubbed] | str] = []
        for g in groups:
            try:
                out.append(scrub(g))
            except ScrubFailed as e:
                out.append(f"scrubbing failed: {e}")
        return out
    out, i = [], 0
    for g in groups:
        out.append(done[i : i + len(g)])
        i += len(g)
    return out


def _parse(
    records: Sequence[Record], kind_of_topic: dict[str, str], out: Prepared
) -> tuple[list[tuple[Event, Record]], list[tuple[Record, str]]]:
    """Valid, first-seen events and (record, reason) of the invalid ones; offsets, duplicates and texts too
    costly to scrub are counted into `out`."""
    events: list[tuple[Event, Record]] = []
    seen: dict[UUID, int] = {}  # event_id -> index in `events`
    rejects: list[tuple[Record, str]] = []
    for rec in records:
        key = (rec.topic, rec.partition)
        out.next_offsets[key] = max(out.next_offsets.get(key, 0), rec.offset + 1)
        try:
            event = parse_event(rec.value, kind_of_topic[rec.topic])
        except Rejected as e:
            rejects.append((rec, str(e)))
            continue
        if event.event_id in seen:
            out.duplicates += 1
            # The same rating sent again later (up, down, up): the copy kept carries the latest time, so the
            # latest rating wins in `latest_feedback`.
            i = seen[event.event_id]
            if event.created_at > events[i][0].created_at:
                events[i] = (events[i][0].model_copy(update={"created_at": event.created_at}), events[i][1])
            continue
        costly = max((scrub_cost(t) for _, t in text_fields(event)), default=0)
        if costly > MAX_TEXT_COST:  # would stall every tenant's ingest for seconds: never scrubbed, never stored
            reason = f"a text costs {costly} to scrub: at most {MAX_TEXT_COST}"
            out.quarantine.append(_meta(rec, reason) | {"event_id": str(event.event_id)})
            continue
        seen[event.event_id] = len(events)
        events.append((event, rec))
    return events, rejects


def _findings(event: Event, name: str, scrubbed: Scrubbed, version: str) -> list[Row]:
    return [
        {
            "event_id": str(event.event_id),
            "field": name,
            "entity_type": f.entity_type,
            "start_pos": f.start,
            "end_pos": f.end,
            "score": f.score,
            "scrubber_version": version,
        }
        for f in scrubbed.findings
    ]


def prepare(
    records: Sequence[Record], kind_of_topic: dict[str, str], scrub: ScrubFn, scrubber_version: str
) -> Prepared:
    out = Prepared()
    events, rejects = _parse(records, kind_of_topic, out)
    fields = [text_fields(e) for e, _ in events]
    small = [len(rec.value or b"") <= EXCERPT_SCRUB_MAX for rec, _ in rejects]
    excerpts = [(rec.value or b"").decode("utf-8", "replace") for (rec, _), ok in zip(rejects, small) if ok]
    results = _scrub_each(scrub, [[t for _, t in f] for f in fields] + [[x] for x in excerpts])

    for (event, rec), names, result in zip(events, fields, results):
        if isinstance(result, str):
            out.quarantine.append(_meta(rec, result) | {"event_id": str(event.event_id)})
            continue
        scrubbed = {}
        for (name, _), s in zip(names, result):
            scrubbed[name] = s.text
            out.findings += _findings(event, name, s, scrubber_version)
        (out.chats if isinstance(event, ChatLog) else out.feedback).append(_row(event, rec, scrubbed))

    excerpt_results = iter(results[len(events) :])
    for (rec, reason), fits in zip(rejects, small):
        result = next(excerpt_results) if fits else "too long to scrub for an excerpt"
        excerpt = None if isinstance(result, str) else result[0].text[:EXCERPT_CHARS]
        out.dead_letters.append(_meta(rec, reason) | {"excerpt": excerpt})
    return out


def _meta(rec: Record, reason: str) -> Row:
    return {
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "reason": reason,
        "length": len(rec.value or b""),
        "sha256": sha256(rec.value),
    }
