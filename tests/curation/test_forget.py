"""The right to be forgotten, through the library and through the CLI a data protection officer uses."""

import json
import uuid
from datetime import UTC

import pytest

from curation import curate, snapshot
from curation.config import CurationConfig
from curation.forget import forget
from infra import keys
from infra.db import compact, open_store
from ingest import sink
from ingest.batch import Record, prepare
from retrain import registry
from serving import ids
from tests.conftest import flywheel
from tests.helpers.events import chat, population, rate, store

MARKER = "Zanzibar-Quokka-Umbrella"  # text only the forgotten user ever wrote


def zoe_events(user: str = "zoe-77"):
    events = []
    for k in range(3):
        c = chat(
            user,
            f"My {MARKER} parcel number {k} never came, I'm Zoe Quokka.",
            f"Sorry about parcel {k}.",
            minutes=2000 + k,
        )
        events += [
            c,
            rate(c, -1, f"Parcel {k}: we resend {MARKER} items within 2 days.", comment=f"{MARKER} complaint {k}"),
        ]
    return events


def text_columns(con):
    return con.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main' "
        "AND (data_type LIKE 'VARCHAR%' OR data_type = 'JSON' OR data_type = 'UUID')"
    ).fetchall()


def populated(path, scrub, user: str = "zoe-77"):
    con = open_store(path)
    store(con, population(users=60) + zoe_events(user), scrub)
    # a malformed event whose excerpt names the user
    bad = Record("chats", 0, 999_999, b'{"user_id": "%s", "broken": ' % user.encode())
    sink.write(con, "test", None, prepare([bad], {"chats": "chat"}, scrub, "test"))
    return con


