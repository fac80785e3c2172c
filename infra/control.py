"""The control process's jobs: retrain (curate -> snapshot -> train in a subprocess -> gates -> registry) and
its nightly schedule.

A run never harms the incumbent: training writes only into a staging folder; a run that raises, yields a
NaN/inf loss, is killed, runs out of memory, or writes an empty or unchanged adapter is recorded as
`failed` with its reason and leaves the registry's live version and `routing.json` untouched. One run at a
time across processes (a file lock in the data dir).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infra.config import Config
from ingest.contracts import BASE

log = logging.getLogger("flywheel.control")


@dataclass
class Outcome:
    status: str  # candidate | rejected | failed | skipped
    reason: str | None = None
    version: str | None = None
    snapshot_id: str | None = None
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


class RetrainLock:
    """An exclusive, non-blocking lock on DATA_DIR/retrain.lock (released by the kernel if we die)."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "retrain.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


_children: set[subprocess.Popen] = set()  # training and gate processes running now
_stopped: set[int] = set()  # pids that stop_jobs killed: their runs fail as "stopped", not "killed"
_stopping = threading.Event()  # while set, no new training or gate process starts


def stop_jobs(scheduler=None) -> None:
    """Shutting down: kill the training/gate processes (a run in flight is recorded as failed, the
    incumbent untouched), then wait for the jobs to record it, so the database closes after them."""
    _stopping.set()
    try:
        for proc in list(_children):
            _stopped.add(proc.pid)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if scheduler is not None:
            scheduler.shutdown(wait=True)
    finally:
        _stopping.clear()


def _child(args: list[str], timeout: float, on_start: Callable | None = None, echo: bool = False) -> tuple[int, str, list[str]]:
    """Run `python -m ...` in a fresh process; returns (exit code, last stdout line, last stderr lines).
    A negative code is the signal that ended it (-9: killed, often the kernel's OOM killer)."""
    if _stopping.is_set():
        return -signal.SIGTERM, "", ["stopped: the control process is shutting down"]
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _children.add(proc)
    if on_start:
        on_start(proc)
    tail: deque[str] = deque(maxlen=40)
    out: list[str] = []

    def pump():  # stderr: progress and the failure reason, echoed while it runs
        for line in proc.stderr:
            tail.append(line.rstrip())
            if echo:
                sys.stderr.write(line)
                sys.stderr.flush()

    readers = [threading.Thread(target=pump, daemon=True),
               threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)]
    for r in readers:
        r.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        tail.append(f"timed out after {timeout:g} s")
    finally:
        _children.discard(proc)
    for r in readers:
        r.join(5)
    if proc.pid in _stopped:
        _stopped.discard(proc.pid)
        tail.append("stopped: the control process is shutting down")
    lines = [x for x in out if x.strip()]
    return proc.returncode, lines[-1].strip() if lines else "", list(tail)


def _failure_reason(code: int, tail: list[str]) -> str:
    from retrain.worker import FAILED

    for line in reversed(tail):
        if line.startswith(FAILED):
            return line[len(FAILED):]
        if line.startswith(("timed out after", "stopped: ")):
            return line
    if code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (" (out of memory, or killed by hand)" if name == "SIGKILL" else "")
    return f"exited with code {code}: " + (tail[-1] if tail else "no output")


def _gate(args: list[str], timeout: float) -> dict:
    """Run a gate in a fresh process; a gate that crashes or hangs says no."""
    code, last, tail = _child(args, timeout)
    if code == 0 and last.startswith("{"):
        return json.loads(last)
    return {"ok": False, "reason": _failure_reason(code, tail), "judged": False}


