"""The control process under faults: the training subprocess killed at random points, and the nightly schedule
across restarts, driven by a controllable clock."""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime, timedelta

import pytest

from infra import control, schedule
from infra.db import open_store
from retrain import registry
from tests.helpers.events import more_ratings, store
from tests.helpers.retrain import config, digest

pytestmark = pytest.mark.chaos


def test_kill_9_of_training_at_random_points_leaves_the_incumbent_and_the_next_run_succeeds(
    tiny_lm, populated, scrub_pool
):
    con = open_store(populated / "flywheel.duckdb")
    try:
        assert control.retrain(config(tiny_lm, populated), con).status == "candidate"
        registry.set_status(con, "v0001", "live", "promoted by hand in this test")
        incumbent = digest(populated / "adapters" / "v0001")
        store(con, more_ratings(range(60, 80)), scrub_pool.scrub)
        rng, landed = random.Random(9), 0
        for _ in range(5):
            delay = rng.uniform(0.2, 4.0)  # from interpreter start-up to the middle of training
            hit = {}

            def kill_later(proc, delay=delay, hit=hit):
                def kill():
                    hit["alive"] = proc.poll() is None
                    proc.kill()

                threading.Timer(delay, kill).start()

            outcome = control.retrain(config(tiny_lm, populated, epochs=40), con, on_worker=kill_later)
            time.sleep(max(0.0, delay - outcome.seconds) + 0.1)  # the timer has fired
            if hit.get("alive"):
                landed += 1
                assert outcome.status == "failed" and "SIGKILL" in outcome.reason, outcome
            assert registry.live(con)["version"] == "v0001" and digest(populated / "adapters" / "v0001") == incumbent
            assert not list((populated / "adapters").glob(".staging*"))
        assert landed >= 4
        after = control.retrain(config(tiny_lm, populated), con)
        assert after.status in ("candidate", "rejected"), after.reason  # trained to the end and judged
        assert registry.get(con, after.version)["parent"] == "v0001" and registry.live(con)["version"] == "v0001"
    finally:
        con.close()


class Clock:
    """datetime.now() for APScheduler, moved by the test."""

    def __init__(self, start: datetime):
        self.at = start
        test_clock = self

        class Fake(datetime):
            @classmethod
            def now(cls, tz=None):
                return test_clock.at.astimezone(tz) if tz else test_clock.at.replace(tzinfo=None)

        self.datetime = Fake


def test_the_nightly_job_runs_once_per_time_across_restarts_and_a_missed_run_once(tiny_lm, tmp_path, db, monkeypatch):
    import apscheduler.executors.base
    import apscheduler.schedulers.base
    from apscheduler.triggers.cron import CronTrigger

    local = CronTrigger.from_crontab("0 2 * * *").timezone
    clock = Clock(datetime(2026, 11, 23, 1, 0, tzinfo=local))
    monkeypatch.setattr(apscheduler.schedulers.base, "datetime", clock.datetime)
    monkeypatch.setattr(apscheduler.executors.base, "datetime", clock.datetime)
    runs: list[datetime] = []
    monkeypatch.setattr(control, "retrain", lambda cfg, con, **kw: runs.append(clock.at))
    cfg = config(tiny_lm, tmp_path, misfire_grace_s=2 * 3600)
    monkeypatch.setattr(control.Control, "current", control.Control(cfg, db))  # what `flywheel up` sets
    scheduler = None

    def restart_at(when: datetime):
        nonlocal scheduler
        if scheduler is not None:
            scheduler.shutdown(wait=True)  # the control process stops (its job store is a file)
        clock.at = when
        scheduler, job = schedule.start_scheduler(cfg)
        return job

    def advance_to(when: datetime, expect: int):
        clock.at = when
        scheduler.wakeup()
        deadline = time.monotonic() + 10
        while len(runs) < expect and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a second run, if there were one, would be here by now
        assert len(runs) == expect, runs

    day = timedelta(days=1)
    night1 = datetime(2026, 11, 23, 2, 0, tzinfo=local)
    try:
        assert restart_at(night1 - timedelta(hours=1)).next_run_time == night1
        advance_to(night1 + timedelta(seconds=5), 1)  # fires once at 02:00
        assert restart_at(night1 + timedelta(seconds=30)).next_run_time == night1 + day  # no second run
        advance_to(night1 + timedelta(minutes=50), 1)
        # Down over night 2: restarted an hour late, within the grace time, it runs that night's job once.
        restart_at(night1 + day - timedelta(hours=1))
        scheduler.shutdown(wait=True)
        scheduler = None
        restart_at(night1 + day + timedelta(hours=1))
        advance_to(night1 + day + timedelta(hours=1, seconds=1), 2)
        assert restart_at(night1 + day + timedelta(hours=1, minutes=10)).next_run_time == night1 + 2 * day
        advance_to(night1 + day + timedelta(hours=1, minutes=20), 2)
        # Down for three nights: the missed runs coalesce into one.
        restart_at(night1 + 4 * day + timedelta(minutes=30))
        advance_to(night1 + 4 * day + timedelta(minutes=31), 3)
        # Back too late for the grace time: that night is skipped (logged), the next one runs.
        restart_at(night1 + 5 * day + timedelta(hours=3))
        advance_to(night1 + 5 * day + timedelta(hours=3, minutes=1), 3)
        advance_to(night1 + 6 * day + timedelta(seconds=1), 4)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
    assert [r.date() for r in runs] == [night1.date() + d * day for d in (0, 1, 4, 6)]
