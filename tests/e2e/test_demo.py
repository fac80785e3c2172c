"""`flywheel demo --nights 2`, shortened (40 customers), on the real SmolLM2-135M: every stage runs, the
counts agree from the API through Kafka and DuckDB to the snapshot, no canary PII value reaches any file or
log, the A/B tests record decisions, and after the store changes its policies the second night's adapter
states the new ones."""

import json
import os
import subprocess
import sys

import duckdb
import pytest

from demo import probe, store
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
def test_a_short_two_night_demo_closes_the_loop_and_follows_a_change(tmp_path):
    env = {**os.environ, "FLYWHEEL_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "infra.cli", "demo", "--users", "40", "--nights", "2", *SHORT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = proc.stdout + proc.stderr
    data = tmp_path / "demo"
    summary = json.loads((data / "demo-summary.json").read_text())
    # `flywheel demo` exits 0 when every night promoted a better adapter and 1 when one did not (so short a
    # run often ends with "continue"): the exit code must say what the summary says, and a crash is neither.
    night1, night2 = summary["nights"]
    promoted = summary["decision"] == "promote" and night2["decision"] == "promote"
    assert proc.returncode == (0 if promoted else 1), out
    assert night1["decision"] == summary["decision"]

    night = ["traffic", "curate", "retrain", "a/b"]
    assert list(summary["stages"]) == ["start", "traffic", "ingest", "curate", "retrain", "a/b"] + [
        f"night 2 {stage}" for stage in night
    ], out
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
        parents = dict(con.execute("SELECT version, parent FROM adapters").fetchall())
        approvals = con.execute(
            "SELECT count(*) FROM audit_log WHERE actor = 'policy:auto' AND action = 'approve'"
        ).fetchone()[0]
        [(latest,)] = con.execute(  # the counts are of the newest snapshot: night 2's
            "SELECT snapshot_id FROM adapters WHERE version = ?", [night2["retrain"]["version"]]
        ).fetchall()
        snap_rows = con.execute(
            "SELECT count(*) FROM read_parquet(?)", [str(data / "snapshots" / latest / "*.parquet")]
        ).fetchone()[0]
    finally:
        con.close()
    assert decisions >= 2 and approvals >= 1 and last == night2["decision"]
    # What the decisions did: a promotion makes the challenger live; anything else leaves the incumbent.
    first = summary["retrain"]["version"]
    assert night1["live_after"] == (first if summary["decision"] == "promote" else "base")
    assert night2["live_before"] == night1["live_after"]
    second = night2["retrain"]["version"]
    assert night2["retrain"]["status"] == "candidate", night2
    offline = night2["retrain"]["offline"]  # it beat what served then on the eval split, new policies included
    assert offline["candidate"]["desirable_loss"] < offline["incumbent"]["desirable_loss"]
    assert parents[second] == (None if night1["live_after"] == "base" else night1["live_after"])  # incremental
    assert night2["live_after"] == (second if night2["decision"] == "promote" else night1["live_after"])
    assert live == ([] if night2["live_after"] == "base" else [(night2["live_after"],)])
    assert night2["world"] == "changed" and night2["day"]["ratings"] > 40
    assert snap_rows == c["snapshot_train"] + c["snapshot_eval"]

    # What each night taught, asked every wording of the changed topics' questions: night 1's adapter would
    # rather state the old policies, night 2's the new ones (the base model leans either way: 6 of 12). A weak
    # 40-user night may leave a wording or two near even (one came out at -0.1 nats): most wordings, and overall.
    learned, relearned = (
        preference(tmp_path, data / "adapters" / first),
        preference(tmp_path, data / "adapters" / second),
    )
    assert sum(learned) < 0 and sum(relearned) > 0, (learned, relearned)
    assert sum(m > 0 for m in relearned) >= 3 * len(relearned) / 4, relearned

    # The canaries: every customer's email and phone number went into chats; none may be stored or logged.
    people = store.population(40, 0)
    assert summary["leaks"] == {"email": 0, "phone": 0}
    for p in people:
        assert p.email not in out and p.phone not in out
    assert summary["pii_types"].get("EMAIL_ADDRESS", 0) > 0 and summary["pii_types"].get("PHONE_NUMBER", 0) > 0


def preference(data_dir, adapter) -> list[float]:
    """Per question of a changed topic: the log-likelihood the adapter gives the new policy as the answer
    minus the one it gives the old policy (> 0: it would rather say the new one)."""
    return probe.margins(data_dir / "models" / "SmolLM2-135M-Instruct", adapter, store.change_probes())