def retrain(cfg: Config, con, *, on_worker: Callable | None = None,
            echo: bool = False) -> Outcome:
    """One run; every outcome (skipped included) is logged, and all but `skipped` are in the registry."""
    from curation import audit, curate, snapshot
    from infra.models import model_hash, resolve_base_model
    from retrain import registry

    started = time.monotonic()
    lock = RetrainLock(cfg.data_dir)
    if not lock.acquire():
        return _done(Outcome("skipped", f"another retrain is running (pid {lock.holder()})"), started)
    try:
        curate.run(con, cfg.curation, actor="retrain")
        try:
            snap = snapshot.build(con, cfg.curation, cfg.data_dir / "snapshots", actor="retrain")
        except ValueError as e:
            return _done(Outcome("skipped", str(e)), started)
        if snap is None:
            return _done(Outcome("skipped", "no approved samples (see `flywheel review list`)"), started)
        live = registry.live(con)
        incumbent = registry.get(con, live["version"]) if live else None
        # A tainted incumbent holds a forgotten user's data: start over from the base model.
        parent = incumbent if incumbent and not incumbent["tainted"] else None
        lineage = registry.ancestors(con, parent["version"]) if parent else []
        seen: set[str] = set()  # samples some earlier run already trained on (passed its gates or not)
        for (path,) in con.execute("SELECT path FROM adapters WHERE path IS NOT NULL").fetchall():
            manifest = Path(path, "flywheel-adapter.json")
            if manifest.exists():
                seen |= set(json.loads(manifest.read_text()).get("sample_ids", []))
        train_ids = snap.manifest["sample_ids"]["train"]
        new = [s for s in train_ids if s not in seen]
        if len(new) < cfg.retrain.min_new_samples:
            return _done(Outcome("skipped", f"{len(new)} new approved samples, fewer than retrain.min_new_samples="
                                            f"{cfg.retrain.min_new_samples}", snapshot_id=snap.snapshot_id), started)
        earlier = []
        for a in lineage:
            row = con.execute("SELECT path FROM snapshots WHERE snapshot_id = ? AND purged_at IS NULL",
                              [a["snapshot_id"]]).fetchone()
            if row and row[0] != str(snap.path) and Path(row[0], "train.parquet").exists():
                earlier.append(row[0])

        base_path = resolve_base_model(cfg.base_model, cfg.data_dir / "models")
        version = registry.next_version(con)
        root = cfg.data_dir / "adapters"
        staging = root / f".staging-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        job = {"version": version, "base_path": str(base_path), "base_model": cfg.base_model,
               "base_hash": model_hash(base_path), "snapshot_dir": str(snap.path), "snapshot_id": snap.snapshot_id,
               "snapshot_hash": snap.content_hash, "snapshot_train_rows": len(train_ids),
               "earlier_snapshots": earlier, "parent_path": parent["path"] if parent else None,
               "parent_version": parent["version"] if parent else None, "out_dir": str(staging / "adapter"),
               "config": cfg.retrain.model_dump(mode="json")}
        (staging / "job.json").write_text(json.dumps(job, indent=1))
        log.info("retrain %s: %d samples (%d new) from %s, parent %s", version, len(train_ids), len(new),
                 snap.snapshot_id, parent["version"] if parent else "none (base model)")
        record = {"parent": job["parent_version"], "base_model": cfg.base_model, "base_hash": job["base_hash"],
                  "snapshot_id": snap.snapshot_id}

        def fail(status: str, reason: str, metrics: dict | None = None, path: str | None = None) -> Outcome:
            registry.register(con, version, status=status, path=path, metrics=metrics or {}, reason=reason, **record)
            audit.append(con, "retrain", status, version, {"reason": reason, "snapshot_id": snap.snapshot_id})
            if path is None:
                shutil.rmtree(staging, ignore_errors=True)
            return _done(Outcome(status, reason, version, snap.snapshot_id, metrics or {}), started)

        code, last, tail = _child(["-m", "retrain.worker", str(staging / "job.json")], cfg.retrain.timeout_s,
                                  on_worker, echo)
        if code != 0:
            return fail("failed", _failure_reason(code, tail))
        metrics = {"train": json.loads(last)}
        artifact_args = ["-m", "retrain.gates", "artifact", str(staging / "adapter"), "--rank", str(cfg.retrain.lora.r)]
        if parent:
            artifact_args += ["--parent", parent["path"]]
        verdict = metrics["artifact"] = _gate(artifact_args, 600)
        if not verdict["ok"]:
            return fail("failed", f"artifact gate: {verdict['reason']}", metrics)
        final = root / version
        os.rename(staging / "adapter", final)
        shutil.rmtree(staging, ignore_errors=True)
        offline_args = ["-m", "retrain.gates", "offline", "--base", str(base_path), "--candidate", str(final),
                        "--snapshot", str(snap.path), "--tolerance", str(cfg.retrain.forgetting_tolerance)]
        if incumbent:
            offline_args += ["--incumbent", incumbent["path"]]
        verdict = metrics["offline"] = _gate(offline_args, 3600)
        if not verdict["ok"]:
            # A gate that crashed or was stopped said nothing about the adapter: the run failed.
            status = "failed" if verdict.get("judged") is False else "rejected"
            return fail(status, f"offline gate: {verdict['reason']}", metrics, str(final))
        registry.register(con, version, status="candidate", path=str(final), metrics=metrics, **record)
        audit.append(con, "retrain", "candidate", version, {"snapshot_id": snap.snapshot_id,
                                                             "offline": verdict.get("candidate")})
        return _done(Outcome("candidate", None, version, snap.snapshot_id, metrics), started)
    finally:
        lock.release()


