"""`flywheel demo`, shortened (fewer customers, a few training steps), on the real SmolLM2-135M: every stage
runs, the counts agree from the API through Kafka and DuckDB to the snapshot, no canary PII value reaches
any file or log, and the A/B test records a decision."""

import json
import os
import subprocess
import sys

import duckdb
import pytest

from demo import store
from tests.conftest import ROOT

SHORT = [
    "serving.port=0",
    "ingest.pii.workers=1",
    "curation.max_user_share=0.1",
    # 40 users at the default 10% left the eval split empty in about 1 run in 70 (0.9^40): the snapshot then takes
    # one user, whose rows may hold no desirable answer, and the offline gate rightly rejects. A quarter: ~1e-5.
    "curation.eval_share=0.25",
    "abtest.ramp=[0.5]",
    "abtest.min_users_per_arm=11",  # the smallest the config accepts (abtest.config.MIN_USERS_PER_ARM)
    "log_level=INFO",
]


@pytest.mark.slow
def test_a_short_demo_closes_the_loop(tmp_path):
    env = {**os.environ, "FLYWHEEL_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "infra.cli", "demo", "--users", "40", *SHORT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = proc.stdout + proc.stderr
    data = tmp_path / "demo"
    summary = json.loads((data / "demo-summary.json").read_text())
    # `flywheel demo` exits 0 when it promoted a better adapter and 1 when it did not (so short a run often
    # ends with "continue"): the exit code must say what the summary says, and a crash is neither.
    assert proc.returncode == (0 if summary["decision"] == "promote" else 1), out

    assert list(summary["stages"]) == ["start", "traffic", "ingest", "curate", "retrain", "a/b"], out
    c = summary["counts"]
    # A chat that failed got an error, not an answer: nothing was promised for it. Every answer is stored.
    assert c["requests"] == c["answered"] + c["failed"] and c["failed"] <= c["requests"] * 0.05, summary["errors"]
    assert c["answered"] == c["kafka_chats"] == c["duckdb_chats"] > 40
    assert c["ratings"] == c["ratings_accepted"] == c["kafka_feedback"] == c["duckdb_feedback"] > 40
    assert c["corrections"] > 0 and c["samples_approved"] == c["samples_kept"] > 0
    assert c["snapshot_train"] + c["snapshot_eval"] + c["snapshot_over_user_cap"] <= c["samples_approved"]
    assert summary["retrain"]["status"] == "candidate", summary["retrain"]
    offline = summary["retrain"]["metrics"]["offline"]  # the gate let it through: it beat base offline
    assert offline["candidate"]["desirable_loss"] < offline["incumbent"]["desirable_loss"]
    arms = summary["numbers"]["arms"]  # the A/B test evaluated live ratings of both arms
    assert arms["incumbent"]["variant"] == "base" and arms["challenger"]["variant"] == summary["retrain"]["version"]
    assert arms["incumbent"]["ratings"] > 0 and arms["challenger"]["ratings"] > 0

    con = duckdb.connect(str(data / "flywheel.duckdb"), read_only=True)
    try:
        decisions = con.execute("SELECT count(*) FROM decisions").fetchone()[0]
        last = con.execute("SELECT decision FROM decisions ORDER BY decided_at DESC, rowid DESC LIMIT 1").fetchone()[0]
        live = con.execute("SELECT version FROM adapters WHERE status = 'live'").fetchall()
        approvals = con.execute(
            "SELECT count(*) FROM audit_log WHERE actor = 'policy:auto' AND action = 'approve'"
        ).fetchone()[0]
        snap_rows = con.execute(
            "SELECT count(*) FROM read_parquet(?)", [str(next(data.glob("snapshots/snap-*")) / "*.parquet")]
        ).fetchone()[0]
    finally:
        con.close()
    assert decisions >= 1 and approvals >= 1 and last == summary["decision"]
    # What the decision did: a promotion makes the challenger live; anything else leaves base serving.
    assert live == ([(summary["retrain"]["version"],)] if summary["decision"] == "promote" else [])
    assert snap_rows == c["snapshot_train"] + c["snapshot_eval"]

    # The canaries: every customer's email and phone number went into chats; none may be stored or logged.
    people = store.population(40, 0)
    assert summary["leaks"] == {"email": 0, "phone": 0}
    for p in people:
        assert p.email not in out and p.phone not in out
    assert summary["pii_types"].get("EMAIL_ADDRESS", 0) > 0 and summary["pii_types"].get("PHONE_NUMBER", 0) > 0
