"""`flywheel`: one console script, one subcommand per job; each handler imports its stage lazily.

Dotted overrides such as `retrain.lora.r=16` may stand anywhere on the command line; they are taken out
before the subcommand is parsed and applied last (defaults < --config file < FLYWHEEL_* env < overrides).
Problems the user can fix (bad config, busy port, unreachable broker, ...) print one line and exit 2.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from infra.config import Config, ConfigError, load_config, split_overrides
from infra.errors import FlywheelError

log = logging.getLogger("flywheel")


class State:
    """What the top-level options set; the config is loaded on first use."""

    def __init__(self, config_path: Path | None, overrides: list[str]):
        self.config_path, self.overrides = config_path, overrides
        self._config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, self.overrides)
            logging.getLogger().setLevel(self._config.log_level)
        return self._config


def _state(ctx: typer.Context) -> State:
    return ctx.find_object(State)


def ensure_data_dir(path: Path) -> Path:
    """Create the data dir (0700: it holds chat text, keys and secrets) and prove it is writable, or say how
    to fix it."""
    probe = Path(path) / ".write-test"
    try:
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
        Path(path).chmod(0o700)  # one made by an earlier version, or by hand
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise FlywheelError(
            f"data dir {path} is not writable ({e.strerror}): set data_dir=PATH or FLYWHEEL_DATA_DIR "
            "to a folder you can write"
        ) from None
    return Path(path)


DEMO_KEYS_HELP = ("Serve the default config's public keys (flywheel-demo-key, flywheel-review-key), on loopback "
                  "only. Without it, keys left at their default are replaced by keys generated on the first run.")


class StopSignal:
    """SIGINT/SIGTERM set a flag instead of killing the process, so that shutdown runs in order.

    Installed before anything starts: a signal during start-up stops right after it.
    """

    def __init__(self) -> None:
        self.event, self.why = threading.Event(), "duration elapsed"

    def _handle(self, signum, _frame) -> None:
        self.why = signal.Signals(signum).name
        self.event.set()

    def __enter__(self) -> StopSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def wait(self, duration: float | None) -> str:
        """Block until a signal or `duration` seconds; returns why it stopped."""
        deadline = None if duration is None else time.monotonic() + duration
        # Short waits in a loop: a bare Event.wait() can sit through a signal until the next bytecode.
        while not self.event.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self.why


def _config_and_kafka(ctx: typer.Context) -> tuple[Config, str]:
    """The config, a writable data dir, and where Kafka is (the configured cluster or the bundled broker)."""
    from infra import broker

    cfg = _state(ctx).config()
    ensure_data_dir(cfg.data_dir)
    return cfg, broker.resolve_bootstrap(cfg.kafka, cfg.data_dir)


def _totals(totals: dict) -> str:
    names = {"findings": "PII findings", "erased": "late events of forgotten users dropped"}
    return ", ".join(f"{v:,} {names.get(k, k.replace('_', ' '))}" for k, v in totals.items())


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@contextmanager
def _store(ctx: typer.Context, read_only: bool = False):
    """The database, opened for one command (migrated unless read-only)."""
    from infra import db

    cfg = _state(ctx).config()
    if read_only:
        con = db.connect(cfg.db_path, read_only=True)
    else:
        ensure_data_dir(cfg.data_dir)
        con = db.open_store(cfg.db_path, cfg.db.threads)
    try:
        yield con
        if not read_only:
            from infra import keys

            keys.write_anchor(con, cfg.data_dir)  # whatever this command logged is anchored before it exits
    finally:
        con.close()


def _outcome_line(outcome) -> str:
    took = f" in {outcome.seconds:.0f} s"
    if outcome.status == "skipped":
        return f"retrain skipped: {outcome.reason}"
    if outcome.status == "candidate":
        train, offline = outcome.metrics["train"], outcome.metrics["offline"]
        c, i = offline["candidate"], offline["incumbent"]
        return (f"retrain {outcome.version}: candidate{took}; {train['steps']} steps, {train['tokens_per_s']:,.0f} "
                f"tokens/s; eval desirable loss {c['desirable_loss']:.3f} vs incumbent {i['desirable_loss']:.3f}, "
                f"general loss {c['general_loss']:.3f} vs {i['general_loss']:.3f}")
    return f"retrain {outcome.version}: {outcome.status}{took}: {outcome.reason}"


def _ab_table(numbers: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    lines = [f"  {'arm':<11}{'variant':<9}{'users':>7}{'ratings':>9}{'up-rate':>9}  {'interval':<17}{'p95 ms':>8}"]
    for role, a in numbers.get("arms", {}).items():
        ci = "-" if a["ci"][0] is None else f"[{pct(a['ci'][0])}, {pct(a['ci'][1])}]"
        p95 = "-" if a["p95_latency_ms"] is None else f"{a['p95_latency_ms']:.0f}"
        lines.append(f"  {role:<11}{a['variant']:<9}{a['users']:>7}{a['ratings']:>9}{pct(a['up_rate']):>9}  {ci:<17}{p95:>8}")
    guard = ", ".join(f"{g['name']} {'ok' if g['ok'] else 'BREACHED'}" for g in numbers.get("guardrails", []))
    diff = numbers.get("difference")
    lines.append(f"  difference {'-' if diff is None else f'{diff:+.1%}'}, mSPRT {numbers.get('msprt', 0):.3g} "
                 f"(threshold {numbers.get('threshold', 0):g}), SRM p={numbers.get('srm_p', 1):.3g}; "
                 f"guardrails: {guard or 'not enough data'}")
    return "\n".join(lines)


def _curation_summary(report, policy: str) -> str:
    up = "-" if report.up_share is None else f"{report.up_share:.0%}"
    dropped = ", ".join(f"{n} {k}" for k, n in sorted(report.dropped.items())) or "none"
    return (f"candidates {report.candidates} rated chats: {report.ratings_up} up, {report.ratings_down} down "
            f"(up share {up}; unhappy users rate more), {report.corrections} corrections\n"
            f"samples    {report.samples} ({report.new} new), {report.kept} kept from {report.users} users "
            f"(cap {report.per_user_cap} per user); dropped: {dropped}\n"
            f"review     policy {policy}: {report.auto_approved} approved by the policy, {report.pending} pending")


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="flywheel",
        help="Continuous learning for LLM chat apps: thumbs-up/down in, gated LoRA promotions out.\n\n"
        "Config: defaults < --config FILE (or $FLYWHEEL_CONFIG) < FLYWHEEL_SECTION__KEY < KEY=VALUE "
        "overrides anywhere on the line, e.g. `flywheel up retrain.lora.r=8`.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def main_options(
        ctx: typer.Context,
        config: Annotated[
            Optional[Path],
            typer.Option("--config", "-c", help="TOML config file (else $FLYWHEEL_CONFIG, else defaults)."),
        ] = None,
    ) -> None:
        ctx.obj = State(config, list(ctx.obj or []))

    @app.command()
    def up(
        ctx: typer.Context,
        duration: Annotated[
            Optional[float], typer.Option(help="Stop after this many seconds (for scripted runs).")
        ] = None,
        simulate: Annotated[
            int, typer.Option(help="Once up, produce this many synthetic chats and ratings to the topics.")
        ] = 0,
        demo_keys: Annotated[bool, typer.Option("--demo-keys", help=DEMO_KEYS_HELP)] = False,
    ) -> None:
        """Start everything: broker (when embedded), database, ingest; Ctrl-C or SIGTERM stops all."""
        from infra import keys

        cfg = _state(ctx).config()
        ensure_data_dir(cfg.data_dir)
        cfg = keys.service_keys(cfg, demo_keys=demo_keys, echo=typer.echo)
        with StopSignal() as stop, ExitStack() as stack:
            from infra import control
            from infra.services import start_services

            svc = start_services(cfg, stack, stop.event, typer.echo)
            con, ingest = svc.con, svc.ingest

            scheduler, job = control.start_scheduler(cfg, con)
            stack.callback(control.stop_jobs, scheduler)
            svc.review.after_taint = lambda: control.retrain_soon(scheduler)
            control.publish_routing(cfg, con.cursor())
            control.start_ab_job(cfg, con, scheduler)
            typer.echo(f"retrain   nightly on cron '{cfg.retrain.schedule}', next {job.next_run_time:%Y-%m-%d %H:%M %Z} "
                       f"(jobs in {cfg.data_dir / 'scheduler.sqlite'})")
            if simulate:
                from infra.services import produce_synthetic

                produce_synthetic(cfg, svc.bootstrap, simulate)
                typer.echo(f"simulate  produced {simulate} synthetic events")
            until = f"for {duration:g} s" if duration is not None else "until Ctrl-C"
            typer.echo(f"flywheel is up {until}")
            why = stop.wait(duration)
            typer.echo(f"stopping ({why}): HTTP, then the outbox to Kafka, then ingest to the end offsets")
        typer.echo(f"ingested  {_totals(ingest.totals)}")
        typer.echo("stopped cleanly")

    @app.command()
    def demo(
        ctx: typer.Context,
        users: Annotated[int, typer.Option(min=8, help="Simulated customers (a quarter are support agents).")] = 240,
        control: Annotated[bool, typer.Option(
            "--control", help="Shuffle the agents' corrections across topics: the challenger must not be promoted."
        )] = False,
        keep_running: Annotated[bool, typer.Option(
            "--keep-running", help="Leave the service up afterwards (review page, A/B dashboard) until Ctrl-C."
        )] = False,
        seed: Annotated[int, typer.Option(help="Seed of the simulated population and its questions.")] = 0,
    ) -> None:
        """The whole loop on the real base model: simulated customers chat and rate through the API, then
        ingest, curation (policy auto), retraining, gates, a canary and a live A/B test decide."""
        from demo import run as demo_run

        state = _state(ctx)
        base = state.config()
        cfg = demo_run.demo_config(base, state.config_path, state.overrides, control)
        logging.getLogger().setLevel(cfg.log_level)
        for noisy in ("httpx", "httpx2", "openai", "kafka"):  # a line per request or connection
            logging.getLogger(noisy).setLevel(logging.WARNING if noisy != "kafka" else logging.ERROR)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes
        if users * cfg.curation.max_user_share < 1:
            raise FlywheelError(f"--users {users}: the per-user cap (curation.max_user_share="
                                f"{cfg.curation.max_user_share:g}) needs at least "
                                f"{math.ceil(1 / cfg.curation.max_user_share)} users")
        demo_run.prepare_data_dir(cfg, ensure_data_dir(base.data_dir) / "models")
        typer.echo(f"demo      data in {cfg.data_dir} (emptied first); settings: {' '.join(demo_run.DEMO_SETTINGS)}")
        with StopSignal() as stop:
            result = demo_run.run(cfg, users=users, control=control, keep_running=keep_running, seed=seed,
                                  echo=typer.echo, stop=stop.event)
        for line in demo_run.summary(result, cfg, control):
            typer.echo(line)
        promoted = result.decision == "promote"
        if control and promoted:
            typer.echo("flywheel: the control run promoted its challenger: the gates let noise through", err=True)
            raise typer.Exit(1)
        if not control and not promoted:
            typer.echo("flywheel: the loop did not promote a better adapter this time (see the decision above)",
                       err=True)
            raise typer.Exit(1)

    @app.command()
    def serve(
        ctx: typer.Context,
        duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.")] = None,
        demo_keys: Annotated[bool, typer.Option("--demo-keys", help=DEMO_KEYS_HELP)] = False,
    ) -> None:
        """Run the API alone (chat completions, feedback); events go through the outbox to Kafka."""
        from infra import keys
        from infra.services import DRAIN_TIMEOUT_S, Api

        from infra import broker

        cfg = _state(ctx).config()
        ensure_data_dir(cfg.data_dir)
        cfg = keys.service_keys(cfg, demo_keys=demo_keys, echo=typer.echo)
        bootstrap = broker.resolve_bootstrap(cfg.kafka, cfg.data_dir)
        with StopSignal() as stop:
            api = Api(cfg, bootstrap)
            try:
                typer.echo(f"api {api.url}/v1  (OpenAI-compatible; models: {', '.join(api.router.variants())})")
                why = stop.wait(duration)
                typer.echo(f"stopping ({why}): HTTP, then the outbox to Kafka")
                api.close_http()
                api.sender.drain(DRAIN_TIMEOUT_S)
            finally:
                api.close()
            if api.outbox_left:
                typer.echo(f"outbox {api.outbox_left} events kept until ingest has stored them (sent again at the "
                           "next start if Kafka loses them)")

    keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")

    @keys_app.command("hash")
    def keys_hash(key: Annotated[str, typer.Argument(help="The API key an app will send.")]) -> None:
        """Print the SHA-256 to put in serving.api_keys (the key itself is never stored)."""
        from serving.ids import hash_key

        typer.echo(hash_key(key))

    @app.command()
    def simulate(
        ctx: typer.Context,
        events: Annotated[int, typer.Option(help="How many events (chats, and ratings of ~30% of them).")] = 1000,
        malformed: Annotated[int, typer.Option(help="Also send this many broken events.")] = 0,
        seed: Annotated[int, typer.Option(help="Same seed, same events.")] = 0,
    ) -> None:
        """Produce synthetic store-support chats and ratings (with names, emails, phones) to the topics."""
        from infra.services import produce_synthetic

        cfg, bootstrap = _config_and_kafka(ctx)
        sent = produce_synthetic(cfg, bootstrap, events, seed, malformed)
        typer.echo(f"produced {sent} events to {cfg.kafka.chats_topic} and {cfg.kafka.feedback_topic} at {bootstrap}")

    @app.command()
    def ingest(
        ctx: typer.Context,
        duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.")] = None,
    ) -> None:
        """Consume chats and feedback from Kafka, scrub PII, store in DuckDB; SIGTERM finishes the batch."""
        from infra import db
        from infra.services import build_ingest, run_ingest

        cfg, bootstrap = _config_and_kafka(ctx)
        with StopSignal() as stop:
            con = db.open_store(cfg.db_path, cfg.db.threads)
            try:
                consumer = build_ingest(cfg, bootstrap, con)
                typer.echo(f"ingesting from {bootstrap} into {cfg.db_path}")
                deadline = None if duration is None else time.monotonic() + duration
                run_ingest(consumer, lambda: stop.event.is_set() or (deadline is not None and time.monotonic() > deadline))
                typer.echo(f"stopped ({stop.why if stop.event.is_set() else 'duration elapsed'}): {_totals(consumer.totals)}")
            finally:
                con.close()

    @app.command()
    def curate(
        ctx: typer.Context,
        snapshot: Annotated[bool, typer.Option(help="Also freeze the approved samples into a snapshot.")] = True,
    ) -> None:
        """Turn rated chats into samples (filters, dedup, per-user cap, review policy) and snapshot the
        approved ones as Parquet."""
        from curation import curate as curation, snapshot as snapshots
        from infra import db

        cfg = _state(ctx).config()
        ensure_data_dir(cfg.data_dir)
        con = db.open_store(cfg.db_path, cfg.db.threads)
        try:
            report = curation.run(con, cfg.curation, actor=_actor())
            typer.echo(_curation_summary(report, cfg.curation.review_policy))
            if snapshot:
                try:
                    snap = snapshots.build(con, cfg.curation, cfg.data_dir / "snapshots", actor=_actor())
                except ValueError as e:
                    raise FlywheelError(str(e)) from None
                if snap is None:
                    typer.echo("snapshot   none: no approved samples yet (see `flywheel review list`)")
                else:
                    c = snap.manifest["counts"]
                    typer.echo(f"snapshot   {snap.snapshot_id} ({'new' if snap.created else 'unchanged'}): "
                               f"{c['train']} train + {c['eval']} eval samples from {c['users']} users, "
                               f"{c['over_user_cap']} over the per-user cap; {snap.path}")
        finally:
            con.close()

    review_app = typer.Typer(help="The review queue: approve or reject samples before training.",
                             no_args_is_help=True)
    app.add_typer(review_app, name="review")

    @review_app.command("list")
    def review_list(
        ctx: typer.Context,
        limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
    ) -> None:
        """Pending samples: id, label, rating, PII types found, and the scrubbed text."""
        from rich.console import Console
        from rich.table import Table

        from curation import review

        with _store(ctx) as con:
            rows, counts = review.pending(con, limit), review.counts(con)
        table = Table("sample", "label", "source", "PII found", "prompt", "answer", show_lines=False)
        for r in rows:
            last = next((m["content"] for m in reversed(r["prompt"]) if m["role"] == "user"), "")
            table.add_row(r["sample_id"], r["label"], r["source"], ",".join(r["pii"]) or "-",
                          _clip(last), _clip(r["answer"]))
        Console(width=160).print(table)
        typer.echo(", ".join(f"{v} {k}" for k, v in counts.items()))

    @review_app.command("approve")
    def review_approve(
        ctx: typer.Context,
        sample_ids: Annotated[Optional[list[str]], typer.Argument(help="Sample ids.")] = None,
        all_pending: Annotated[bool, typer.Option("--all-pending", help="Every pending sample.")] = False,
        reason: Annotated[Optional[str], typer.Option(help="Why (kept in the audit log).")] = None,
        reviewer: Annotated[Optional[str], typer.Option(help="Your identity (default: cli:<login>).")] = None,
    ) -> None:
        """Approve samples for training, one or many."""
        _decide(ctx, "approve", sample_ids, all_pending, reason, reviewer)

    @review_app.command("reject")
    def review_reject(
        ctx: typer.Context,
        sample_ids: Annotated[Optional[list[str]], typer.Argument(help="Sample ids.")] = None,
        reason: Annotated[str, typer.Option(help="Why (required; kept in the audit log).")] = "",
        all_pending: Annotated[bool, typer.Option("--all-pending", help="Every pending sample.")] = False,
        reviewer: Annotated[Optional[str], typer.Option(help="Your identity (default: cli:<login>).")] = None,
    ) -> None:
        """Reject samples: they never reach training."""
        _decide(ctx, "reject", sample_ids, all_pending, reason, reviewer)

    def _decide(ctx, decision, sample_ids, all_pending, reason, reviewer) -> None:
        from curation import review

        with _store(ctx) as con:
            ids = list(sample_ids or [])
            if all_pending:
                ids += [r[0] for r in con.execute("SELECT sample_id FROM samples WHERE status = 'pending' AND keep")
                        .fetchall()]
            if not ids:
                raise FlywheelError("name sample ids, or --all-pending")
            try:
                n = review.decide(con, ids, decision, reviewer or _actor(), reason)
            except review.ReviewError as e:
                raise FlywheelError(str(e)) from None
        typer.echo(f"{decision}d {n} sample{'s' * (n != 1)} as {reviewer or _actor()}")

    @app.command()
    def forget(
        ctx: typer.Context,
        app_id: Annotated[str, typer.Option("--app", help="The app that sent the user's requests (a name in "
                                            "serving.api_keys): a user is (app, user).")],
        user: Annotated[str, typer.Option("--user", help="The user id, exactly as the app sent it.")],
        actor: Annotated[Optional[str], typer.Option(help="Who asks (default: cli:<login>).")] = None,
    ) -> None:
        """Erase a user's chats, feedback, samples and findings (then compact the database file), and list
        the snapshots and adapters trained on their data; those adapters are never promoted again."""
        from infra import db
        from infra.services import forget_user

        cfg = _state(ctx).config()
        with _store(ctx) as con:
            try:
                done = forget_user(con, cfg, app_id, user, actor or _actor())
            except ValueError as e:
                raise FlywheelError(str(e)) from None
        before, after = db.compact(cfg.db_path)
        typer.echo("deleted    " + ", ".join(f"{n} {t}" for t, n in done["deleted"].items()))
        typer.echo(f"snapshots  {', '.join(done['snapshots']) + ' held their data (Parquet files deleted)' if done['snapshots'] else 'none held their data'}")
        typer.echo(f"adapters   {', '.join(done['adapters']) + ' trained on it (marked tainted: never promoted again)' if done['adapters'] else 'none trained on it'}")
        for line in done.get("routing", []):
            typer.echo(f"routing    {line}")
        typer.echo(f"database   compacted ({before:,} -> {after:,} bytes); audit entry written")

    audit_app = typer.Typer(help="The append-only audit log.", no_args_is_help=True)
    app.add_typer(audit_app, name="audit")

    @audit_app.command("verify")
    def audit_verify(
        ctx: typer.Context,
        head: Annotated[Optional[str], typer.Option(
            help="A head you kept (SEQ:HASH from `flywheel audit head` or the log's 'audit head' line): the log "
                 "must still hold it.")] = None,
    ) -> None:
        """Check the hash chain over every entry and against its signed anchor (DATA_DIR/audit.anchor); exit 1
        when an entry was changed, removed or re-chained."""
        from curation import audit
        from infra import keys

        cfg = _state(ctx).config()
        anchor = keys.read_anchor(cfg.data_dir)
        key = keys.data_dir_key(cfg.data_dir, "audit-chain") if anchor else None
        with _store(ctx, read_only=True) as con:
            verdict = audit.verify(con, anchor, key)
            if verdict.ok and verdict.entries and anchor is None:
                verdict = audit.Verdict(verdict.entries, 1, f"{cfg.data_dir / keys.ANCHOR_FILE} is missing: "
                                                            "truncation and rewrites cannot be ruled out")
            if verdict.ok and head is not None:
                seq, _, digest = head.partition(":")
                if not seq.isdigit() or not digest:
                    raise FlywheelError(f"--head {head!r}: expected SEQ:HASH")
                verdict = audit.verify(con, audit.Anchor(int(seq), digest, ""))
        if not verdict.ok:
            typer.echo(f"audit log BROKEN at entry {verdict.broken_at}: {verdict.why}", err=True)
            raise typer.Exit(1)
        anchored = f", anchored at entry {anchor.seq}" if anchor else ""
        typer.echo(f"audit log intact: {verdict.entries} entries, hash chain verified{anchored}")

    @audit_app.command("head")
    def audit_head(ctx: typer.Context) -> None:
        """Print the signed head (SEQ:HASH) to keep outside this machine, for `audit verify --head`."""
        from infra import keys

        anchor = keys.read_anchor(_state(ctx).config().data_dir)
        if anchor is None:
            raise FlywheelError("no audit anchor yet: the log is empty, or no command has written to it")
        typer.echo(f"{anchor.seq}:{anchor.hash}")

    @audit_app.command("show")
    def audit_show(
        ctx: typer.Context,
        limit: Annotated[int, typer.Option(help="The latest this many entries.")] = 20,
    ) -> None:
        """The latest audit entries."""
        from curation import audit

        with _store(ctx, read_only=True) as con:
            for e in audit.entries(con, limit):
                detail = {k: v for k, v in e["details"].items() if k != "sample_ids"}
                typer.echo(f"{e['seq']:>6}  {e['logged_at']}  {e['actor']:<20} {e['action']:<9} "
                           f"{e['subject'] or '-':<22} {_clip(str(detail), 70)}")

    @app.command()
    def retrain(
        ctx: typer.Context,
        now: Annotated[bool, typer.Option("--now", help="Run once now (curate, snapshot, train, gates).")] = False,
    ) -> None:
        """Train a new adapter from the approved samples: curate and snapshot, LoRA (QLoRA on CUDA) in a
        subprocess from the live adapter, then the artifact and offline gates; a passing run is registered
        as a candidate. Without --now: when `flywheel up` runs it next."""
        from infra import control

        cfg = _state(ctx).config()
        if not now:
            from datetime import datetime

            trigger = control.cron(cfg.retrain.schedule)

            nxt = trigger.get_next_fire_time(None, datetime.now(trigger.timezone))
            typer.echo(f"`flywheel up` retrains on cron '{cfg.retrain.schedule}' (next: {nxt:%Y-%m-%d %H:%M %Z}); "
                       "run one now with `flywheel retrain --now`")
            return
        with _store(ctx) as con:
            outcome = control.retrain(cfg, con, echo=True)
        typer.echo(_outcome_line(outcome))
        if outcome.status == "failed":
            raise typer.Exit(1)

    adapters_app = typer.Typer(help="The adapter registry: versions, status, lineage, history.", no_args_is_help=True)
    app.add_typer(adapters_app, name="adapters")

    @adapters_app.command("list")
    def adapters_list(ctx: typer.Context) -> None:
        """Every version with its parent, status, snapshot and reason."""
        from rich.console import Console
        from rich.table import Table

        from retrain import registry

        with _store(ctx, read_only=True) as con:
            rows = registry.listing(con)
        table = Table("version", "parent", "status", "snapshot", "created (UTC)", "reason")
        for version, parent, status, tainted, snap, created, reason in rows:
            table.add_row(version, parent or "-", status + (" (tainted)" if tainted else ""), snap or "-", created,
                          _clip(reason, 70))
        Console(width=160).print(table)

    @adapters_app.command("history")
    def adapters_history(
        ctx: typer.Context,
        at: Annotated[Optional[str], typer.Option(help="Only say which version served at this time (ISO 8601, UTC "
                                                       "unless it names a zone).")] = None,
    ) -> None:
        """Every status change, oldest first; --at T names the version that served at T."""
        from datetime import datetime, timezone

        from retrain import registry

        with _store(ctx, read_only=True) as con:
            if at is not None:
                try:
                    when = datetime.fromisoformat(at)
                except ValueError:
                    raise FlywheelError(f"--at {at!r} is not an ISO 8601 time such as 2026-11-22T02:00") from None
                if when.tzinfo is None:
                    when = when.replace(tzinfo=timezone.utc)
                typer.echo(f"{when.isoformat()}: {registry.live_at(con, when)}")
                return
            for changed, version, status, reason in registry.history(con):
                typer.echo(f"{changed[:19]}Z  {version:<6} {status:<11} {reason}")

    ab_app = typer.Typer(help="Live A/B experiments: a candidate adapter against the live one.", no_args_is_help=True)
    app.add_typer(ab_app, name="ab")

    @ab_app.command("start")
    def ab_start(ctx: typer.Context, version: Annotated[str, typer.Argument(help="A candidate adapter version.")]) -> None:
        """Start an experiment: VERSION gets the first ramp share of users, the live version the rest."""
        from infra import control

        cfg = _state(ctx).config()
        with _store(ctx) as con:
            exp = control.start_experiment(cfg, con, version)
        typer.echo(f"started {exp.experiment_id}: {exp.challenger} on {exp.share:.0%} of users against {exp.incumbent}")

    @ab_app.command("decide")
    def ab_decide(ctx: typer.Context) -> None:
        """Evaluate now and act: promote, roll back, ramp up, or continue (and start one for a new candidate
        when abtest.auto_start)."""
        from infra import control

        cfg = _state(ctx).config()
        with _store(ctx) as con:
            said = control.ab_tick(cfg, con)
        typer.echo("\n".join(said) or "no experiment running and no candidate to start one with")

    @ab_app.command("status")
    def ab_status(ctx: typer.Context) -> None:
        """The running experiment and what the numbers say now (nothing is changed)."""
        from abtest import experiment as ab
        from retrain import registry

        cfg = _state(ctx).config()
        with _store(ctx, read_only=True) as con:
            exp = ab.get(con)
            live = registry.live(con)
            if exp is None:
                typer.echo(f"no experiment running; live: {live['version'] if live else 'base'}")
                return
            ch = registry.get(con, exp.challenger)
            ev = ab.evaluate(con, exp, cfg.abtest, tainted=bool(ch and ch["tainted"]))
        typer.echo(f"{exp.experiment_id}: {exp.challenger} on {exp.share:.0%} against {exp.incumbent} "
                   f"(stage {exp.stage + 1}/{len(cfg.abtest.ramp)})")
        typer.echo(_ab_table(ev.numbers))
        typer.echo(f"would decide: {ev.decision}: {ev.reason}")

    @ab_app.command("report")
    def ab_report(ctx: typer.Context) -> None:
        """Every experiment: arms, users, ratings, up-rate with its confidence interval, guardrails, SRM, and
        the decision history (what the /ab dashboard shows)."""
        from abtest import experiment as ab

        with _store(ctx, read_only=True) as con:
            exps = ab.experiments(con)
            history = {e.experiment_id: ab.decisions(con, e.experiment_id) for e in exps}
        if not exps:
            typer.echo("no experiments yet")
        for e in exps:
            typer.echo(f"{e.experiment_id}  {e.status}  {e.challenger} vs {e.incumbent}, share {e.share:.0%}")
            steps = history[e.experiment_id]
            if steps:
                typer.echo(_ab_table(steps[-1]["numbers"]))
            for d in steps:
                if d["decision"] != "continue" or d is steps[-1]:
                    typer.echo(f"  {d['at']}Z  {d['decision']:<8} {d['reason']}")

    broker_app = typer.Typer(help="Run the bundled Kafka broker (Tansu) in the background.", no_args_is_help=True)
    app.add_typer(broker_app, name="broker")

    @broker_app.command("start")
    def broker_start(ctx: typer.Context) -> None:
        """Start the bundled broker as a background process recorded in the data dir."""
        from infra import broker

        cfg = _state(ctx).config()
        if cfg.kafka.bootstrap_servers:
            raise FlywheelError("kafka.bootstrap_servers is set: Flywheel uses that cluster and starts no broker")
        ensure_data_dir(cfg.data_dir)
        running = broker.read_state(cfg.data_dir)
        if running is not None:
            typer.echo(f"broker already running at {running.bootstrap} (pid {running.pid})")
            return
        started = broker.EmbeddedBroker(cfg.kafka, cfg.data_dir, detach=True).start()
        typer.echo(f"broker started at {started.bootstrap} (pid {started.proc.pid})")

    @broker_app.command("stop")
    def broker_stop(ctx: typer.Context) -> None:
        """Stop the background broker (its in-memory topics are lost)."""
        from infra import broker

        stopped = broker.stop_daemon(_state(ctx).config().data_dir)
        typer.echo(f"broker at {stopped.bootstrap} stopped" if stopped else "no broker was running")

    @broker_app.command("status")
    def broker_status(ctx: typer.Context) -> None:
        """Say where the broker is and whether it answers (exit 2 when none does)."""
        from infra import broker, kafka

        cfg = _state(ctx).config()
        bootstrap = broker.resolve_bootstrap(cfg.kafka, cfg.data_dir)
        client = kafka.admin(cfg.kafka, bootstrap)
        try:
            topics = sorted(t for t in client.list_topics() if not t.startswith("__"))
        finally:
            client.close()
        typer.echo(f"broker at {bootstrap} answers; topics: {', '.join(topics) or 'none'}")

    db_app = typer.Typer(help="The DuckDB store.", no_args_is_help=True)
    app.add_typer(db_app, name="db")

    @db_app.command("init")
    def db_init(ctx: typer.Context) -> None:
        """Create the database file or bring its schema up to date (safe to repeat)."""
        from infra import db

        cfg = _state(ctx).config()
        ensure_data_dir(cfg.data_dir)
        con = db.connect(cfg.db_path)
        try:
            applied = db.migrate(con)
            version = db.describe(con)["schema_version"]
        finally:
            con.close()
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none (already up to date)"
        typer.echo(f"{cfg.db_path}: schema v{version}; applied {names}")

    @db_app.command("info")
    def db_info(ctx: typer.Context) -> None:
        """Schema version and row counts per table."""
        from infra import db

        cfg = _state(ctx).config()
        con = db.connect(cfg.db_path, read_only=True)
        try:
            info = db.describe(con)
        finally:
            con.close()
        typer.echo(f"{cfg.db_path}: schema v{info['schema_version']}")
        for table, count in info["tables"].items():
            typer.echo(f"  {table:<16} {count:>10,}")

    @db_app.command("compact")
    def db_compact(ctx: typer.Context) -> None:
        """Rewrite the database file so that deleted values are gone from its bytes."""
        from infra import db

        cfg = _state(ctx).config()
        before, after = db.compact(cfg.db_path)
        typer.echo(f"{cfg.db_path}: compacted ({before:,} -> {after:,} bytes)")

    config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
    app.add_typer(config_app, name="config")

    @config_app.command("show")
    def config_show(ctx: typer.Context) -> None:
        """Print the effective config as TOML (secrets masked)."""
        import tomli_w

        from infra.config import to_toml_dict

        typer.echo(tomli_w.dumps(to_toml_dict(_state(ctx).config())), nl=False)

    @config_app.command("reference")
    def config_reference() -> None:
        """Print every config key with its default and meaning (Markdown table)."""
        from infra.config import reference_markdown

        typer.echo(reference_markdown())

    return app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 usage or config problem)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.umask(0o077)  # every file this process and its children create (DuckDB, outbox, logs, adapters) is 0600
    rest, overrides = split_overrides(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is one line per connection
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job added or run
    command = typer.main.get_command(build_app())
    try:
        # standalone mode prints usage errors as click does and exits; our own errors come through.
        command.main(args=rest, prog_name="flywheel", standalone_mode=True, obj=overrides)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (ConfigError, FlywheelError) as e:
        typer.echo(f"flywheel: {e}", err=True)
        return 2
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
