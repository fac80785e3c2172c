"""The adapter registry: immutable versions, their status, lineage, and which version was live when.

Statuses: candidate (passed the gates), rejected (failed a gate), failed (the run itself failed), canary
(in an A/B test), live, retired, rolled_back; `tainted` is a flag (trained on a forgotten user's data: never
promoted again), set by `taint` when a forget finds the version in a user's lineage. Every status change and
every taint is appended to `adapter_events`, which answers "which version served at T". This module is the
only writer of `adapters` and `adapter_events`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from ingest.contracts import BASE

STATUSES = ("candidate", "rejected", "failed", "canary", "live", "retired", "rolled_back")
TAINTED = "tainted"  # an adapter_events row that flags a version: its status (what serves) is unchanged
MANIFEST = "flywheel-adapter.json"


def next_version(con) -> str:
    """v0001, v0002, ...: never reused, failed runs included."""
    last = con.execute(
        "SELECT max(CAST(substr(version, 2) AS INTEGER)) FROM adapters WHERE version LIKE 'v%'"
    ).fetchone()[0]
    return f"v{(last or 0) + 1:04d}"


def register(
    con,
    version: str,
    *,
    status: str,
    parent: str | None,
    base_model: str,
    base_hash: str | None,
    snapshot_id: str | None,
    path: str | None,
    metrics: dict,
    reason: str | None = None,
) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "INSERT INTO adapters (version, parent, status, base_model, base_hash, snapshot_id, path, metrics, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [version, parent, status, base_model, base_hash, snapshot_id, path, json.dumps(metrics), reason],
        )
        con.execute("INSERT INTO adapter_events (version, status, reason) VALUES (?, ?, ?)", [version, status, reason])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def set_status(con, version: str, status: str, reason: str | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    con.execute(
        "UPDATE adapters SET status = ?, reason = coalesce(?, reason) WHERE version = ?", [status, reason, version]
    )
    con.execute("INSERT INTO adapter_events (version, status, reason) VALUES (?, ?, ?)", [version, status, reason])


def live(con) -> dict | None:
    """The adapter in production (None: the base model serves)."""
    row = con.execute(
        "SELECT version, path, snapshot_id FROM adapters WHERE status = 'live' ORDER BY version DESC LIMIT 1"
    ).fetchone()
    return None if row is None else {"version": row[0], "path": row[1], "snapshot_id": row[2]}


def get(con, version: str) -> dict | None:
    row = con.execute(
        "SELECT version, parent, status, snapshot_id, path, metrics, reason, tainted FROM adapters WHERE version = ?",
        [version],
    ).fetchone()
    if row is None:
        return None
    return {
        "version": row[0],
        "parent": row[1],
        "status": row[2],
        "snapshot_id": row[3],
        "path": row[4],
        "metrics": json.loads(row[5] or "{}"),
        "reason": row[6],
        "tainted": row[7],
    }


def listing(con) -> list[tuple]:
    return con.execute(
        "SELECT version, parent, status, tainted, snapshot_id, "
        "strftime(created_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S'), "
        "coalesce(reason, '') FROM adapters ORDER BY version"
    ).fetchall()


def history(con) -> list[tuple]:
    """(UTC time, version, status, reason) of every change, oldest first."""
    return con.execute(
        "SELECT strftime(changed_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S.%f'), version, status, coalesce(reason, '') "
        "FROM adapter_events ORDER BY changed_at, rowid"
    ).fetchall()


def lineage_rows(con) -> list[dict]:
    """Every version with its parent, snapshot, status and what the gates said, newest first."""
    rows = con.execute(
        "SELECT version, parent, snapshot_id, status, tainted, reason, metrics->'offline', "
        "strftime(created_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S') FROM adapters ORDER BY version DESC"
    ).fetchall()
    out = []
    for version, parent, snapshot_id, status, tainted, reason, offline, created in rows:
        offline = json.loads(offline) if offline else {}
        out.append(
            {
                "version": version,
                "parent": parent or BASE,
                "snapshot_id": snapshot_id,
                "status": status,
                "tainted": tainted,
                "created": created,
                "gates": reason or offline.get("reason") or ("passed" if offline.get("ok") else "-"),
            }
        )
    return out


def live_at(con, when: datetime) -> str:
    """The version that served at `when`: the last one made live at or before it and not since replaced
    (BASE when none was)."""
    row = con.execute(
        "SELECT version FROM adapter_events WHERE status = 'live' AND changed_at <= ? "
        "ORDER BY changed_at DESC, rowid DESC LIMIT 1",
        [when],
    ).fetchone()
    if row is None:
        return BASE
    left = con.execute(  # a taint is no change of status: the version served on until it was replaced
        f"SELECT count(*) FROM adapter_events WHERE version = ? AND status NOT IN ('live', '{TAINTED}') "
        "AND changed_at > "
        "(SELECT max(changed_at) FROM adapter_events WHERE version = ? AND status = 'live') AND changed_at <= ?",
        [row[0], row[0], when],
    ).fetchone()[0]
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


def taint(con, versions: list[str], reason: str) -> None:
    """Flag `versions` as trained on a forgotten user's data (inside the caller's transaction)."""
    if not versions:
        return
    con.execute("UPDATE adapters SET tainted = true WHERE version IN (SELECT unnest(?::VARCHAR[]))", [versions])
    con.executemany(
        "INSERT INTO adapter_events (version, status, reason) VALUES (?, ?, ?)",
        [[v, TAINTED, reason] for v in versions],
    )


def trained_on(con, snapshot_ids: list[str]) -> list[str]:
    """The versions trained on any of `snapshot_ids`, and every descendant of one (training is incremental)."""
    adapters = con.execute("SELECT version, parent, snapshot_id FROM adapters ORDER BY version").fetchall()
    found = {v for v, _, snap in adapters if snap in set(snapshot_ids)}
    grew = True
    while grew:
        more = {v for v, parent, _ in adapters if parent in found and v not in found}
        found |= more
        grew = bool(more)
    return sorted(found)


def taint_trained_on(con, snapshot_ids: list[str]) -> list[str]:
    """`taint` every version trained on `snapshot_ids` (curation's forget calls it); returns them."""
    versions = trained_on(con, snapshot_ids)
    taint(con, versions, "trained on data of a forgotten user")
    return versions


def paths(con) -> dict[str, str]:
    """Version -> adapter folder, for every version whose files exist."""
    return dict(con.execute("SELECT version, path FROM adapters WHERE path IS NOT NULL").fetchall())


def trained_sample_ids(con) -> set[str]:
    """Every sample some earlier run trained on (whether or not it passed its gates), from the manifests."""
    return _manifest_sample_ids(paths(con).values())


def learned_sample_ids(lineage: list[dict]) -> set[str]:
    """What these versions (a parent and its ancestors) trained on, from their manifests."""
    return _manifest_sample_ids(version["path"] for version in lineage)


def _manifest_sample_ids(folders) -> set[str]:
    seen: set[str] = set()
    for folder in folders:
        manifest = Path(folder or "", MANIFEST)
        if folder and manifest.exists():
            seen |= set(json.loads(manifest.read_text()).get("sample_ids", []))
    return seen


def newest_candidate(con) -> str | None:
    """The newest untainted candidate (what an A/B test starts with)."""
    row = con.execute(
        "SELECT version FROM adapters WHERE status = 'candidate' AND NOT tainted ORDER BY version DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def unserved_tainted(con) -> list[str]:
    """Tainted versions that still have files and neither serve nor are in an experiment."""
    return [
        v
        for (v,) in con.execute(
            "SELECT version FROM adapters WHERE tainted AND path IS NOT NULL "
            "AND status NOT IN ('live', 'canary') ORDER BY version"
        ).fetchall()
    ]
