"""DuckDB sink: one transaction writes a prepared batch and the next offset of every partition in it.

Rows go in through Arrow (DuckDB's executemany is slow). Inserts are idempotent on event_id via the primary
key; `RETURNING` tells which events are new, so findings of a re-sent event are not stored twice. A rating
sent again (same id: up, down, up) only moves its stored time forward, so the latest rating wins.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import duckdb
import pyarrow as pa

from ingest.batch import Prepared, Row

CHAT_COLUMNS = (
    "event_id",
    "schema_version",
    "response_id",
    "app_id",
    "user_id",
    "conversation_id",
    "messages",
    "response",
    "variant",
    "experiment_id",
    "latency_ms",
    "completion_tokens",
    "created_at",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)
FEEDBACK_COLUMNS = (
    "event_id",
    "schema_version",
    "response_id",
    "app_id",
    "user_id",
    "rating",
    "comment",
    "correction",
    "created_at",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)
FINDING_COLUMNS = ("event_id", "field", "entity_type", "start_pos", "end_pos", "score", "scrubber_version")
DEAD_COLUMNS = ("topic", "partition", "offset", "reason", "length", "sha256", "excerpt")
QUARANTINE_COLUMNS = ("topic", "partition", "offset", "event_id", "reason", "length", "sha256")


@dataclass(frozen=True)
class Written:
    chats: int
    feedback: int
    duplicates: int
    dead_letters: int
    quarantined: int
    findings: int
    erased: int = 0  # late events of forgotten users, dropped


def _insert(
    con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...], rows: list[Row], suffix: str = ""
) -> list[tuple[Any, ...]]:
    if not rows:
        return []
    arrow = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
    con.register("_batch", arrow)
    try:
        cols = ", ".join(f'"{c}"' for c in columns)
        inserted: list[tuple[Any, ...]] = con.execute(
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _batch {suffix}"
        ).fetchall()
        return inserted
    finally:
        con.unregister("_batch")


def _refresh_feedback_times(con: duckdb.DuckDBPyConnection, rows: list[Row]) -> None:
    """A rating's id comes from what it says, so up, down, up again repeats the first id: the stored copy
    takes the later time (never an earlier one: a re-sent old event changes nothing) and the latest rating
    wins in `latest_feedback`."""
    if not rows:
        return
    con.register(
        "_times", pa.Table.from_pylist([{"event_id": r["event_id"], "created_at": r["created_at"]} for r in rows])
    )
    try:
        con.execute(
            "UPDATE feedback SET created_at = t.created_at FROM _times t "
            "WHERE feedback.event_id = t.event_id AND t.created_at > feedback.created_at"
        )
    finally:
        con.unregister("_times")


def stored_offsets(con: duckdb.DuckDBPyConnection, group: str) -> dict[tuple[str, int], tuple[int, str | None]]:
    rows = con.execute(
        "SELECT topic, partition, next_offset, cluster_id FROM kafka_offsets WHERE consumer_group = ?", [group]
    ).fetchall()
    return {(t, p): (o, c) for t, p, o, c in rows}


def _forgotten(con: duckdb.DuckDBPyConnection, rows: list[Row]) -> set[str]:
    """Event ids among `rows` of users forgotten after the event was made: late copies of erased data (an
    outbox re-sent to a new broker, a slow producer) must not bring it back."""
    if not rows:
        return set()
    # A rating counts from when its answer was given: sent after the forget, on an answer from before, it
    # would bring the user back.
    con.register(
        "_who",
        pa.Table.from_pylist(
            [
                {
                    "event_id": r["event_id"],
                    "user_id": r["user_id"],
                    "created_at": r.get("answered_at") or r["created_at"],
                }
                for r in rows
            ]
        ),
    )
    try:
        return {
            r[0] for r in con.execute("SELECT event_id FROM _who WHERE forgotten_after(user_id, created_at)").fetchall()
        }
    finally:
        con.unregister("_who")


def write(con: duckdb.DuckDBPyConnection, group: str, cluster_id: str | None, batch: Prepared) -> Written:
    con.execute("BEGIN TRANSACTION")
    try:
        erased = _forgotten(con, batch.chats + batch.feedback)
        if erased:
            batch = replace(
                batch,
                chats=[r for r in batch.chats if r["event_id"] not in erased],
                feedback=[r for r in batch.feedback if r["event_id"] not in erased],
                findings=[f for f in batch.findings if f["event_id"] not in erased],
            )
        new_chats = _insert(con, "chats", CHAT_COLUMNS, batch.chats, "ON CONFLICT DO NOTHING RETURNING event_id")
        _refresh_feedback_times(con, batch.feedback)
        new_fb = _insert(con, "feedback", FEEDBACK_COLUMNS, batch.feedback, "ON CONFLICT DO NOTHING RETURNING event_id")
        new_ids = {str(r[0]) for r in new_chats + new_fb}
        findings = [f for f in batch.findings if f["event_id"] in new_ids]
        _insert(con, "pii_findings", FINDING_COLUMNS, findings)
        dead = _insert(con, "dead_letters", DEAD_COLUMNS, batch.dead_letters, "ON CONFLICT DO NOTHING RETURNING 1")
        quarantined = _insert(
            con, "quarantine", QUARANTINE_COLUMNS, batch.quarantine, "ON CONFLICT DO NOTHING RETURNING 1"
        )
        if batch.next_offsets:
            con.executemany(
                "INSERT INTO kafka_offsets (consumer_group, topic, partition, next_offset, cluster_id) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
                "next_offset = excluded.next_offset, cluster_id = excluded.cluster_id, updated_at = now()",
                [[group, t, p, o, cluster_id] for (t, p), o in batch.next_offsets.items()],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    offered = len(batch.chats) + len(batch.feedback)
    return Written(
        chats=len(new_chats),
        feedback=len(new_fb),
        duplicates=batch.duplicates + offered - len(new_ids),
        dead_letters=len(dead),
        quarantined=len(quarantined),
        findings=len(findings),
        erased=len(erased),
    )
