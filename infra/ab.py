"""Applying A/B decisions: start an experiment for a candidate, evaluate the running one and act on it
(promote, roll back, ramp, continue), publish `routing.json` for serving, and, after a forget, stop serving
every adapter that saw the user. The decisions are `abtest.experiment`'s; the status changes the
registry's; this module applies them together, in one transaction each."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from abtest.routing import Routing
from infra.config import Config
from infra.errors import FlywheelError
from ingest.contracts import BASE

log = logging.getLogger("flywheel.control")


def publish_routing(cfg: Config, con, exp=None) -> Routing:
    """Write routing.json for the registry's live version and the running experiment (if any); serving
    follows it within seconds, without restart."""
    from abtest import experiment as ab
    from retrain import registry
    from serving.routing import publish

    live = registry.live(con)
    routing = ab.routing(
        exp if exp is not None else ab.get(con), live["version"] if live else BASE, registry.paths(con)
    )
    current = cfg.data_dir / "routing.json"
    if not current.exists() or Routing.read(current) != routing:
        publish(cfg.data_dir, routing)
        log.info("routing: %s", ", ".join(f"{v} {s:.0%}" for v, s in routing.split))
    return routing


def start_experiment(cfg: Config, con, challenger: str, now=None):
    from abtest import experiment as ab
    from retrain import registry

    found = registry.get(con, challenger)
    if found is None or found["status"] != "candidate":
        raise FlywheelError(f"{challenger} is not a candidate adapter (see `flywheel adapters list`)")
    if found["tainted"]:
        raise FlywheelError(f"{challenger} is tainted (trained on a forgotten user's data): it is never promoted")
    live = registry.live(con)
    try:
        exp = ab.start(con, live["version"] if live else BASE, challenger, cfg.abtest, now)
    except ValueError as e:
        raise FlywheelError(str(e)) from None
    registry.set_status(con, challenger, "canary", f"in {exp.experiment_id}")
    publish_routing(cfg, con, exp)
    return exp


def _apply(cfg: Config, con, exp, ev, now=None, actor: str = "abtest") -> None:
    """The decision and the registry's status changes, in one transaction."""
    from abtest import experiment as ab
    from curation import audit
    from retrain import registry

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
            audit.append(con, actor, ev.decision, exp.experiment_id, {"reason": ev.reason})
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def tick(cfg: Config, con, now=None) -> list[str]:
    """Start an experiment for a new candidate (when configured), evaluate the running one and apply the
    decision; returns what happened, one line each."""
    from abtest import experiment as ab
    from retrain import registry

    said = []
    exp = ab.get(con)
    if exp is None and cfg.abtest.auto_start:
        candidate = registry.newest_candidate(con)
        if candidate:
            exp = start_experiment(cfg, con, candidate, now)
            said.append(
                f"started {exp.experiment_id}: {exp.challenger} on {exp.share:.0%} of users against {exp.incumbent}"
            )
    if exp is not None:
        challenger = registry.get(con, exp.challenger)
        ev = ab.evaluate(con, exp, cfg.abtest, tainted=bool(challenger and challenger["tainted"]), now=now)
        _apply(cfg, con, exp, ev, now)
        publish_routing(cfg, con)
        said.append(f"{exp.experiment_id}: {ev.decision}: {ev.reason}")
    for line in said:
        log.info("abtest %s", line)
    return said


def stop_experiment(cfg: Config, con, reason: str, actor: str, now=None) -> str:
    """End the running experiment by hand without a decision from the numbers: the challenger is rolled back
    and the incumbent keeps serving (an ML lead's call, or the demo's night ending undecided). The numbers at
    the moment it stopped are kept with the decision, and `actor` in the audit log. Returns what happened."""
    from abtest import experiment as ab

    reason = reason.strip()
    if not reason:
        raise FlywheelError("say why the experiment is stopped (--reason): it goes into the audit log")
    exp = ab.get(con)
    if exp is None:
        raise FlywheelError("no experiment is running")
    numbers = ab.evaluate(con, exp, cfg.abtest, now=now).numbers
    _apply(cfg, con, exp, ab.Evaluation("rollback", f"stopped by {actor}: {reason}", numbers), now, actor)
    publish_routing(cfg, con)
    said = f"{exp.experiment_id}: stopped ({reason}): {exp.challenger} rolled back, {exp.incumbent} serves"
    log.info("abtest %s", said)
    return said


