"""When the control process's jobs run: the nightly retrain on `retrain.schedule` (APScheduler with a
persistent job store in the data dir: a run missed while the process was down is still found and run
once), a retrain soon after a forget tainted an adapter, and the A/B evaluation every few seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from infra.config import Config
from infra.errors import FlywheelError

NIGHTLY, AFTER_FORGET, AB = "nightly-retrain", "retrain-after-forget", "ab-evaluate"
# The job store keeps these as names (it cannot keep objects): they reach the running `Control`.
RETRAIN_REF, AB_REF = "infra.control:scheduled_retrain", "infra.control:scheduled_ab"
RETRAIN_AFTER_FORGET_S = 60  # forgets that come together (a batch of requests) share one run


def cron(schedule: str):
    """retrain.schedule as an APScheduler trigger, or one line saying what is wrong with it."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger.from_crontab(schedule)
    except ValueError as e:
        raise FlywheelError(f"retrain.schedule {schedule!r} is not a cron expression: {e}") from None


def start_scheduler(cfg: Config):
    """APScheduler in this process with a persistent job store in the data dir: a cron job that runs at
    most once at a time, coalesces missed runs into one, and runs a missed one within the grace time.
    Returns (scheduler, the nightly job)."""
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    trigger = cron(cfg.retrain.schedule)
    scheduler = BackgroundScheduler(
        jobstores={
            "default": SQLAlchemyJobStore(url=f"sqlite:///{Path(cfg.data_dir).resolve() / 'scheduler.sqlite'}"),
            "memory": MemoryJobStore(),
        },
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": cfg.retrain.misfire_grace_s},
    )
    scheduler.start()
    job = scheduler.get_job(NIGHTLY)
    if job is None or str(job.trigger) != str(trigger):
        # replace_existing keeps one job; a changed cron takes effect, an unchanged one keeps its
        # stored next run time (so a run missed while we were down is still found and run once).
        scheduler.add_job(RETRAIN_REF, trigger, id=NIGHTLY, replace_existing=True)
        job = scheduler.get_job(NIGHTLY)
    return scheduler, job


def retrain_soon(scheduler, delay_s: float = RETRAIN_AFTER_FORGET_S):
    """Run the retrain once, `delay_s` from now (again from now if already pending): after a forget tainted
    an adapter, so that a model trained without the user replaces its ancestor before the next night."""
    return scheduler.add_job(
        RETRAIN_REF,
        "date",
        id=AFTER_FORGET,
        run_date=datetime.now(UTC) + timedelta(seconds=delay_s),
        replace_existing=True,
        jobstore="memory",
    )


def evaluate_ab_every(scheduler, seconds: float) -> None:
    """The A/B evaluation, every `seconds` (not persisted: it is added again at every start)."""
    scheduler.add_job(
        AB_REF,
        "interval",
        seconds=seconds,
        id=AB,
        jobstore="memory",
        replace_existing=True,
        max_instances=1,
        coalesce=True,
    )
