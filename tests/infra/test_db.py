import duckdb
import pytest

from infra import db
from infra.errors import FlywheelError

CONTRACT_TABLES = {
    "chats",
    "feedback",
    "pii_findings",
    "dead_letters",
    "quarantine",
    "kafka_offsets",
    "samples",
    "reviews",
    "audit_log",
    "snapshots",
    "adapters",
    "adapter_events",
    "experiments",
    "decisions",
}


def test_migrations_create_the_contract_tables_once(tmp_path):
    con = db.connect(tmp_path / "f.duckdb")
    applied = db.migrate(con)
    assert [m.version for m in applied] == [m.version for m in db.available_migrations()]
    info = db.describe(con)
    assert CONTRACT_TABLES <= set(info["tables"])
    assert info["schema_version"] == applied[-1].version
    assert db.migrate(con) == []  # idempotent
    recorded = con.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall()
    assert recorded == [(m.version, m.checksum) for m in applied]


def test_an_edited_migration_is_refused(tmp_path):
    con = db.connect(tmp_path / "f.duckdb")
    db.migrate(con)
    first = db.available_migrations()[0]
    edited = db.Migration(first.version, first.name, first.sql + "\n-- edited")
    with pytest.raises(FlywheelError, match="edited after it was applied"):
        db.migrate(con, [edited])


def test_a_failing_migration_leaves_nothing_behind(tmp_path):
    con = db.connect(tmp_path / "f.duckdb")
    bad = db.Migration(1, "bad", "CREATE TABLE half (x INTEGER); CREATE TABLE broken (;")
    with pytest.raises(duckdb.Error):
        db.migrate(con, [bad])
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert "half" not in tables
    assert con.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 0


def test_event_id_is_the_idempotency_key(db):
    row = "(?, 1, 'r1', 'app', 'u1', NULL, '[]', 'hi', 'base', NULL, 1.0, now(), now(), NULL, NULL, NULL, NULL)"
    db.execute(f"INSERT INTO chats VALUES {row}", ["7b0c5a8e-0d0a-4ac8-9d0e-1d6f1a1b2c3d"])
    db.execute(f"INSERT INTO chats VALUES {row} ON CONFLICT DO NOTHING", ["7b0c5a8e-0d0a-4ac8-9d0e-1d6f1a1b2c3d"])
    assert db.execute("SELECT count(*) FROM chats").fetchone()[0] == 1


def test_read_only_open_of_a_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FlywheelError, match="flywheel db init"):
        db.connect(tmp_path / "none.duckdb", read_only=True)


def test_the_forgotten_rule_of_migration_0005_uses_the_contracts_prefix(db):
    """forget writes sha256(FORGET_PREFIX || user); the SQL macro must find that row, for a chat made before
    the forget and not for one made after it."""
    from curation.forget import user_hash

    db.execute("INSERT INTO forgotten_users VALUES (?, TIMESTAMPTZ '2026-06-01 00:00:00+00')", [user_hash("u1")])
    before, after = (
        db.execute("SELECT forgotten_after('u1', ?::TIMESTAMPTZ)", [t]).fetchone()[0]
        for t in ("2026-05-31 23:00:00+00", "2026-06-01 01:00:00+00")
    )
    assert (before, after) == (True, False)
    assert db.execute("SELECT forgotten_after('u2', TIMESTAMPTZ '2026-05-01 00:00:00+00')").fetchone()[0] is False


def test_migration_0006_turns_stored_json_messages_into_struct_lists(tmp_path):
    """A store written before 0006 keeps its rows: the JSON messages and prompts become (role, content) lists,
    and NOT NULL still holds."""
    con = db.connect(tmp_path / "f.duckdb")
    before = [m for m in db.available_migrations() if m.version < 6]
    db.migrate(con, before)
    messages = '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Où est <PERSON>?"}]'
    con.execute(
        "INSERT INTO chats VALUES (?, 1, 'r1', 'app', 'u1', NULL, ?, 'hi', 'base', NULL, 1.0, now(), now(), NULL,"
        " NULL, NULL)",
        ["7b0c5a8e-0d0a-4ac8-9d0e-1d6f1a1b2c3d", messages],
    )
    con.execute(
        "INSERT INTO samples (sample_id, chat_event_id, response_id, user_id, label, prompt, answer, source, keep)"
        " VALUES ('s1', '7b0c5a8e-0d0a-4ac8-9d0e-1d6f1a1b2c3d', 'r1', 'u1', 'desirable', ?, 'hi', 'rating', true)",
        [messages],
    )
    db.migrate(con)
    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Où est <PERSON>?"}]
    assert con.execute("SELECT messages FROM chats").fetchone()[0] == expected
    assert con.execute("SELECT prompt FROM samples").fetchone()[0] == expected
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE column_name IN ('messages', 'prompt')"
            " AND table_name IN ('chats', 'samples')"
        ).fetchall()
    )
    assert types == {name: 'STRUCT("role" VARCHAR, "content" VARCHAR)[]' for name in ("messages", "prompt")}
    with pytest.raises(duckdb.ConstraintException):
        con.execute("UPDATE chats SET messages = NULL")


def test_a_store_left_by_a_crash_right_after_the_migrations_opens_without_network(tmp_path):
    """kill -9 before DuckDB checkpointed leaves the migrations in the WAL; replaying 0006's from_json must
    load the built-in JSON extension, not try to download it (no network at run time: it could not open)."""
    import subprocess
    import sys

    path = tmp_path / "f.duckdb"
    crash = f"import os; from infra import db; con = db.connect({str(path)!r}); db.migrate(con); os._exit(0)"
    subprocess.run([sys.executable, "-c", crash], check=True, timeout=120)
    assert (tmp_path / "f.duckdb.wal").exists()  # nothing checkpointed: the replay below is the test
    con = db.connect(path)
    assert (
        con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == db.available_migrations()[-1].version
    )
    assert con.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone()[0] is False