def test_forget_erases_every_row_and_the_bytes_and_taints_what_was_trained_on_them(tmp_path, scrub_pool):
    path = tmp_path / "flywheel.duckdb"
    con = populated(path, scrub_pool.scrub)
    cfg = CurationConfig(review_policy="auto")
    curate.run(con, cfg)
    snap = snapshot.build(con, cfg, tmp_path / "snapshots")
    assert any(MARKER in str(v) for v in con.execute("SELECT answer FROM samples WHERE user_id = 'zoe-77'").fetchall())
    con.executemany(
        "INSERT INTO adapters (version, parent, status, base_model, snapshot_id) VALUES (?, ?, ?, 'b', ?)",
        [
            ["v0001", None, "retired", snap.snapshot_id],
            ["v0002", "v0001", "live", "snap-later"],
            ["v0003", None, "retired", "snap-other"],
        ],
    )

    done = forget(con, "zoe-77", "dpo", taint=registry.taint_trained_on)
    assert done.deleted["chats"] == 3 and done.deleted["feedback"] == 3 and done.deleted["samples"] == 6
    assert done.deleted["dead_letters"] == 1 and done.deleted["pii_findings"] > 0
    assert done.snapshots == [snap.snapshot_id] and done.adapters == ["v0001", "v0002"]
    assert not (snap.path / "train.parquet").exists() and (snap.path / "manifest.json").exists()
    assert con.execute("SELECT version FROM adapters WHERE tainted ORDER BY 1").fetchall() == [("v0001",), ("v0002",)]
    for table, column in text_columns(con):
        hits = con.execute(
            f'SELECT count(*) FROM "{table}" WHERE contains("{column}"::VARCHAR, ?) '
            f'OR contains("{column}"::VARCHAR, ?)',
            ["zoe-77", MARKER],
        ).fetchone()[0]
        assert hits == 0, (table, column)
    entry = con.execute("SELECT actor, action, details FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    assert entry[:2] == ("dpo", "forget") and json.loads(entry[2])["adapters"] == ["v0001", "v0002"]

    # Late copies of their events (an outbox re-sent to a new broker) are dropped by ingest: never stored again.
    store(con, zoe_events()[:2], scrub_pool.scrub)
    for table in ("chats", "feedback", "pii_findings"):
        assert (
            con.execute(
                f"SELECT count(*) FROM {table} WHERE {'user_id' if table != 'pii_findings' else 'event_id'}"
                f" IN (SELECT {'user_id' if table != 'pii_findings' else 'event_id'} FROM "
                f"{'chats' if table == 'pii_findings' else table} WHERE user_id = 'zoe-77')"
            ).fetchone()[0]
            == 0
        )
    curate.run(con, cfg)
    assert con.execute("SELECT count(*) FROM samples WHERE user_id = 'zoe-77'").fetchone()[0] == 0
    con.close()

    compact(path)
    raw = path.read_bytes()
    assert MARKER.encode() not in raw and b"zoe-77" not in raw
    con = open_store(path)  # still a working store after the swap, views included
    assert con.execute("SELECT count(*) FROM chats").fetchone()[0] == 180
    assert con.execute("SELECT count(*) FROM latest_feedback").fetchone()[0] == 180
    con.close()


@pytest.mark.slow
def test_cli_curate_review_forget_and_audit(tmp_path, scrub_pool):
    data = tmp_path / "var"
    data.mkdir()
    zoe = ids.pseudonym(keys.data_dir_key(data, "user-pseudonyms"), "store", "zoe-77")  # as the API stores her
    con = populated(data / "flywheel.duckdb", scrub_pool.scrub, zoe)
    con.close()
    env = {
        "FLYWHEEL_DATA_DIR": str(data),
        "FLYWHEEL_CURATION__REVIEW_POLICY": "required",
        "FLYWHEEL_SERVING__API_KEYS": f'{{store = "{ids.hash_key("key-of-store")}"}}',
    }
    out = flywheel("curate", env=env)
    assert out.returncode == 0, out.stderr
    assert "candidates 183 rated chats" in out.stdout and "snapshot   none" in out.stdout
    listed = flywheel("review", "list", "--limit", "3", env=env)
    assert listed.returncode == 0 and "smp-" in listed.stdout and "pending" in listed.stdout
    first = listed.stdout.split("smp-")[1].split()[0].rstrip("│ ")
    bad = flywheel("review", "reject", f"smp-{first}", env=env)
    assert bad.returncode == 2 and "needs a reason" in bad.stderr
    ok = flywheel("review", "approve", "--all-pending", "--reviewer", "rita", env=env)
    assert ok.returncode == 0 and "approved" in ok.stdout and "as rita" in ok.stdout
    snap = flywheel("curate", env=env)
    assert "snapshot   snap-" in snap.stdout and "(new)" in snap.stdout, snap.stdout
    unknown = flywheel("forget", "--app", "shop", "--user", "zoe-77", env=env)
    assert unknown.returncode == 2 and "unknown app 'shop'" in unknown.stderr
    gone = flywheel("forget", "--app", "store", "--user", "zoe-77", env=env)
    assert gone.returncode == 0, gone.stderr
    assert "3 chats" in gone.stdout and "Parquet files deleted" in gone.stdout and "compacted" in gone.stdout
    assert MARKER.encode() not in (data / "flywheel.duckdb").read_bytes()
    assert zoe.encode() not in (data / "flywheel.duckdb").read_bytes()
    verify = flywheel("audit", "verify", env=env)
    assert verify.returncode == 0 and "intact" in verify.stdout
    shown = flywheel("audit", "show", env=env)
    assert "forget" in shown.stdout and "rita" in shown.stdout and "zoe-77" not in shown.stdout

    con = open_store(data / "flywheel.duckdb")
    con.execute("UPDATE audit_log SET details = '{}' WHERE seq = 2")
    con.close()
    broken = flywheel("audit", "verify", env=env)
    assert broken.returncode == 1 and "BROKEN at entry 2" in broken.stderr


def test_forget_routes_away_from_a_tainted_live_adapter_at_once(tmp_path, scrub_pool):
    """v0002 (live) descends from v0001, which trained on Zoe: both tainted, so v0000's files serve; with no
    untainted ancestor, base serves. Before, the tainted adapter kept serving until a later A/B win."""
    from infra.config import load_config
    from infra.services import ReviewStore

    data = tmp_path / "var"
    data.mkdir()
    zoe = ids.pseudonym(keys.data_dir_key(data, "user-pseudonyms"), "store", "zoe-77")
    con = populated(data / "flywheel.duckdb", scrub_pool.scrub, zoe)
    cfg = load_config(
        overrides=[f"data_dir={data}", f'serving.api_keys={{store = "{"0" * 64}"}}', "curation.review_policy=auto"],
        env={},
    )
    curate.run(con, cfg.curation)
    snap = snapshot.build(con, cfg.curation, data / "snapshots")
    for v in ("v0000", "v0001", "v0002"):
        (data / "adapters" / v).mkdir(parents=True)
    con.executemany(
        "INSERT INTO adapters (version, parent, status, base_model, snapshot_id, path) VALUES (?, ?, ?, 'b', ?, ?)",
        [
            ["v0000", None, "retired", "snap-old", str(data / "adapters" / "v0000")],
            ["v0001", "v0000", "retired", snap.snapshot_id, str(data / "adapters" / "v0001")],
            ["v0002", "v0001", "live", "snap-later", str(data / "adapters" / "v0002")],
        ],
    )
    store, scheduled = ReviewStore(con, cfg), []
    store.after_taint = lambda: scheduled.append(1)  # `up` wires control.retrain_soon here
    done = store.forget("store", "zoe-77", "dpo")
    assert done["adapters"] == ["v0001", "v0002"] and done["routing"][0] == "v0002 is tainted: v0000 serves now"
    assert [line.split(":")[0] for line in done["routing"][1:3]] == ["v0001", "v0002"]  # their files deleted
    assert scheduled == [1] and "retrain without the user is scheduled" in done["routing"][3]
    assert not (data / "adapters" / "v0001").exists() and not (data / "adapters" / "v0002").exists()
    assert (data / "adapters" / "v0000").is_dir()
    routing = json.loads((data / "routing.json").read_text())
    assert routing["split"] == [["v0000", 1.0]] and list(routing["adapters"]) == ["v0000"]
    assert con.execute("SELECT status FROM adapters WHERE version = 'v0002'").fetchone() == ("retired",)
    con.execute("UPDATE adapters SET tainted = true WHERE version = 'v0000'")  # no clean ancestor left
    con.execute("UPDATE adapters SET status = 'live' WHERE version = 'v0000'")
    from infra.ab import serve_untainted

    assert serve_untainted(cfg, con)[0] == "v0000 is tainted: base serves now"
    assert json.loads((data / "routing.json").read_text())["split"] == [["base", 1.0]]
    con.close()


def test_late_ratings_and_encoded_ids_of_a_forgotten_user_are_gone(tmp_path, scrub_pool):
    """A rating sent after the forget on an answer from before it, and a dead letter that names the user only
    inside a base64 response id: before, the first re-created their rows and the second stayed."""
    import base64
    from datetime import datetime, timedelta

    from serving import ids as response_ids

    path = tmp_path / "flywheel.duckdb"
    con = populated(path, scrub_pool.scrub)
    claims = response_ids.ResponseClaims("store", "zoe-77", "base", None, 1.0e9)
    # An id is random (a nonce); about a third of them end in ".xy..." that the URL recognizer takes for a
    # domain, and then the scrubbed excerpt no longer holds the user at all. This test needs one that does.
    excerpt = b'{"schema_version": 1, "kind": "feedback", "response_id": "%s"'
    rid = next(
        r
        for r in (response_ids.issue(b"s" * 32, claims) for _ in range(100))
        if r.split(".")[1] in scrub_pool.scrub([(excerpt % r.encode()).decode()])[0].text
    )
    payload = base64.urlsafe_b64decode(rid.split(".")[1] + "==")
    assert b"zoe-77" in payload and b"zoe-77" not in rid.encode()  # readable only when decoded
    bad = Record("feedback", 0, 999_998, excerpt % rid.encode())
    sink.write(con, "test", None, prepare([bad], {"feedback": "feedback"}, scrub_pool.scrub, "test"))
    done = forget(con, "zoe-77", "dpo", taint=registry.taint_trained_on)
    assert done.deleted["dead_letters"] == 2  # the plain one from populated() and the encoded one
    late = zoe_events()[1].model_copy(
        update={
            "event_id": uuid.uuid4(),
            "created_at": datetime.now(UTC) + timedelta(minutes=1),
            "answered_at": datetime(2026, 10, 1, tzinfo=UTC),
        }
    )
    store(con, [late], scrub_pool.scrub)
    assert con.execute("SELECT count(*) FROM feedback WHERE user_id = 'zoe-77'").fetchone()[0] == 0
    fresh = late.model_copy(update={"event_id": uuid.uuid4(), "answered_at": late.created_at})
    store(con, [fresh], scrub_pool.scrub)  # a new answer after the forget is new data, kept
    assert con.execute("SELECT count(*) FROM feedback WHERE user_id = 'zoe-77'").fetchone()[0] == 1
    con.close()


def test_a_retrain_without_the_user_runs_within_a_minute(tmp_path):
    from datetime import datetime, timedelta

    from infra import schedule
    from infra.config import load_config

    cfg = load_config(overrides=[f"data_dir={tmp_path}"], env={})
    con = open_store(tmp_path / "flywheel.duckdb")
    scheduler, nightly = schedule.start_scheduler(cfg)
    try:
        schedule.retrain_soon(scheduler)
        job = schedule.retrain_soon(scheduler)  # a second forget moves it, never adds a second run
        jobs = [j for j in scheduler.get_jobs() if j.id == "retrain-after-forget"]
        now = datetime.now(UTC)
        assert jobs == [job] and now < job.next_run_time <= now + timedelta(seconds=61)
        assert job.next_run_time < nightly.next_run_time  # sooner than the night
    finally:
        scheduler.shutdown(wait=False)
        con.close()
