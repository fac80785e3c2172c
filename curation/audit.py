"""The append-only audit log: who did what to which samples, snapshots and users.

Every entry stores the hash of the one before it; `verify` recomputes the chain, so an edited, deleted or
reordered entry is found. A chain alone does not catch a rewrite that recomputes every hash after it, nor the
loss of the newest entries, so the head is anchored outside the database: `seal` signs (seq, hash) with a
key the database does not hold (the data dir's secret), the service writes it to a file after each change
and logs it, and `verify` checks the chain against an anchor (the file, or a head a reviewer kept). This
module only ever inserts into `audit_log`; no code path updates or deletes it (a test checks that).
Entries never hold a user id: forgetting a user must not need to edit it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

GENESIS = "0" * 64
_lock = threading.Lock()  # one appender at a time per process; the primary key guards across processes


def _digest(prev: str, seq: int, logged_us: int, actor: str, action: str, subject: str | None, details: object) -> str:
    body = json.dumps([seq, logged_us, actor, action, subject, details], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


def append(
    con: DuckDBPyConnection, actor: str, action: str, subject: str | None = None, details: dict[str, Any] | None = None
) -> int:
    """Add one entry inside the caller's transaction (or its own); returns its sequence number."""
    details = json.loads(json.dumps(details or {}, sort_keys=True))
    with _lock:
        last = con.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        logged_us = time.time_ns() // 1000
        digest = _digest(prev, seq, logged_us, actor, action, subject, details)
        con.execute(
            "INSERT INTO audit_log (seq, logged_at, actor, action, subject, details, prev_hash, hash) "
            "VALUES (?, make_timestamptz(?::BIGINT), ?, ?, ?, ?, ?, ?)",
            [seq, logged_us, actor, action, subject, json.dumps(details, sort_keys=True), prev, digest],
        )
    return seq


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    mac: str  # HMAC(key, "seq:hash"): only the key holder can write an anchor that verifies

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "mac": self.mac}


def _mac(key: bytes, seq: int, digest: str) -> str:
    return hmac.new(key, f"{seq}:{digest}".encode(), hashlib.sha256).hexdigest()


def seal(con: DuckDBPyConnection, key: bytes) -> Anchor | None:
    """The signed head of the chain (None while the log is empty)."""
    last = con.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return None if last is None else Anchor(last[0], last[1], _mac(key, last[0], last[1]))


@dataclass(frozen=True)
class Verdict:
    entries: int
    broken_at: int | None  # the first sequence number whose entry or link does not check out
    why: str | None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify(con: DuckDBPyConnection, anchor: Anchor | None = None, key: bytes | None = None) -> Verdict:
    """Recompute the hash chain from the first entry; with an `anchor`, the chain must hold its entry with its
    hash (a truncated log, or one rewritten and re-chained, does not), and with a `key` the anchor's MAC must
    verify (a forged anchor does not)."""
    verdict = _verify_chain(con)
    if anchor is None or not verdict.ok:
        return verdict
    if key is not None and not hmac.compare_digest(_mac(key, anchor.seq, anchor.hash), anchor.mac):
        return Verdict(
            verdict.entries,
            anchor.seq,
            "the anchor's signature does not verify: it was not written with this data dir's secret",
        )
    row = con.execute("SELECT hash FROM audit_log WHERE seq = ?", [anchor.seq]).fetchone()
    if row is None:
        return Verdict(
            verdict.entries, anchor.seq, f"the anchor names entry {anchor.seq}, which is missing: the log was truncated"
        )
    if row[0] != anchor.hash:
        return Verdict(
            verdict.entries,
            anchor.seq,
            f"entry {anchor.seq} differs from the anchor's hash: the log was rewritten up to it",
        )
    return verdict


def _verify_chain(con: DuckDBPyConnection) -> Verdict:
    rows = con.execute(
        "SELECT seq, epoch_us(logged_at), actor, action, subject, details, prev_hash, hash FROM audit_log ORDER BY seq"
    ).fetchall()
    prev, expected_seq = GENESIS, 1
    for seq, logged_us, actor, action, subject, details, prev_hash, digest in rows:
        if seq != expected_seq:
            return Verdict(len(rows), expected_seq, f"entry {expected_seq} is missing")
        if prev_hash != prev:
            return Verdict(len(rows), seq, "its link to the entry before does not match")
        if _digest(prev, seq, logged_us, actor, action, subject, json.loads(details)) != digest:
            return Verdict(len(rows), seq, "its content does not match its hash")
        prev, expected_seq = digest, seq + 1
    return Verdict(len(rows), None, None)


def entries(con: DuckDBPyConnection, limit: int = 50) -> list[dict[str, Any]]:
    """The latest entries, newest first."""
    rows = con.execute(
        "SELECT seq, strftime(logged_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S'), actor, action, subject, details "
        "FROM audit_log ORDER BY seq DESC LIMIT ?",
        [limit],
    ).fetchall()
    return [
        {
            "seq": r[0],
            "logged_at": r[1] + "Z",
            "actor": r[2],
            "action": r[3],
            "subject": r[4],
            "details": json.loads(r[5]),
        }
        for r in rows
    ]
