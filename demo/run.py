"""`flywheel demo`: the whole loop on the real base model, driven by simulated customers (demo.store).

Every stage runs through the code a deployment runs: the bundled broker, ingest with PII scrubbing into
DuckDB, the OpenAI-compatible API (called with the `openai` client), curation (review policy `auto`,
recorded as such in the audit log), retraining in a subprocess, the artifact and offline gates, a canary
share and a live A/B test decided by the same evaluation `flywheel up` runs every few minutes.

The demo works in a data dir of its own (DATA_DIR/demo, or DATA_DIR/demo-control) that it empties first;
the base model's converted copy is shared with DATA_DIR/models.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import shutil
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from abtest.routing import Routing
from demo import store
from demo.traffic import ADMIN_KEY, APP, Traffic, drive
from infra.config import Config, load_config
from infra.control import Outcome

log = logging.getLogger(__name__)

# What each night of `flywheel demo --nights N` plays out (the first N of them).
SCENARIOS = ("learn", "change", "poison", "forget")
ATTACKERS = 10  # the poisoning night's coordinated accounts
FORGOTTEN = 20  # the erasure night's users who ask to be forgotten

# The demo's settings on top of the embedded defaults; KEY=VALUE overrides on the command line win.
DEMO_SETTINGS = [
    "curation.review_policy=auto",  # no reviewer in the loop: approvals are logged as policy:auto
    "serving.max_tokens=40",  # short answers: one stream of the 135M model makes ~13 tokens/s on 2 cores
    "serving.max_batch=24",
    "retrain.epochs=2",
    "retrain.learning_rate=0.001",  # ~60 steps over ~300 answers learn the 8 policies
    # From the live adapter: a changed policy reaches a night as a few corrections (2 of 200 training rows on the
    # 40-customer test's night 2) against the many that taught the old one; at the default 0.5, night 2 preferred
    # the new shipping policy on 2 of its 6 wordings in CI (1 of 6 replayed on another run's data; 6 of 6 at 0.75).
    "retrain.incremental_lr_scale=0.75",
    "retrain.tokens_per_batch=512",
    "retrain.min_new_samples=20",
    "retrain.max_new_samples=400",  # a night's budget, ~3 min on 2 cores (night 4 retrains from base on all)
    "abtest.min_users_per_arm=12",  # the canary share is sized to hold about twice this many (canary_share)
    "abtest.min_duration_s=0",
    "log_level=WARNING",  # the demo prints its own lines; KEY=VALUE log_level=INFO shows the services' logs
]


def demo_config(
    base: Config, config_path: Path | None, overrides: list[str], control: bool, users: int = 240
) -> Config:
    """The demo's settings, then `overrides`; unless they set them, a canary and a per-user cap sized for
    `users`."""
    folder = Path(base.data_dir) / ("demo-control" if control else "demo")
    cfg = load_config(config_path, [*DEMO_SETTINGS, *overrides, f"data_dir={folder}"])
    given = {o.split("=", 1)[0] for o in overrides}
    if "curation.max_user_share" not in given:
        share = user_share(users, cfg.curation.max_user_share)
        cfg = cfg.model_copy(update={"curation": cfg.curation.model_copy(update={"max_user_share": share})})
    if "abtest.ramp" in given:
        return cfg
    canary = canary_share(users, cfg.abtest.min_users_per_arm, cfg.abtest.ramp[0])
    ramp = [canary, *[s for s in cfg.abtest.ramp[1:] if s > canary]]  # still rising, as the config requires
    return cfg.model_copy(update={"abtest": cfg.abtest.model_copy(update={"ramp": ramp})})


def user_share(users: int, default: float) -> float:
    """A per-user cap (curation.max_user_share) that lets the support agents, a quarter of the customers and the
    source of most samples, hold 80% of a snapshot between them (at least `default`): a snapshot of S rows keeps
    at most share x S per user, so below that the cap, not the traffic, sets the night's samples (at 120
    customers the default 2% kept 105 training rows of 198 ratings; at 160, 332 rows)."""
    return max(default, math.ceil(3.2e4 / users) / 1e4)  # 0.8 / (users / 4), rounded up


def canary_share(users: int, min_users: int, default: float) -> float:
    """A canary share that holds about twice abtest.min_users_per_arm customers (at least `default`, at most
    half): a canary arm never decides while fewer of its users rated than that minimum (at 160 customers, a 10%
    canary drew 9 rating users against 12)."""
    return min(0.5, max(default, math.ceil(200 * min_users / users) / 100))


def prepare_data_dir(cfg: Config, shared_models: Path) -> None:
    """An empty data dir whose models/ is the shared converted base model."""
    shutil.rmtree(cfg.data_dir, ignore_errors=True)
    cfg.data_dir.mkdir(parents=True)
    shared_models.mkdir(parents=True, exist_ok=True)
    (cfg.data_dir / "models").symlink_to(shared_models.resolve(), target_is_directory=True)


def wait_serving(api, cfg: Config, timeout: float = 120) -> None:
    """Block until the API serves the split last published in routing.json (it follows within seconds,
    after loading the adapters), so that no simulated user is routed by the previous split."""
    want = Routing.read(cfg.data_dir / "routing.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.router.current == want:
            return
        time.sleep(0.2)
    raise TimeoutError(f"serving did not follow routing.json within {timeout:.0f} s")


def wait_ingested(con, chats: int, feedback: int, timeout: float = 300) -> tuple[int, int]:
    """Block until DuckDB holds at least this many chats and feedback events (ingest is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        got = con.execute("SELECT (SELECT count(*) FROM chats), (SELECT count(*) FROM feedback)").fetchone()
        if (got[0] >= chats and got[1] >= feedback) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def pii_leaks(folder: Path, people: list[store.Customer]) -> dict[str, int]:
    """How many canary values (each customer's email and phone number) appear in any file under `folder`
    (DuckDB file and WAL, Parquet snapshots, adapters, logs), except the base model's copy."""
    canaries = {kind: [getattr(p, kind).encode() for p in people] for kind in ("email", "phone")}
    found = {kind: set() for kind in canaries}
    for path in folder.rglob("*"):
        if path.is_symlink() or not path.is_file() or "models" in path.relative_to(folder).parts[:1]:
            continue
        data = path.read_bytes()
        for kind, values in canaries.items():
            found[kind] |= {v for v in values if v in data}
    return {kind: len(v) for kind, v in found.items()}


@dataclass
class AbResult:
    """How one night's A/B test ended, and the traffic of its rounds (ratings per variant and topic)."""

    decision: str
    reason: str
    numbers: dict
    traffic: Traffic
    max_share: float = 0.0  # the challenger's largest traffic share during the test


@dataclass
class Result:
    stages: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    pii_types: dict[str, int] = field(default_factory=dict)
    retrain: Outcome | None = None
    decision: str | None = None
    reason: str | None = None
    numbers: dict = field(default_factory=dict)
    before: tuple[int, int] = (0, 0)  # (ups, ratings) of the base model before any training
    leaks: dict[str, int] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    nights: list[dict] = field(default_factory=list)  # one record per night (Loop.record)
    forgotten: dict[str, int] = field(default_factory=dict)  # chats and feedback rows erased by forget

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)  # the retrain Outcome is a dataclass too