def _end_tainted_experiment(cfg: Config, con) -> list[str]:
    from abtest import experiment as ab
    from curation import audit
    from retrain import registry

    exp = ab.get(con)
    if exp is None:
        return []
    tainted = [v for v in (exp.challenger, exp.incumbent) if v != BASE and (registry.get(con, v) or {}).get("tainted")]
    if not tainted:
        return []
    reason = f"{', '.join(tainted)} trained on a forgotten user's data"
    ab.apply(con, exp, ab.Evaluation("rollback", reason), cfg.abtest)
    challenger_tainted = exp.challenger in tainted
    registry.set_status(con, exp.challenger, "rolled_back" if challenger_tainted else "candidate", reason)
    audit.append(con, "forget", "rollback", exp.experiment_id, {"reason": reason})
    return [f"{exp.experiment_id} ended: {reason}"]


def _replace_tainted_live(con) -> list[str]:
    """A tainted live adapter gives way to its newest untainted ancestor whose files exist (else base)."""
    from curation import audit
    from retrain import registry

    live = registry.live(con)
    found = registry.get(con, live["version"]) if live else None
    if found is None or not found["tainted"]:
        return []
    parent = next(
        (
            a["version"]
            for a in registry.ancestors(con, found["parent"])
            if not a["tainted"] and a["path"] and Path(a["path"]).is_dir()
        ),
        None,
    )
    registry.set_status(con, found["version"], "retired", "tainted: trained on a forgotten user's data")
    if parent is not None:
        registry.set_status(con, parent, "live", f"serves in place of tainted {found['version']}")
    audit.append(con, "forget", "route", found["version"], {"now_serving": parent or BASE})
    return [f"{found['version']} is tainted: {parent or BASE} serves now"]


def serve_untainted(cfg: Config, con) -> list[str]:
    """After a forget, at once: nobody is served by an adapter that saw the user. A tainted live adapter is
    replaced by its newest untainted ancestor whose files exist (else base), a running experiment with a
    tainted arm ends (rolled back), and routing.json is republished; serving follows within seconds. Returns
    what changed, one line each."""
    from retrain import registry

    con.execute("BEGIN TRANSACTION")
    try:
        said = _end_tainted_experiment(cfg, con) + _replace_tainted_live(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    routing = publish_routing(cfg, con)
    # Tainted versions nothing routes to any more lose their files (serving has unloaded them or never will
    # load them again: routing.json no longer names them).
    for version in [v for v in registry.unserved_tainted(con) if v not in routing.adapters]:
        path = registry.drop_files(con, version, "tainted: files deleted after a forget")
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        said.append(f"{version}: files deleted ({path})")
    return said


def adapter_failed(cfg: Config, con, version: str, reason: str) -> list[str]:
    """Serving could not load `version` right (a vLLM server refused it or answered its probe wrongly): its
    experiment ends (rolled back), it is marked failed, and routing.json goes back to what serves. The
    incumbent is untouched. Returns what changed."""
    from abtest import experiment as ab
    from curation import audit
    from retrain import registry

    said = []
    con.execute("BEGIN TRANSACTION")
    try:
        exp = ab.get(con)
        if exp is not None and exp.challenger == version:
            ab.apply(con, exp, ab.Evaluation("rollback", f"serving could not load it: {reason}"), cfg.abtest)
            said.append(f"{exp.experiment_id} ended: {version} could not be loaded")
        found = registry.get(con, version)
        if found is not None and found["status"] != "live":
            registry.set_status(con, version, "failed", f"serving could not load it: {reason}")
            audit.append(con, "serving", "failed", version, {"reason": reason})
            said.append(f"{version} failed: {reason}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    publish_routing(cfg, con)
    for line in said:
        log.warning("serving: %s", line)
    return said
