"""DuckDB: open the one database file, apply versioned migrations, describe what is stored.

DuckDB allows one read-write process per file and locks it; the lock error is turned into one line that
says which process holds it. Stages receive the connection as a parameter and never open it themselves.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import duckdb

from infra.errors import DatabaseHeld, FlywheelError

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def connect(path: Path, *, read_only: bool = False, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open the database file; a lock held by another process becomes one readable line."""
    path = Path(path)
    if read_only and not path.exists():
        raise FlywheelError(f"no database at {path}: create it with `flywheel db init`")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never download an extension (no network at run time). DuckDB's JSON extension is built in, but replaying
    # a WAL that a crash left behind (migration 0006 binds from_json) tried to install it before loading it,
    # and with no network the file could not be opened at all.
    config: dict[str, str | bool | int] = {"autoinstall_known_extensions": False, "autoload_known_extensions": True}
    if threads:
        config["threads"] = threads
    try:
        return duckdb.connect(str(path), read_only=read_only, config=config)
    except duckdb.IOException as e:
        holder = re.search(r"PID (\d+)", str(e))
        who = f"process {holder.group(1)}" if holder else "another process"
        if "lock" in str(e).lower():
            raise DatabaseHeld(
                f"database {path} is in use by {who}: DuckDB allows one writer per file; "
                "stop it or use its API/CLI instead"
            ) from None
        raise FlywheelError(f"cannot open database {path}: {e}") from None


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("infra.migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise FlywheelError(f"two migrations share a version number: {versions}")
    return found


def migrate(con: duckdb.DuckDBPyConnection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply the migrations not yet recorded, each in its own transaction; returns those applied now."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, checksum VARCHAR NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    applied = dict(con.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    done = []
    for m in migrations if migrations is not None else available_migrations():
        if m.version in applied:
            if applied[m.version] != m.checksum:
                raise FlywheelError(
                    f"migration {m.version:04d}_{m.name} was edited after it was applied; add a new migration instead"
                )
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(m.sql)
            con.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
                [m.version, m.name, m.checksum],
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        done.append(m)
    return done


def open_store(path: Path, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """The writer's connection: opened and migrated to the latest schema. A compaction left pending by a
    `forget` done while the service held the file runs first."""
    if compact_marker(path).exists() and Path(path).exists():
        compact(path)
    con = connect(path, threads=threads)
    migrate(con)
    return con


def describe(con: duckdb.DuckDBPyConnection) -> dict:
    """Schema version and row counts per table."""
    version = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
    tables = [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'main' AND table_name <> 'schema_migrations' ORDER BY table_name"
        ).fetchall()
    ]
    counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    return {"schema_version": version, "tables": counts}


def compact_marker(path: Path) -> Path:
    return Path(str(path) + ".compact-pending")


def compact(path: Path) -> tuple[int, int]:
    """Rewrite the database into a fresh file and swap it in: deleted values are gone from the bytes on
    disk (DuckDB leaves them in freed blocks). Needs the file to itself. Returns (bytes before, after)."""
    path = Path(path)
    con = connect(path)  # replays the WAL into the file; fails with one line when another process holds it
    con.execute("CHECKPOINT")
    con.close()
    before = path.stat().st_size
    fresh = path.with_name(path.name + ".compacting")
    fresh.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{path}' AS old (READ_ONLY)")
        con.execute(f"ATTACH '{fresh}' AS fresh")
        con.execute("COPY FROM DATABASE old TO fresh")
        con.execute("DETACH fresh")
        con.execute("DETACH old")
    finally:
        con.close()
    with open(fresh, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(fresh, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    compact_marker(path).unlink(missing_ok=True)
    return before, path.stat().st_size
