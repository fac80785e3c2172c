"""The adapter registry: immutable versions, their status, lineage, and which version was live when.

Statuses: candidate (passed the gates), rejected (failed a gate), failed (the run itself failed), canary
(in an A/B test), live, retired, rolled_back; `tainted` is a flag set by curation's forget (never promoted
again). Every status change is appended to `adapter_events`, which answers "which version served at T".
"""

from __future__ import annotations

import json
from datetime import datetime

from ingest.contracts import BASE

STATUSES = ("candidate", "rejected", "failed", "canary", "live", "retired", "rolled_back")


def next_version(con) -> str:
    """v0001, v0002, ...: never reused, failed runs included."""
    last = con.execute("SELECT max(CAST(substr(version, 2) AS INTEGER)) FROM adapters WHERE version LIKE 'v%'").fetchone()[0]
    return f"v{(last or 0) + 1:04d}"


def register(con, version: str, *, status: str, parent: str | None, base_model: str, base_hash: str | None,
             snapshot_id: str | None, path: str | None, metrics: dict, reason: str | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "INSERT INTO adapters (version, parent, status, base_model, base_hash, snapshot_id, path, metrics, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [version, parent, status, base_model, base_hash, snapshot_id, path, json.dumps(metrics), reason])
        con.execute("INSERT INTO adapter_events (version, status, reason) VALUES (?, ?, ?)", [version, status, reason])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def set_status(con, version: str, status: str, reason: str | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    con.execute("UPDATE adapters SET status = ?, reason = coalesce(?, reason) WHERE version = ?", [status, reason, version])
    con.execute("INSERT INTO adapter_events (version, status, reason) VALUES (?, ?, ?)", [version, status, reason])


def live(con) -> dict | None:
    """The adapter in production (None: the base model serves)."""
    row = con.execute("SELECT version, path, snapshot_id FROM adapters WHERE status = 'live' "
                      "ORDER BY version DESC LIMIT 1").fetchone()
    return None if row is None else {"version": row[0], "path": row[1], "snapshot_id": row[2]}


def get(con, version: str) -> dict | None:
    row = con.execute("SELECT version, parent, status, snapshot_id, path, metrics, reason, tainted FROM adapters "
                      "WHERE version = ?", [version]).fetchone()
    if row is None:
        return None
    return {"version": row[0], "parent": row[1], "status": row[2], "snapshot_id": row[3], "path": row[4],
            "metrics": json.loads(row[5] or "{}"), "reason": row[6], "tainted": row[7]}


def listing(con) -> list[tuple]:
    return con.execute(
        "SELECT version, parent, status, tainted, snapshot_id, strftime(created_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S'), "
        "coalesce(reason, '') FROM adapters ORDER BY version").fetchall()


def history(con) -> list[tuple]:
    """(UTC time, version, status, reason) of every change, oldest first."""
    return con.execute(
        "SELECT strftime(changed_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S.%f'), version, status, coalesce(reason, '') "
        "FROM adapter_events ORDER BY changed_at, rowid").fetchall()


def live_at(con, when: datetime) -> str:
    """The version that served at `when`: the last one made live at or before it and not since replaced
    (BASE when none was)."""
    row = con.execute(
        "SELECT version FROM adapter_events WHERE status = 'live' AND changed_at <= ? "
        "ORDER BY changed_at DESC, rowid DESC LIMIT 1", [when]).fetchone()
    if row is None:
        return BASE
    left = con.execute(
        "SELECT count(*) FROM adapter_events WHERE version = ? AND status <> 'live' AND changed_at > "
        "(SELECT max(changed_at) FROM adapter_events WHERE version = ? AND status = 'live') AND changed_at <= ?",
        [row[0], row[0], when]).fetchone()[0]
    return BASE if left else row[0]


def ancestors(con, version: str | None) -> list[dict]:
    """The version and its parents, newest first."""
    out = []
    while version:
        found = get(con, version)
        if found is None:
            break
        out.append(found)
        version = found["parent"]
    return out


def drop_files(con, version: str, reason: str) -> str | None:
    """Forget where a version's files are (they are being deleted); returns the path they had."""
    row = con.execute("SELECT path FROM adapters WHERE version = ?", [version]).fetchone()
    if row is None or row[0] is None:
        return None
    con.execute("UPDATE adapters SET path = NULL, reason = ? WHERE version = ?", [reason, version])
    return row[0]
