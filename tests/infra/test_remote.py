"""The read and admin commands while `flywheel up` holds the database: they go through its admin API with a
reviewer key and print what they print when the database is free."""

import os
import signal
import subprocess
import sys

import pytest

from curation import curate
from curation.config import CurationConfig
from infra import remote
from infra.db import open_store
from tests.conftest import flywheel
from tests.helpers.events import population, store

READS = [
    ("review", "list"), ("ab", "report"), ("ab", "status"), ("adapters", "list"), ("adapters", "history"),
    ("db", "info"), ("audit", "show"), ("audit", "verify"),
]  # fmt: skip
REVIEW_KEY = "flywheel-review-key"  # the default config's reviewer, served with --demo-keys


@pytest.fixture
def seeded(tmp_path, scrub_pool, tiny_lm):
    data = tmp_path / "var"
    data.mkdir()
    con = open_store(data / "flywheel.duckdb")
    store(con, population(users=12), scrub_pool.scrub)
    curate.run(con, CurationConfig(max_user_share=1.0), actor="seed")  # every sample waits for a reviewer
    con.close()
    env = {"FLYWHEEL_DATA_DIR": str(data), "FLYWHEEL_BASE_MODEL": str(tiny_lm), "FLYWHEEL_SERVING__PORT": "0"}
    return data, env


def pending_ids(output: str) -> list[str]:
    return [line.split("│")[1].strip() for line in output.splitlines() if line.startswith("│ ")]


@pytest.mark.slow
def test_commands_go_through_the_running_service_with_the_same_output(seeded):
    data, env = seeded
    flywheel("audit", "verify", env=env)  # anchors nothing yet: `up` signs the head as it starts
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up", "--demo-keys"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if "flywheel is up" in line:
                break
        assert (data / remote.ENDPOINT).exists()
        held = flywheel("review", "list", env=env)
        assert held.returncode == 2 and remote.KEY_ENV in held.stderr and held.stdout == ""
        keyed = {**env, remote.KEY_ENV: REVIEW_KEY}
        wrong = flywheel("ab", "report", env={**env, remote.KEY_ENV: "not-a-key"})
        assert wrong.returncode == 2 and "401 invalid admin key" in wrong.stderr
        through = {c: flywheel(*c, env=keyed) for c in READS}
        assert all(r.returncode == 0 for r in through.values()), {c: r.stderr for c, r in through.items()}
        not_remote = flywheel("curate", env=keyed)  # a writer's job: still refused, with why
        assert not_remote.returncode == 2 and "in use by process" in not_remote.stderr

        listed = through[("review", "list")].stdout
        assert pending_ids(listed), listed
        first = pending_ids(listed)[0]
        as_other = flywheel("review", "approve", first, "--reviewer", "mallory", env=keyed)
        assert as_other.returncode == 2 and "you act as demo-reviewer" in as_other.stderr
        approved = flywheel("review", "approve", first, "--reason", "fine", env=keyed)
        assert approved.returncode == 0 and approved.stdout == "approved 1 sample as demo-reviewer\n"
        unknown = flywheel("review", "reject", "no-such-sample", "--reason", "x", env=keyed)
        assert unknown.returncode == 2 and "no-such-sample" in unknown.stderr
        decided = flywheel("ab", "decide", env=keyed)  # the service's own A/B step, run now
        assert decided.returncode == 0 and "no experiment running" in decided.stdout, decided.stderr
        stopped = flywheel("ab", "stop", "--reason", "enough", env=keyed)  # reaches the service, which says why not
        assert stopped.returncode == 2 and "no experiment is running" in stopped.stderr, stopped.stderr
        forgot = flywheel("forget", "--app", "store", "--user", "user-001", env=keyed)
        assert forgot.returncode == 0 and "compaction pending" in forgot.stdout
        after = flywheel("review", "list", env=keyed).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped cleanly" in out, err
    assert not (data / remote.ENDPOINT).exists()

    alone = {c: flywheel(*c, env=env) for c in READS}
    assert alone[("review", "list")].stdout == after  # the approval happened in the service's database
    assert first not in pending_ids(after)
    for c in [("ab", "report"), ("ab", "status"), ("adapters", "list"), ("adapters", "history")]:
        assert alone[c].stdout == through[c].stdout, c
    audit = alone[("audit", "show")].stdout
    assert "demo-reviewer" in audit and "approve" in audit and "forget" in audit
    assert alone[("audit", "verify")].returncode == 0