def _done(outcome: Outcome, started: float) -> Outcome:
    outcome.seconds = round(time.monotonic() - started, 1)
    if outcome.status == "skipped":
        log.info("retrain skipped: %s", outcome.reason)
    elif outcome.status == "candidate":
        log.info("retrain %s: candidate (passed the artifact and offline gates) in %.0f s", outcome.version,
                 outcome.seconds)
    else:
        log.warning("retrain %s: %s: %s", outcome.version, outcome.status, outcome.reason)
    return outcome


# The schedule ---------------------------------------------------------------------------------------------

_context: dict = {}


def scheduled_retrain() -> None:
    """The nightly job (referenced by name in the persistent job store)."""
    cfg, con = _context.get("cfg"), _context.get("con")
    if cfg is None:
        log.warning("scheduled retrain fired outside a control process; ignored")
        return
    try:
        retrain(cfg, con.cursor())
    except Exception:
        log.exception("scheduled retrain failed; the incumbent is unchanged")


def cron(schedule: str):
    """retrain.schedule as an APScheduler trigger, or one line saying what is wrong with it."""
    from apscheduler.triggers.cron import CronTrigger

    from infra.errors import FlywheelError

    try:
        return CronTrigger.from_crontab(schedule)
    except ValueError as e:
        raise FlywheelError(f"retrain.schedule {schedule!r} is not a cron expression: {e}") from None


def start_scheduler(cfg: Config, con):
    """APScheduler in this process with a persistent job store in the data dir: a cron job that runs at
    most once at a time, coalesces missed runs into one, and runs a missed one within the grace time."""
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    _context.update(cfg=cfg, con=con)
    trigger = cron(cfg.retrain.schedule)
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{Path(cfg.data_dir).resolve() / 'scheduler.sqlite'}"),
                   "memory": MemoryJobStore()},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": cfg.retrain.misfire_grace_s},
    )
    scheduler.start()
    job = scheduler.get_job("nightly-retrain")
    if job is None or str(job.trigger) != str(trigger):
        # replace_existing keeps one job; a changed cron takes effect, an unchanged one keeps its
        # stored next run time (so a run missed while we were down is still found and run once).
        scheduler.add_job("infra.control:scheduled_retrain", trigger, id="nightly-retrain", replace_existing=True)
        job = scheduler.get_job("nightly-retrain")
    return scheduler, job


RETRAIN_AFTER_FORGET_S = 60  # forgets that come together (a batch of requests) share one run


def retrain_soon(scheduler, delay_s: float = RETRAIN_AFTER_FORGET_S):
    """Run the retrain once, `delay_s` from now (again from now if already pending): after a forget tainted
    an adapter, so that a model trained without the user replaces its ancestor before the next night."""
    from datetime import datetime, timedelta, timezone

    return scheduler.add_job("infra.control:scheduled_retrain", "date", id="retrain-after-forget",
                             run_date=datetime.now(timezone.utc) + timedelta(seconds=delay_s),
                             replace_existing=True, jobstore="memory")


# A/B -------------------------------------------------------------------------------------------------------

def publish_routing(cfg: Config, con, exp=None) -> dict:
    """Write routing.json for the registry's live version and the running experiment (if any); serving
    follows it within seconds, without restart."""
    from abtest import experiment as ab
    from retrain import registry
    from serving.routing import publish

    live = registry.live(con)
    paths = dict(con.execute("SELECT version, path FROM adapters WHERE path IS NOT NULL").fetchall())
    routing = ab.routing(exp if exp is not None else ab.get(con), live["version"] if live else BASE, paths)
    current = cfg.data_dir / "routing.json"
    if not current.exists() or json.loads(current.read_text()) != routing:
        publish(cfg.data_dir, routing)
        log.info("routing: %s", ", ".join(f"{v} {s:.0%}" for v, s in routing["split"]))
    return routing


def ab_tick(cfg: Config, con, now=None) -> list[str]:
    """Start an experiment for a new candidate (when configured), evaluate the running one and apply the
    decision; returns what happened, one line each."""
    from abtest import experiment as ab
    from curation import audit
    from retrain import registry

    said = []
    exp = ab.get(con)
    if exp is None and cfg.abtest.auto_start:
        row = con.execute("SELECT version FROM adapters WHERE status = 'candidate' AND NOT tainted "
                          "ORDER BY version DESC LIMIT 1").fetchone()
        if row:
            exp = start_experiment(cfg, con, row[0], now)
            said.append(f"started {exp.experiment_id}: {exp.challenger} on {exp.share:.0%} of users against "
                        f"{exp.incumbent}")
    if exp is not None:
        challenger = registry.get(con, exp.challenger)
        ev = ab.evaluate(con, exp, cfg.abtest, tainted=bool(challenger and challenger["tainted"]), now=now)
        con.execute("BEGIN TRANSACTION")
        try:
            ab.apply(con, exp, ev, cfg.abtest, now)
            if ev.decision == "promote":
                if exp.incumbent != BASE:
                    registry.set_status(con, exp.incumbent, "retired", f"replaced by {exp.challenger}")
                registry.set_status(con, exp.challenger, "live", ev.reason)
            elif ev.decision == "rollback":
                registry.set_status(con, exp.challenger, "rolled_back", ev.reason)
            if ev.decision != "continue":
                audit.append(con, "abtest", ev.decision, exp.experiment_id, {"reason": ev.reason})
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        publish_routing(cfg, con)
        said.append(f"{exp.experiment_id}: {ev.decision}: {ev.reason}")
    for line in said:
        log.info("abtest %s", line)
    return said


