"""The right to be forgotten: erase a user's rows, keep them out of future snapshots, and find what was
trained on them.

Deleting rows is not enough on its own: DuckDB leaves deleted values in the file's freed blocks, so the
caller compacts the database file afterwards (`infra.db.compact`). Snapshots that held the user's samples
lose their Parquet files (the manifest stays, for lineage); adapters trained on them, or descended from
one that was, are marked tainted: never promoted again, replaced by the next retrain.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation import audit
from ingest.contracts import FORGET_PREFIX

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection


@dataclass
class Forgotten:
    user_hash: str
    deleted: dict[str, int] = field(default_factory=dict)
    snapshots: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_hash": self.user_hash,
            "deleted": self.deleted,
            "snapshots": self.snapshots,
            "adapters": self.adapters,
        }


def base64_fragments(value: str) -> list[str]:
    """The parts of `value`'s URL-safe base64 encoding that do not depend on what precedes or follows it, for
    each of the three byte alignments it can have inside a longer encoded text (JSON quotes it: '"value"')."""
    out, quoted = [], f'"{value}"'.encode()
    for pad in range(3):
        encoded = base64.urlsafe_b64encode(b"\0" * pad + quoted).decode()
        # Only whole 3-byte groups inside the value encode the same whatever surrounds it.
        start, stop = 4 * -(-pad // 3), 4 * ((pad + len(quoted)) // 3)
        if stop - start >= 8:
            out.append(encoded[start:stop])
    return out


def user_hash(user_id: str) -> str:
    return hashlib.sha256(f"{FORGET_PREFIX}{user_id}".encode()).hexdigest()


EVENTS = "SELECT event_id FROM chats WHERE user_id = $u UNION ALL SELECT event_id FROM feedback WHERE user_id = $u"
DELETES = {
    "pii_findings": f"DELETE FROM pii_findings WHERE event_id IN ({EVENTS})",
    "reviews": "DELETE FROM reviews WHERE sample_id IN (SELECT sample_id FROM samples WHERE user_id = $u)",
    "samples": "DELETE FROM samples WHERE user_id = $u",
    "feedback": "DELETE FROM feedback WHERE user_id = $u",
    "chats": "DELETE FROM chats WHERE user_id = $u",
    # A malformed event's scrubbed excerpt may still carry the id.
    "dead_letters": "DELETE FROM dead_letters WHERE contains(excerpt, $u)",
}


def _snapshots_holding(con: DuckDBPyConnection, user_id: str) -> list[tuple[str, str]]:
    """(snapshot id, folder) of every snapshot that holds one of the user's samples."""
    sample_ids = {r[0] for r in con.execute("SELECT sample_id FROM samples WHERE user_id = ?", [user_id]).fetchall()}
    out = []
    for snapshot_id, manifest, path in con.execute(
        "SELECT snapshot_id, manifest, path FROM snapshots ORDER BY snapshot_id"
    ).fetchall():
        ids = json.loads(manifest).get("sample_ids", {})
        if sample_ids & (set(ids.get("train", [])) | set(ids.get("eval", []))):
            out.append((snapshot_id, path))
    return out


def _delete_rows(con: DuckDBPyConnection, user_id: str) -> dict[str, int]:
    deleted: dict[str, int] = {}
    for table, sql in DELETES.items():
        [(deleted[table],)] = con.execute(sql, {"u": user_id}).fetchall()  # DELETE answers its row count
    # ... or carry it only inside an encoded response id (base64 of [app, user, ...]): match each of the
    # three alignments the id can have in such an encoding.
    for fragment in base64_fragments(user_id):
        sql = "DELETE FROM dead_letters WHERE contains(excerpt, ?)"
        [(n,)] = con.execute(sql, [fragment]).fetchall()
        deleted["dead_letters"] += n
    return deleted


def forget(
    con: DuckDBPyConnection, user_id: str, actor: str, *, taint: Callable[[object, list[str]], list[str]]
) -> Forgotten:
    """Erase `user_id` in one transaction; returns what was deleted and what was trained on it.

    `taint(con, snapshot_ids)` flags the adapters trained on those snapshots, inside the same transaction,
    and returns them (the registry owns adapter rows: `retrain.registry.taint_trained_on`)."""
    if not user_id:  # any other id may be one an app sent (" " included): it is erased like any other
        raise ValueError("a user id is required")
    out = Forgotten(user_hash(user_id))
    con.execute("BEGIN TRANSACTION")
    try:
        snapshots = _snapshots_holding(con, user_id)
        out.snapshots = [s for s, _ in snapshots]
        out.deleted = _delete_rows(con, user_id)
        now = datetime.now(UTC)
        con.execute(
            "INSERT INTO forgotten_users VALUES (?, ?) ON CONFLICT (user_hash) DO UPDATE SET "
            "forgotten_at = excluded.forgotten_at",
            [out.user_hash, now],
        )
        if out.snapshots:
            con.execute(
                "UPDATE snapshots SET purged_at = ? WHERE snapshot_id IN (SELECT unnest(?::VARCHAR[]))",
                [now, out.snapshots],
            )
        out.adapters = taint(con, out.snapshots) if out.snapshots else []
        audit.append(con, actor, "forget", out.user_hash[:16], out.as_dict())
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    for _, path in snapshots:  # after the commit: the rows that point at them are already marked
        for name in ("train.parquet", "eval.parquet"):
            Path(path, name).unlink(missing_ok=True)
    return out