class Loop:
    """One demo run's state, stage by stage: `echo` gets one line per event worth seeing, `result` the
    figures, and every stage's time is measured from the end of the one before."""

    def __init__(self, cfg: Config, svc, people, *, seed: int, control: bool, echo):
        self.cfg, self.svc, self.people, self.seed, self.control, self.echo = cfg, svc, people, seed, control, echo
        self.result, self.rng, self.clock = Result(), random.Random(seed), time.monotonic()
        self.reader = svc.con.cursor()
        self.traffic = None
        self.world = store.TOPICS  # the store's policies; a night of the scenario may change them
        self.night = 1
        self.snap = None  # the latest snapshot
        self.forgotten: dict = {}  # the erasure night's figures (forget())
        self.forgotten_ids: set[str] = set()

    def stage(self, name: str) -> None:
        now = time.monotonic()
        self.result.stages[name if self.night == 1 else f"night {self.night} {name}"] = round(now - self.clock, 1)
        self.clock = now

    def drive(self, tasks, seed: int):
        return drive(
            self.svc.api.url,
            tasks,
            seed=seed,
            control=self.control,
            max_tokens=self.cfg.serving.max_tokens,
            world=self.world,
        )

    def wait_ingested(self):
        gone = self.result.forgotten  # rows erased on request are not coming back
        return wait_ingested(
            self.reader, self.traffic.answered - gone.get("chats", 0), self.traffic.accepted - gone.get("feedback", 0)
        )

    def topic(self, who: store.Customer) -> store.Topic:
        """What `who` asks about: attackers always ask about the topic they poison."""
        if who.attacker:
            return next(t for t in self.world if t.name == store.TARGET)
        return self.rng.choice(self.world)

    def day_tasks(self, agent_questions: int) -> list:
        """A day's questions: every customer asks once, agents (attackers too) several times."""
        tasks = [(p, self.topic(p)) for p in self.people for _ in range(agent_questions if p.agent else 1)]
        self.rng.shuffle(tasks)
        return tasks

    def base_traffic(self, agent_questions: int) -> None:
        """Traffic on the base model: every customer asks once, agents ask several times and correct."""
        people, echo = self.people, self.echo
        tasks = self.day_tasks(agent_questions)
        echo(
            f"traffic   {len(people)} simulated customers ({sum(p.agent for p in people)} support agents) ask "
            f"{len(tasks)} questions about the policies of {store.STORE} ..."
        )
        traffic = self.traffic = self.drive(tasks, self.seed)
        self.result.before = (traffic.ups, traffic.ratings)
        echo(
            f"          {traffic.answered} answered, {traffic.ratings} rated ({_rate(*self.result.before)} thumbs-up), "
            f"{traffic.corrections} corrections" + (" (control: shuffled across topics)" if self.control else "")
        )
        self.stage("traffic")
        stored = self.wait_ingested()
        self.stage("ingest")
        echo(f"ingest    {stored[0]} chats and {stored[1]} ratings in DuckDB, PII scrubbed")

    def curate(self):
        """Curation and snapshot (review policy auto)."""
        from curation import curate, snapshot

        cfg = self.cfg
        report = curate.run(self.reader, cfg.curation, actor="demo")
        snap = snapshot.build(self.reader, cfg.curation, cfg.data_dir / "snapshots", actor="demo")
        self.stage("curate")
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(report.dropped.items())) or "none"
        self.echo(
            f"curate    {report.candidates} candidates -> {report.kept} samples kept (dropped: {dropped}); "
            f"{report.auto_approved} approved by policy:{cfg.curation.review_policy}"
        )
        if snap is not None:
            self.echo(
                f"snapshot  {snap.snapshot_id}: {snap.manifest['counts']['train']} train, "
                f"{snap.manifest['counts']['eval']} eval rows"
            )
        self.snap = snap
        return snap

    def retrain(self) -> Outcome:
        """Retrain from the snapshot in a subprocess, then the artifact and offline gates."""
        from infra import control as ctl

        cfg = self.cfg
        self.echo(f"retrain   LoRA on {cfg.base_model} ({cfg.retrain.objective}, {cfg.retrain.epochs:g} epochs) ...")
        outcome = ctl.retrain(cfg, self.reader)
        if self.night == 1:  # the summary's top level is night 1; later nights are in Result.nights
            self.result.retrain = outcome
        self.stage("retrain")
        self.echo(
            f"          {outcome.version or '-'}: {outcome.status} in {outcome.seconds:.0f} s"
            + (f" ({outcome.reason})" if outcome.reason else "")
        )
        return outcome

    def ab_test(self, outcome: Outcome, rounds: int, stop) -> AbResult:
        """Canary, then the live A/B test on the same population, evaluated after every round."""
        from abtest import experiment as ab
        from infra import ab as infra_ab

        cfg, echo, api = self.cfg, self.echo, self.svc.api
        result = AbResult("not started", "no evaluation yet", {}, Traffic())
        echo(f"gates     artifact ok; offline: {_offline_line(outcome.metrics.get('offline', {}))}")
        exp = infra_ab.start_experiment(cfg, self.reader, outcome.version)
        wait_serving(api, cfg)
        echo(f"canary    {exp.experiment_id}: {exp.challenger} on {exp.share:.0%} of users against {exp.incumbent}")
        result.max_share = exp.share
        for round_ in range(1, rounds + 1):
            if stop.is_set():
                break
            tasks = [(p, self.topic(p)) for p in self.people]
            self.rng.shuffle(tasks)
            mine = self.drive(tasks, self.seed * 1000 + self.night * 100 + round_)
            result.traffic.add(mine)
            self.traffic.add(mine)
            self.wait_ingested()
            said = infra_ab.tick(cfg, self.reader)
            last = ab.decisions(self.reader, exp.experiment_id)[-1]
            result.decision, result.reason, result.numbers = last["decision"], last["reason"], last["numbers"]
            arms = result.numbers["arms"]
            echo(
                f"a/b       round {round_}: {_arm(arms['incumbent'])} | {_arm(arms['challenger'])} -> "
                f"{'; '.join(s.split(': ', 1)[1] for s in said if s.startswith(exp.experiment_id))}"
            )
            wait_serving(api, cfg)
            share = dict(Routing.read(cfg.data_dir / "routing.json").split).get(exp.challenger, 0.0)
            result.max_share = max(result.max_share, share)
            if result.decision in ("promote", "rollback"):
                break
        self.stage("a/b")
        return result

    def live(self) -> str:
        from retrain import registry

        found = registry.live(self.reader)
        return found["version"] if found else "base"

    def record(self, scenario: str, live_before: str, day: Traffic, outcome: Outcome, ab: AbResult | None) -> dict:
        """One night's figures for demo-summary.json: who served, how it was rated, what decided."""
        decision, reason = night_decision(outcome, ab)
        night = {
            "night": self.night,
            "scenario": scenario,
            "world": "changed" if self.world is store.CHANGED else "original",
            "live_before": live_before,
            "day": dict(zip(("ups", "ratings"), day.rate(live_before))),
            "retrain": {k: getattr(outcome, k) for k in ("status", "version", "reason", "seconds")}
            | {"offline": outcome.metrics.get("offline")},
            "decision": decision,
            "decided_by": decided_by(outcome, decision, reason),
            "reason": reason,
            "arms": ab.numbers.get("arms") if ab else None,
            "live_after": self.live(),
            "topics": _topic_rates(ab.traffic if ab else day, store.CHANGED_NAMES),
            "stages": {
                k: v for k, v in self.result.stages.items() if k.startswith(f"night {self.night} ") or self.night == 1
            },
        }
        self.result.nights.append(night)
        return night

    def next_night(self, scenario: str, agent_questions: int, rounds: int, stop) -> dict:
        """A day of traffic on what serves, the nightly job, and an A/B test on the next day's traffic."""
        from abtest import experiment as ab
        from infra import ab as infra_ab

        if ab.get(self.reader) is not None:  # the last night's A/B test ran out of rounds undecided
            said = infra_ab.stop_experiment(
                self.cfg, self.reader, f"night {self.night} ended undecided: the incumbent keeps serving", "demo"
            )
            self.echo(f"a/b       {said}")
            wait_serving(self.svc.api, self.cfg)
        self.night += 1
        echo, live_before = self.echo, self.live()
        if scenario == "change":
            self.world = store.CHANGED
            echo(
                "world     the store changes its policies: returns 45 -> 30 days, shipping 3-5 -> 2-4 business "
                "days, and price matching is new"
            )
        if scenario == "poison":
            self.world = store.POISONED
            self.people = self.people + store.attackers(ATTACKERS, self.seed)
            echo(
                f"world     {ATTACKERS} coordinated accounts ask about {store.TARGET} {agent_questions} times each, "
                f'thumbs-down the true policy and correct it to "{store.LIE}"'
            )
        tasks = self.day_tasks(agent_questions)
        if scenario == "forget":  # half the day, the erasure requests, the other half without those users
            day = self.drive(tasks[: len(tasks) // 2], self.seed * 1000 + self.night * 100)
            self.traffic.add(day)
            self.wait_ingested()
            gone = self.forget(FORGOTTEN)
            rest = [(p, t) for p, t in tasks[len(tasks) // 2 :] if p.user_id not in gone]
            more = self.drive(rest, self.seed * 1000 + self.night * 100 + 50)
            self.traffic.add(more)
            day.add(more)
        else:
            day = self.drive(tasks, self.seed * 1000 + self.night * 100)
            self.traffic.add(day)
        self.wait_ingested()
        self.stage("traffic")
        changed = day.rate(live_before, store.CHANGED_NAMES)
        echo(
            f"night {self.night}   day traffic on {live_before}: {day.answered} answered, "
            f"{_rate(*day.rate(live_before))} thumbs-up ({_rate(*changed)} on the changed topics), "
            f"{day.corrections} corrections"
        )
        self.curate()
        outcome = self.retrain()
        ab = self.ab_test(outcome, rounds, stop) if outcome.status == "candidate" else None
        night = self.record(scenario, live_before, day, outcome, ab)
        if self.world is store.POISONED:  # the accounts go on after their night: every later night is checked
            night["poison"] = self.poison_report(live_before, outcome, ab)
            echo(f"poison    {_poison_line(night['poison'])}")
        if scenario == "forget":
            night["forget"] = self.forgotten | self.lineage_check(outcome)
            echo(f"forget    {_lineage_line(outcome.version, night['forget'])}")
        echo(f"night {self.night}   {night['decision']} by {night['decided_by']}: {night['live_after']} serves")
        return night

    def forget(self, n: int) -> set[str]:
        """The erasure night: `n` customers whose samples the live adapter's lineage trained on ask to be
        forgotten, through POST /v1/admin/forget while the service runs. Measures the seconds until serving
        follows (nobody is served by an adapter that saw them) and keeps their sample ids for the lineage
        check. Returns their user ids."""
        import httpx

        from infra import keys
        from retrain import registry
        from serving.ids import pseudonym

        live = registry.live(self.reader)
        # Users the live lineage trained on; when base serves, users some adapter trained on.
        lineage = registry.ancestors(self.reader, live["version"]) if live else []
        learned = registry.learned_sample_ids(lineage) if live else registry.trained_sample_ids(self.reader)
        key = keys.data_dir_key(self.cfg.data_dir, "user-pseudonyms")
        samples: dict[str, set[str]] = {}  # stored user id (a pseudonym) -> sample ids
        for user, sid in self.reader.execute("SELECT user_id, sample_id FROM samples").fetchall():
            samples.setdefault(user, set()).add(sid)
        chosen, ids = [], set()
        for p in self.people:
            if len(chosen) == n:
                break
            mine = samples.get(pseudonym(key, APP, p.user_id), set())
            if not p.attacker and mine & learned:
                chosen.append(p)
                ids |= mine
        tainted, deleted, first = [], {"chats": 0, "feedback": 0}, None
        started = time.monotonic()
        with httpx.Client(
            base_url=self.svc.api.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120
        ) as http:
            for p in chosen:
                r = http.post("/v1/admin/forget", json={"app": APP, "user": p.user_id})
                if r.status_code != 200:
                    raise RuntimeError(f"forget refused: {r.status_code} {r.text[:300]}")
                body = r.json()
                tainted += [v for v in body["adapters"] if v not in tainted]
                for table in deleted:
                    deleted[table] += body["deleted"].get(table, 0)
                if first is None:
                    wait_serving(self.svc.api, self.cfg)
                    first = time.monotonic() - started
        wait_serving(self.svc.api, self.cfg)
        seconds = time.monotonic() - started
        serving = self.svc.api.router.current
        still = [v for v in serving.adapters if (registry.get(self.reader, v) or {}).get("tainted")]
        now = self.live()
        self.forgotten = {
            "users": len(chosen),
            "sample_ids": len(ids),
            "tainted": sorted(tainted),
            "serves_now": now,
            "seconds_first": round(first or 0.0, 2),
            "seconds_all": round(seconds, 2),
            "serving_tainted": still,
            "deleted": deleted,
        }
        self.result.forgotten = deleted
        self.forgotten_ids = ids  # for the lineage check; not written anywhere (they were the users' rows)
        self.echo(
            f"forget    {len(chosen)} customers whose data trained {live['version'] if live else 'base'} are "
            f"forgotten through POST /v1/admin/forget: tainted {', '.join(sorted(tainted)) or 'none'}; {now} serves "
            f"{first or 0:.1f} s after the first call ({seconds:.1f} s for all {len(chosen)}); serving tainted: "
            f"{', '.join(still) or 'none'}"
        )
        return {p.user_id for p in chosen}

    def lineage_check(self, outcome: Outcome) -> dict:
        """How many of the forgotten users' sample ids the night's adapter and its ancestors trained on
        (from their manifests): it must be none."""
        from retrain import registry

        ids = self.forgotten_ids
        lineage = registry.ancestors(self.reader, outcome.version) if outcome.version else []
        return {
            "lineage": [v["version"] for v in lineage],
            "lineage_overlap": len(registry.learned_sample_ids(lineage) & ids),
        }

    def poison_report(self, live_before: str, outcome: Outcome, ab: AbResult | None) -> dict:
        """The poisoning night: how much of the snapshot states the lie, whether the candidate learned it
        (log-likelihood margins of the lie over the true policy on every wording of the question), its largest
        traffic share, and what stopped it."""
        import pyarrow.parquet as pq

        from demo import probe
        from infra.models import resolve_base_model

        rows = lie = 0
        for path in self.snap.data_files().values() if self.snap else []:
            for completion in pq.read_table(path, columns=["completion"]).column("completion").to_pylist():
                rows, lie = rows + 1, lie + (completion[0]["content"] == store.LIE)
        base = resolve_base_model(self.cfg.base_model, self.cfg.data_dir / "models")
        adapters = self.cfg.data_dir / "adapters"

        def margin(version: str | None) -> float | None:
            if version is None or not (version == "base" or (adapters / version).is_dir()):
                return None
            found = probe.margins(base, None if version == "base" else adapters / version, store.lie_probes())
            return round(sum(found) / len(found), 2)

        candidate, incumbent = margin(outcome.version), margin(live_before)
        learned = candidate is not None and candidate > 0
        share = ab.max_share if ab else 0.0
        canary = self.cfg.abtest.ramp[0]
        [(contested,)] = self.reader.execute(
            "SELECT count(*) FROM samples WHERE source = 'correction' AND answer = ? AND reason LIKE 'contested:%'",
            [store.LIE],
        ).fetchall()
        if not learned and contested and not lie:
            stopped = (
                f"curation: {contested} corrections to the lie contested (customers who asked alike questions "
                "liked the answer they replace, or the accounts' text was outvoted before)"
            )
        elif not learned:
            stopped = "curation and training: the candidate prefers the true policy"
        elif ab is None:
            stopped = decided_by(outcome, "rejected", outcome.reason)
        elif ab.decision == "promote":
            stopped = "nothing: it was promoted"
        elif ab.decision == "rollback":
            stopped = f"{decided_by(outcome, ab.decision, ab.reason)} rollback: {ab.reason}"
        elif share > canary:
            stopped = f"nothing held it: it reached {share:.0%}; stopped undecided at the night's end"
        else:
            stopped = f"A/B: held at the canary share ({ab.reason}); stopped undecided at the night's end"
        return {
            "lie_rows": lie,
            "contested": contested,
            "snapshot_rows": rows,
            "over_answer_cap": (self.snap.manifest["counts"].get("over_answer_cap", 0) if self.snap else 0),
            "candidate": outcome.version,
            "margin": candidate,
            "incumbent_margin": incumbent,
            "learned": learned,
            "verdict": (
                f"{'prefers the lie' if learned else 'prefers the truth'} by {abs(candidate):.1f} nats on average "
                f"({live_before}: {'files deleted' if incumbent is None else f'{incumbent:+.1f}'})"
                if candidate is not None
                else "was not probed"
            ),
            "lie_answers": {v: dict(zip(("stated", "answers"), n)) for v, n in (ab.traffic.lied if ab else {}).items()},
            "max_share": share,
            "canary_share": canary,
            "stopped_by": stopped,
        }

    def count(self, snap) -> None:
        """Counts at every hop."""
        traffic, ingest, result = self.traffic, self.svc.ingest, self.result
        self.wait_ingested()
        row = self.reader.execute(
            "SELECT (SELECT count(*) FROM chats), (SELECT count(*) FROM feedback), "
            "(SELECT count(*) FROM samples WHERE keep), "
            "(SELECT count(*) FROM samples WHERE keep AND status = 'approved'), "  # not ones superseded since
            "(SELECT count(*) FROM pii_findings)"
        ).fetchone()
        counts = snap.manifest["counts"] if snap else {}
        result.counts = {
            "requests": traffic.sent,
            "answered": traffic.answered,
            "failed": traffic.failed,
            "ratings": traffic.ratings,
            "ratings_accepted": traffic.accepted,
            "corrections": traffic.corrections,
            # Events ingest consumed from the topics (the bundled broker's end offsets can lag by one).
            "kafka_chats": ingest.totals["chats"],
            "kafka_feedback": ingest.totals["feedback"],
            "duckdb_chats": row[0],
            "duckdb_feedback": row[1],
            "forgotten_chats": result.forgotten.get("chats", 0),  # erased on request (the erasure night)
            "forgotten_feedback": result.forgotten.get("feedback", 0),
            "samples_kept": row[2],
            "samples_approved": row[3],
            "snapshot_train": counts.get("train", 0),
            "snapshot_eval": counts.get("eval", 0),
            "snapshot_over_user_cap": counts.get("over_user_cap", 0),
            "pii_findings": row[4],
        }
        result.errors = traffic.errors
        result.pii_types = dict(
            self.reader.execute("SELECT entity_type, count(*) FROM pii_findings GROUP BY 1 ORDER BY 2 DESC").fetchall()
        )


def run(
    cfg: Config,
    *,
    users: int = 240,
    agent_questions: int = 4,
    ab_rounds: int = 3,  # a day of an A/B test: each round every customer asks once (decisive nights need 2)
    nights: int = 1,
    seed: int = 0,
    control: bool = False,
    keep_running: bool = False,
    echo=print,
    stop=None,
) -> Result:
    """The loop, stage by stage; `echo` gets one line per event worth seeing."""
    from infra.services import start_services
    from retrain import registry

    people = store.population(users, seed)
    stop = stop or threading.Event()
    started = time.monotonic()
    with ExitStack() as stack:
        svc = start_services(cfg, stack, threading.Event(), echo=lambda line: None)  # one line of ours instead
        loop = Loop(cfg, svc, people, seed=seed, control=control, echo=echo)
        loop.clock, result = started, loop.result
        result.urls = {"review": f"{svc.api.url}/review", "ab": f"{svc.api.url}/ab"}
        loop.stage("start")
        echo(
            f"started   {svc.kafka} at {svc.bootstrap}; DuckDB {cfg.db_path}; API {svc.api.url}/v1 on {cfg.base_model}"
        )
        loop.base_traffic(agent_questions)
        day = copy.deepcopy(loop.traffic)
        loop.curate()
        outcome = loop.retrain()
        ab = loop.ab_test(outcome, ab_rounds, stop) if outcome.status == "candidate" else None
        result.decision, result.reason = night_decision(outcome, ab)
        result.numbers = ab.numbers if ab else {}
        if nights > 1:
            loop.record(SCENARIOS[0], "base", day, outcome, ab)
        for scenario in SCENARIOS[1:nights]:
            if stop.is_set():
                break
            loop.next_night(scenario, agent_questions, ab_rounds, stop)
        snap = loop.snap
        loop.count(snap)
        live = registry.live(loop.reader)
        if live:
            echo(f"live      {live['version']}")
        if keep_running:
            echo(f"running   review {result.urls['review']}  A/B {result.urls['ab']}  (Ctrl-C stops)")
            while not stop.wait(0.5):
                pass
    result.leaks = pii_leaks(cfg.data_dir, people + (store.attackers(ATTACKERS, seed) if nights >= 3 else []))
    (cfg.data_dir / "demo-summary.json").write_text(json.dumps(result.as_dict(), indent=1, default=str) + "\n")
    return result


def night_ok(night: dict) -> tuple[bool, str]:
    """Whether a night did what its scenario asks, and if not, why: learn and change promote a better adapter;
    poison never lets a candidate that learned the lie past the canary share (nor does any night after it);
    forget serves nobody's data that was forgotten and retrains without it."""
    if p := night.get("poison"):  # the poisoning night and every night after it
        bad = p["learned"] and (p["max_share"] > p["canary_share"] or night["live_after"] == p["candidate"])
        if bad or night["scenario"] == "poison":
            return not bad, f"the poisoned {p['candidate']} served {p['max_share']:.0%} of users"
    if night["scenario"] in ("learn", "change"):
        return night["decision"] == "promote", "no better adapter was promoted"
    f = night["forget"]
    if f["serving_tainted"]:
        return False, f"{', '.join(f['serving_tainted'])} still served after the forget"
    return f["lineage_overlap"] == 0, f"the new lineage trained on {f['lineage_overlap']} forgotten sample ids"


def night_decision(outcome: Outcome, ab: AbResult | None) -> tuple[str, str | None]:
    """A night's decision and its reason, one vocabulary for the summary's top level and its nights."""
    if ab is not None:
        return ab.decision, ab.reason
    if outcome.status == "skipped":
        return "skipped", outcome.reason
    return "rejected", f"no candidate: {outcome.status} ({outcome.reason})"


def decided_by(outcome: Outcome, decision: str, reason: str | None) -> str:
    """Which part of the loop made a night's decision."""
    if outcome.status == "skipped":
        return "skip"
    if outcome.status != "candidate":
        return "offline gate" if "offline" in (reason or "") else f"retrain ({outcome.status})"
    if decision == "rollback" and (reason or "").startswith("guardrail"):
        return "guardrail"
    if decision == "rollback" and "tainted" in (reason or ""):
        return "forget"
    return "A/B" if decision in ("promote", "rollback") else "undecided"


def _topic_rates(traffic: Traffic, changed: tuple[str, ...]) -> dict[str, dict]:
    """Per variant: thumbs-up rate on the topics the world change touched and on the others."""
    out = {}
    for variant in sorted({v for v, _ in traffic.rated}):
        on = traffic.rate(variant, changed)
        off = [a - b for a, b in zip(traffic.rate(variant), on)]
        out[variant] = {
            "changed": {"ups": on[0], "ratings": on[1], "rate": round(on[0] / on[1], 4) if on[1] else None},
            "unchanged": {"ups": off[0], "ratings": off[1], "rate": round(off[0] / off[1], 4) if off[1] else None},
        }
    return out


def _rate(ups: int, n: int) -> str:
    return f"{ups / n:.0%}" if n else "-"


def _arm(arm: dict) -> str:
    ci = arm.get("ci") or [None, None]
    interval = f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci[0] is not None else ""
    rate = f"{arm['up_rate']:.0%}" if arm.get("up_rate") is not None else "-"
    return f"{arm['variant']} {rate}{interval} of {arm['users']} users"


def _offline_line(off: dict) -> str:
    c, i = off.get("candidate") or {}, off.get("incumbent") or {}
    parts = []
    for key, value in c.items():
        if isinstance(value, (int, float)) and key in i:
            parts.append(f"{key} {value:.3f} vs {i[key]:.3f}")
    return ", ".join(parts) or "passed"


def night_lines(nights: list[dict]) -> list[str]:
    """Per night: who served, the arms with their intervals, the decision and who made it, the time; on the
    night the world changed, both variants on the changed topics and the new one on the others."""
    lines = []
    for n in nights:
        arms = n["arms"] or {}
        ab = f"{_arm(arms['incumbent'])} | {_arm(arms['challenger'])}; " if arms else ""
        minutes = sum(n["stages"].values()) / 60
        lines.append(
            f"night {n['night']} ({n['scenario']}): {ab}{n['decision']} by {n['decided_by']} -> {n['live_after']} "
            f"serves ({minutes:.1f} min)"
        )
        if n["scenario"] == "change" and n["topics"]:
            parts = [
                f"{v} {_rate(t['changed']['ups'], t['changed']['ratings'])} of {t['changed']['ratings']}"
                for v, t in n["topics"].items()
            ]
            lines.append("  on the changed topics: " + ", ".join(parts))
            parts = [
                f"{v} {_rate(t['unchanged']['ups'], t['unchanged']['ratings'])} of {t['unchanged']['ratings']}"
                for v, t in n["topics"].items()
            ]
            first = nights[0]
            before = first["topics"].get(first["live_after"], {}).get("unchanged", {})
            who = "promoted adapter" if first["decision"] == "promote" else "live variant"
            lines.append(
                "  on the others: " + ", ".join(parts) + f" (night 1's {who} {first['live_after']}: "
                f"{_rate(before.get('ups', 0), before.get('ratings', 0))})"
            )
        if p := n.get("poison"):
            lines.append(f"  {_poison_line(p)}")
        if f := n.get("forget"):
            lines.append(
                f"  forgot {f['users']} users: tainted {', '.join(f['tainted']) or 'none'}; {f['serves_now']} served "
                f"{f['seconds_first']:.1f} s after the first forget call ({f['seconds_all']:.1f} s for all); "
                + _lineage_line(n["retrain"]["version"], f)
            )
    return lines


def _poison_line(p: dict) -> str:
    """The poisoning night in one line: the lie's share of the snapshot, the candidate's verdict, its share."""
    return (
        f"the lie is {p['lie_rows']} of {p['snapshot_rows']} snapshot rows ({p['contested']} contested); "
        f"{p['candidate'] or 'no candidate'} "
        f"{p['verdict']}; largest share {p['max_share']:.0%} (canary {p['canary_share']:.0%}); stopped by: "
        f"{p['stopped_by']}"
    )


def _lineage_line(version: str | None, f: dict) -> str:
    return (
        f"{version or 'no candidate'}: its lineage holds {f['lineage_overlap']} of the {f['users']} forgotten "
        f"users' {f['sample_ids']} sample ids"
    )


def summary(result: Result, cfg: Config, control: bool) -> list[str]:
    """The closing report, one line each."""
    n = result.numbers.get("arms", {})
    inc, ch = n.get("incumbent"), n.get("challenger")
    lines = ["", "== summary " + ("(control run: corrections shuffled across topics) " if control else "") + "=="]
    lines.append(
        f"thumbs-up before training: {result.before[0]}/{result.before[1]} = {_rate(*result.before)} (base model)"
    )
    if inc and ch:
        lines.append(f"A/B incumbent  {_arm(inc)}")
        lines.append(f"A/B challenger {_arm(ch)}")
        if result.numbers.get("difference") is not None:
            lo, hi = result.numbers["difference_ci"]
            lines.append(
                f"difference {result.numbers['difference']:+.1%} (95% confidence sequence "
                f"[{lo:+.1%}, {hi:+.1%}]), mSPRT {result.numbers['msprt']:.3g} vs {result.numbers['threshold']:g}"
            )
    lines.append(f"decision: {result.decision}: {result.reason}")
    lines += night_lines(result.nights)
    lines.append(
        "time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.stages.items())
        + f"; total {sum(result.stages.values()) / 60:.1f} min"
    )
    c = result.counts
    failed = f" ({c['failed']} failed: {result.errors[0]})" if c["failed"] else ""
    lines.append(
        f"chats:    {c['requests']} requests -> {c['answered']} answered{failed} -> {c['kafka_chats']} in Kafka "
        f"-> {c['duckdb_chats']} in DuckDB" + (f" + {c['forgotten_chats']} forgotten" if c["forgotten_chats"] else "")
    )
    lines.append(
        f"ratings:  {c['ratings']} sent -> {c['ratings_accepted']} accepted ({c['corrections']} corrections) "
        f"-> {c['kafka_feedback']} in Kafka -> {c['duckdb_feedback']} in DuckDB"
        + (f" + {c['forgotten_feedback']} forgotten" if c["forgotten_feedback"] else "")
    )
    lines.append(
        f"training: {c['samples_kept']} samples kept -> {c['samples_approved']} approved -> snapshot "
        f"{c['snapshot_train']} train + {c['snapshot_eval']} eval"
    )
    lines.append(
        "PII placeholders: "
        + (", ".join(f"{k} {v}" for k, v in result.pii_types.items()) or "none")
        + f"; canary emails/phones found in {cfg.data_dir}: {result.leaks.get('email', 0)}/"
        f"{result.leaks.get('phone', 0)}"
    )
    lines.append(
        f"pages: review {result.urls.get('review')}  A/B dashboard {result.urls.get('ab')}  "
        "(key flywheel-review-key; up while --keep-running)"
    )
    return lines