def start_experiment(cfg: Config, con, challenger: str, now=None):
    from abtest import experiment as ab
    from retrain import registry

    found = registry.get(con, challenger)
    if found is None or found["status"] != "candidate":
        from infra.errors import FlywheelError

        raise FlywheelError(f"{challenger} is not a candidate adapter (see `flywheel adapters list`)")
    if found["tainted"]:
        from infra.errors import FlywheelError

        raise FlywheelError(f"{challenger} is tainted (trained on a forgotten user's data): it is never promoted")
    live = registry.live(con)
    try:
        exp = ab.start(con, live["version"] if live else BASE, challenger, cfg.abtest, now)
    except ValueError as e:
        from infra.errors import FlywheelError

        raise FlywheelError(str(e)) from None
    registry.set_status(con, challenger, "canary", f"in {exp.experiment_id}")
    publish_routing(cfg, con, exp)
    return exp


def start_ab_job(cfg: Config, con, scheduler) -> None:
    """Evaluate experiments every abtest.evaluate_every_s in the control process (not persisted: it is
    re-added at every start)."""
    _context.update(cfg=cfg, con=con)
    scheduler.add_job("infra.control:scheduled_ab", "interval", seconds=cfg.abtest.evaluate_every_s,
                      id="ab-evaluate", jobstore="memory", replace_existing=True, max_instances=1, coalesce=True)


def scheduled_ab() -> None:
    cfg, con = _context.get("cfg"), _context.get("con")
    if cfg is None:
        return
    try:
        ab_tick(cfg, con.cursor())
    except Exception:
        log.exception("A/B evaluation failed; the live split is unchanged")


def serve_untainted(cfg: Config, con) -> list[str]:
    """After a forget, at once: nobody is served by an adapter that saw the user. A tainted live adapter is
    replaced by its newest untainted ancestor whose files exist (else base), a running experiment with a
    tainted arm ends (rolled back), and routing.json is republished; serving follows within seconds. Returns
    what changed, one line each."""
    from pathlib import Path

    from abtest import experiment as ab
    from curation import audit
    from retrain import registry

    said = []
    con.execute("BEGIN TRANSACTION")
    try:
        exp = ab.get(con)
        if exp is not None:
            tainted = [v for v in (exp.challenger, exp.incumbent) if v != BASE and registry.get(con, v)["tainted"]]
            if tainted:
                reason = f"{', '.join(tainted)} trained on a forgotten user's data"
                ab.apply(con, exp, ab.Evaluation("rollback", reason), cfg.abtest)
                challenger = registry.get(con, exp.challenger)
                registry.set_status(con, exp.challenger, "rolled_back" if challenger["tainted"] else "candidate", reason)
                audit.append(con, "forget", "rollback", exp.experiment_id, {"reason": reason})
                said.append(f"{exp.experiment_id} ended: {reason}")
        live = registry.live(con)
        found = registry.get(con, live["version"]) if live else None
        if found is not None and found["tainted"]:
            parent = found["parent"]
            while parent is not None:
                p = registry.get(con, parent)
                if p is not None and not p["tainted"] and p["path"] and Path(p["path"]).is_dir():
                    break
                parent = p["parent"] if p else None
            registry.set_status(con, found["version"], "retired", "tainted: trained on a forgotten user's data")
            if parent is not None:
                registry.set_status(con, parent, "live", f"serves in place of tainted {found['version']}")
            audit.append(con, "forget", "route", found["version"], {"now_serving": parent or BASE})
            said.append(f"{found['version']} is tainted: {parent or BASE} serves now")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    routing = publish_routing(cfg, con)
    # Tainted versions nothing routes to any more lose their files (serving has unloaded them or never will
    # load them again: routing.json no longer names them).
    import shutil

    gone = [v for (v,) in con.execute("SELECT version FROM adapters WHERE tainted AND path IS NOT NULL "
                                      "AND status NOT IN ('live', 'canary') ORDER BY version").fetchall()
            if v not in routing["adapters"]]
    for version in gone:
        path = registry.drop_files(con, version, "tainted: files deleted after a forget")
        shutil.rmtree(path, ignore_errors=True)
        said.append(f"{version}: files deleted ({path})")
    return said
