"""The control process: one retrain run (curate -> snapshot -> plan -> train in a subprocess -> gates ->
registry), and the `Control` object that owns its child processes and scheduler in `flywheel up`.

A run never harms the incumbent: training writes only into a staging folder; a run that raises, yields a
NaN/inf loss, is killed, runs out of memory, or writes an empty or unchanged adapter is recorded as
`failed` with its reason and leaves the registry's live version and `routing.json` untouched. One run at a
time across processes (`infra.processes.RetrainLock`). What a run will do is decided in `retrain/plan.py`,
when it runs in `infra/schedule.py`, and A/B decisions are applied in `infra/ab.py`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from infra import ab, schedule
from infra.config import Config
from infra.processes import Children, RetrainLock, failure_reason

log = logging.getLogger("flywheel.control")


@dataclass
class Outcome:
    status: str  # candidate | rejected | failed | skipped
    reason: str | None = None
    version: str | None = None
    snapshot_id: str | None = None
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


def _prepare(cfg: Config, con):
    """Curate, snapshot and plan: a `retrain.plan.Job` with its start, or an Outcome saying why not."""
    from curation import curate, snapshot
    from infra.models import model_hash, resolve_base_model
    from retrain import plan, registry

    curate.run(con, cfg.curation, actor="retrain")
    try:
        snap = snapshot.build(con, cfg.curation, cfg.data_dir / "snapshots", actor="retrain")
    except ValueError as e:
        return Outcome("skipped", str(e))
    if snap is None:
        return Outcome("skipped", "no approved samples (see `flywheel review list`)")
    begin = plan.start(con)
    train_ids = snap.manifest["sample_ids"]["train"]
    new = plan.new_samples(con, train_ids)
    if why := plan.too_few(len(new), cfg.retrain):
        return Outcome("skipped", why, snapshot_id=snap.snapshot_id)
    earlier = snapshot.replayable(con, [a["snapshot_id"] for a in begin.lineage], snap.path)
    base_path = resolve_base_model(cfg.base_model, cfg.data_dir / "models")
    version = registry.next_version(con)
    staging = cfg.data_dir / "adapters" / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    job = plan.job(
        version,
        cfg.retrain,
        base_model=cfg.base_model,
        base_path=base_path,
        base_hash=model_hash(base_path),
        snapshot=snap,
        earlier=earlier,
        superseded=curate.superseded_ids(con),
        begin=begin,
        out_dir=staging / "adapter",
    )
    (staging / "job.json").write_text(job.to_json())
    log.info(
        "retrain %s: %d samples (%d new) from %s, parent %s",
        version,
        len(train_ids),
        len(new),
        snap.snapshot_id,
        job.parent_version or "none (base model)",
    )
    return job, begin


class Run:
    """One planned run carried out: the worker, the artifact gate, the offline gate, the registry row."""

    def __init__(self, cfg: Config, con, job, begin, children: Children):
        self.cfg, self.con, self.job, self.begin, self.children = cfg, con, job, begin, children
        self.staging = cfg.data_dir / "adapters" / f".staging-{job.version}"

    def record(self, status: str, reason: str | None, metrics: dict, path: str | None) -> Outcome:
        from curation import audit
        from retrain import registry

        job = self.job
        registry.register(
            self.con,
            job.version,
            status=status,
            path=path,
            metrics=metrics,
            reason=reason,
            parent=job.parent_version,
            base_model=job.base_model,
            base_hash=job.base_hash,
            snapshot_id=job.snapshot_id,
        )
        details = {"snapshot_id": job.snapshot_id}
        details.update(
            {"offline": metrics["offline"].get("candidate")} if status == "candidate" else {"reason": reason}
        )
        audit.append(self.con, "retrain", status, job.version, details)
        if path is None:
            shutil.rmtree(self.staging, ignore_errors=True)
        return Outcome(status, reason, job.version, job.snapshot_id, metrics)

    def artifact_gate(self) -> dict:
        args = ["-m", "retrain.gates", "artifact", self.job.out_dir, "--rank", str(self.cfg.retrain.lora.r)]
        if self.begin.parent:
            args += ["--parent", self.begin.parent["path"]]
        return self.children.gate(args, 600)

    def offline_gate(self, final) -> dict:
        args = [
            "-m",
            "retrain.gates",
            "offline",
            "--base",
            self.job.base_path,
            "--candidate",
            str(final),
            "--snapshot",
            self.job.snapshot_dir,
            "--tolerance",
            str(self.cfg.retrain.forgetting_tolerance),
        ]
        if self.begin.incumbent:
            args += ["--incumbent", self.begin.incumbent["path"]]
        return self.children.gate(args, 3600)

    def __call__(self, on_worker: Callable | None, echo: bool) -> Outcome:
        worker = ["-m", "retrain.worker", str(self.staging / "job.json")]
        if (gpus := self.cfg.retrain.gpus) > 1:  # its processes share the worker's process group: one kill stops all
            worker = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *worker]
        code, last, tail = self.children.run(worker, self.cfg.retrain.timeout_s, on_worker, echo)
        if code != 0:
            return self.record("failed", failure_reason(code, tail), {}, None)
        metrics = {"train": json.loads(last)}
        verdict = metrics["artifact"] = self.artifact_gate()
        if not verdict["ok"]:
            return self.record("failed", f"artifact gate: {verdict['reason']}", metrics, None)
        final = self.cfg.data_dir / "adapters" / self.job.version
        os.rename(self.job.out_dir, final)
        shutil.rmtree(self.staging, ignore_errors=True)
        verdict = metrics["offline"] = self.offline_gate(final)
        if not verdict["ok"]:
            # A gate that crashed or was stopped said nothing about the adapter: the run failed.
            status = "failed" if verdict.get("judged") is False else "rejected"
            return self.record(status, f"offline gate: {verdict['reason']}", metrics, str(final))
        return self.record("candidate", None, metrics, str(final))


def retrain(
    cfg: Config, con, *, children: Children | None = None, on_worker: Callable | None = None, echo: bool = False
) -> Outcome:
    """One run; every outcome (skipped included) is logged, and all but `skipped` are in the registry."""
    started = time.monotonic()
    lock = RetrainLock(cfg.data_dir)
    if not lock.acquire():
        return _done(Outcome("skipped", f"another retrain is running (pid {lock.holder()})"), started)
    try:
        prepared = _prepare(cfg, con)
        if isinstance(prepared, Outcome):
            from curation import audit

            # A night without a run is a night of the history too (the A/B dashboard marks it).
            audit.append(con, "retrain", "skipped", prepared.snapshot_id, {"reason": prepared.reason})
            return _done(prepared, started)
        job, begin = prepared
        return _done(Run(cfg, con, job, begin, children or Children())(on_worker, echo), started)
    finally:
        lock.release()


def _done(outcome: Outcome, started: float) -> Outcome:
    outcome.seconds = round(time.monotonic() - started, 1)
    if outcome.status == "skipped":
        log.info("retrain skipped: %s", outcome.reason)
    elif outcome.status == "candidate":
        log.info(
            "retrain %s: candidate (passed the artifact and offline gates) in %.0f s", outcome.version, outcome.seconds
        )
    else:
        log.warning("retrain %s: %s: %s", outcome.version, outcome.status, outcome.reason)
    return outcome


class Control:
    """`flywheel up`'s control jobs on its database connection: the nightly retrain, a retrain soon after a
    forget, the A/B evaluation. `stop` kills a run in flight (recorded as failed, incumbent untouched) and
    waits for the jobs to record it, so that the database closes after them."""

    current: ClassVar[Control | None] = None  # what the job store's names (schedule.RETRAIN_REF) reach

    def __init__(self, cfg: Config, con):
        self.cfg, self.con, self.children, self.scheduler = cfg, con, Children(), None

    def start(self):
        """Publish the routing, start the scheduler; returns the nightly job (its next run time)."""
        Control.current = self
        ab.publish_routing(self.cfg, self.con.cursor())
        self.scheduler, job = schedule.start_scheduler(self.cfg)
        schedule.evaluate_ab_every(self.scheduler, self.cfg.abtest.evaluate_every_s)
        return job

    def stop(self) -> None:
        self.children.stop()
        try:
            if self.scheduler is not None:
                self.scheduler.shutdown(wait=True)
        finally:
            self.children.resume()
            Control.current = None if Control.current is self else Control.current

    def retrain(self, on_worker: Callable | None = None, echo: bool = False) -> Outcome:
        return retrain(self.cfg, self.con.cursor(), children=self.children, on_worker=on_worker, echo=echo)

    def retrain_soon(self, delay_s: float = schedule.RETRAIN_AFTER_FORGET_S):
        return schedule.retrain_soon(self.scheduler, delay_s)


def scheduled_retrain() -> None:
    """The nightly job (referenced by name in the persistent job store)."""
    if Control.current is None:
        log.warning("scheduled retrain fired outside a control process; ignored")
        return
    try:
        Control.current.retrain()
    except Exception:
        log.exception("scheduled retrain failed; the incumbent is unchanged")


def scheduled_ab() -> None:
    if Control.current is None:
        return
    try:
        ab.tick(Control.current.cfg, Control.current.con.cursor())
    except Exception:
        log.exception("A/B evaluation failed; the live split is unchanged")
