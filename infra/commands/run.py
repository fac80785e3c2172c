"""The long-running commands: `up` (everything), `demo`, `serve` (the API alone), `ingest`, and `simulate`."""

from __future__ import annotations

import logging
import math
import time
import warnings
from contextlib import ExitStack
from typing import Annotated

import typer

from infra.commands.common import DEMO_KEYS_HELP, StopSignal, config_and_kafka, ensure_data_dir, state
from infra.errors import FlywheelError

# `flywheel demo --nights N` (N >= 2) plays every night with this many customers unless --users says otherwise:
# a night's traffic, A/B rounds and training all scale with it (160 took 48.4 min for 4 nights on 2 cores).
MULTI_NIGHT_USERS = 120


def up(
    ctx: typer.Context,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds (for scripted runs).")] = None,
    simulate: Annotated[
        int, typer.Option(help="Once up, produce this many synthetic chats and ratings to the topics.")
    ] = 0,
    demo_keys: Annotated[bool, typer.Option("--demo-keys", help=DEMO_KEYS_HELP)] = False,
) -> None:
    """Start everything: broker (when embedded), database, ingest; Ctrl-C or SIGTERM stops all."""
    from infra import keys

    cfg = state(ctx).config()
    ensure_data_dir(cfg.data_dir)
    cfg = keys.service_keys(cfg, demo_keys=demo_keys, echo=typer.echo)
    with StopSignal() as stop, ExitStack() as stack:
        from infra import control
        from infra.services import start_services

        svc = start_services(cfg, stack, stop.event, typer.echo)
        con, ingest = svc.con, svc.ingest

        ctl = control.Control(cfg, con)
        job = ctl.start()
        stack.callback(ctl.stop)
        svc.review.after_taint = ctl.retrain_soon
        typer.echo(
            f"retrain   nightly on cron '{cfg.retrain.schedule}', next {job.next_run_time:%Y-%m-%d %H:%M %Z} "
            f"(jobs in {cfg.data_dir / 'scheduler.sqlite'})"
        )
        if simulate:
            from infra.services import produce_synthetic

            produce_synthetic(cfg, svc.bootstrap, simulate)
            typer.echo(f"simulate  produced {simulate} synthetic events")
        until = f"for {duration:g} s" if duration is not None else "until Ctrl-C"
        typer.echo(f"flywheel is up {until}")
        why = stop.wait(duration)
        typer.echo(f"stopping ({why}): HTTP, then the outbox to Kafka, then ingest to the end offsets")
    typer.echo(f"ingested  {totals(ingest.totals)}")
    typer.echo("stopped cleanly")


def demo(
    ctx: typer.Context,
    users: Annotated[
        int | None,
        typer.Option(
            min=8,
            show_default=False,
            help="Simulated customers (a quarter are support agents); by default 240 for one night and "
            f"{MULTI_NIGHT_USERS} when --nights is 2 or more (4 nights then fit in about 40 minutes on 2 cores).",
        ),
    ] = None,
    control: Annotated[
        bool,
        typer.Option(
            "--control", help="Shuffle the agents' corrections across topics: the challenger must not be promoted."
        ),
    ] = False,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running", help="Leave the service up afterwards (review page, A/B dashboard) until Ctrl-C."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the simulated population and its questions.")] = 0,
    nights: Annotated[
        int,
        typer.Option(
            min=1,
            help="Nights to play, each a day of traffic, the nightly job and an A/B test: 1 learns the store's "
            "policies; 2 then changes two of them and adds a topic (the promoted adapter must follow); 3 brings "
            "10 coordinated accounts teaching a false policy (it must not pass the canary); 4 forgets 20 users "
            "during the day (nothing trained on them may serve, and the night retrains without them).",
        ),
    ] = 1,
) -> None:
    """The whole loop on the real base model: simulated customers chat and rate through the API, then
    ingest, curation (policy auto), retraining, gates, a canary and a live A/B test decide."""
    from demo import run as demo_run

    if nights > len(demo_run.SCENARIOS):
        raise FlywheelError(
            f"--nights {nights}: the scenario has {len(demo_run.SCENARIOS)} nights ({', '.join(demo_run.SCENARIOS)})"
        )
    if nights > 1 and control:
        raise FlywheelError("--control plays one night: its corrections are noise, so there is nothing to change")

    if users is None:
        users = 240 if nights == 1 else MULTI_NIGHT_USERS
    st = state(ctx)
    base = st.config()
    cfg = demo_run.demo_config(base, st.config_path, st.overrides, control, users)
    logging.getLogger().setLevel(cfg.log_level)
    for noisy in ("httpx", "httpx2", "openai", "kafka"):  # a line per request or connection
        logging.getLogger(noisy).setLevel(logging.WARNING if noisy != "kafka" else logging.ERROR)
    # bitsandbytes warns once on CPU that its optional `kernels` package is missing; the demo trains in fp32.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes
    # peft, when serving drops the adapter that was active (a promotion retires it): serving sets the next one
    warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
    if users * cfg.curation.max_user_share < 1:
        raise FlywheelError(
            f"--users {users}: the per-user cap (curation.max_user_share="
            f"{cfg.curation.max_user_share:g}) needs at least "
            f"{math.ceil(1 / cfg.curation.max_user_share)} users"
        )
    demo_run.prepare_data_dir(cfg, ensure_data_dir(base.data_dir) / "models")
    settings = " ".join(
        [
            *demo_run.DEMO_SETTINGS,
            *st.overrides,
            f"abtest.ramp={cfg.abtest.ramp}",
            f"curation.max_user_share={cfg.curation.max_user_share:g}",
        ]
    )
    typer.echo(f"demo      data in {cfg.data_dir} (emptied first); settings: {settings}")
    with StopSignal() as stop:
        result = demo_run.run(
            cfg,
            users=users,
            nights=nights,
            control=control,
            keep_running=keep_running,
            seed=seed,
            echo=typer.echo,
            stop=stop.event,
        )
    for line in demo_run.summary(result, cfg, control):
        typer.echo(line)
    promoted = result.decision == "promote"
    if control and promoted:
        typer.echo("flywheel: the control run promoted its challenger: the gates let noise through", err=True)
        raise typer.Exit(1)
    if not control and not promoted:
        typer.echo("flywheel: the loop did not promote a better adapter this time (see the decision above)", err=True)
        raise typer.Exit(1)
    for night in result.nights[1:]:
        ok, why = demo_run.night_ok(night)
        if not ok:
            typer.echo(f"flywheel: night {night['night']} ({night['scenario']}): {why}", err=True)
            raise typer.Exit(1)


def serve(
    ctx: typer.Context,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    demo_keys: Annotated[bool, typer.Option("--demo-keys", help=DEMO_KEYS_HELP)] = False,
) -> None:
    """Run the API alone (chat completions, feedback); events go through the outbox to Kafka."""
    from infra import broker, keys
    from infra.api import Api
    from infra.services import DRAIN_TIMEOUT_S

    cfg = state(ctx).config()
    ensure_data_dir(cfg.data_dir)
    cfg = keys.service_keys(cfg, demo_keys=demo_keys, echo=typer.echo)
    bootstrap = broker.resolve_bootstrap(cfg.kafka, cfg.data_dir)
    with StopSignal() as stop:
        api = Api(cfg, bootstrap)
        try:
            typer.echo(f"api {api.url}/v1  (OpenAI-compatible; models: {', '.join(api.router.variants())})")
            if line := api.vllm_line():
                typer.echo(line)
            why = stop.wait(duration)
            typer.echo(f"stopping ({why}): HTTP, then the outbox to Kafka")
            api.close_http()
            api.sender.drain(DRAIN_TIMEOUT_S)
        finally:
            api.close()
        if api.outbox_left:
            typer.echo(
                f"outbox {api.outbox_left} events kept until ingest has stored them (sent again at the "
                "next start if Kafka loses them)"
            )


def simulate(
    ctx: typer.Context,
    events: Annotated[int, typer.Option(help="How many events (chats, and ratings of ~30% of them).")] = 1000,
    malformed: Annotated[int, typer.Option(help="Also send this many broken events.")] = 0,
    seed: Annotated[int, typer.Option(help="Same seed, same events.")] = 0,
) -> None:
    """Produce synthetic store-support chats and ratings (with names, emails, phones) to the topics."""
    from infra.services import produce_synthetic

    cfg, bootstrap = config_and_kafka(ctx)
    sent = produce_synthetic(cfg, bootstrap, events, seed, malformed)
    typer.echo(f"produced {sent} events to {cfg.kafka.chats_topic} and {cfg.kafka.feedback_topic} at {bootstrap}")


def ingest(
    ctx: typer.Context, duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None
) -> None:
    """Consume chats and feedback from Kafka, scrub PII, store in DuckDB; SIGTERM finishes the batch."""
    from infra import db
    from infra.services import build_ingest, run_ingest

    cfg, bootstrap = config_and_kafka(ctx)
    with StopSignal() as stop:
        con = db.open_store(cfg.db_path, cfg.db.threads)
        try:
            consumer = build_ingest(cfg, bootstrap, con)
            typer.echo(f"ingesting from {bootstrap} into {cfg.db_path}")
            deadline = None if duration is None else time.monotonic() + duration
            run_ingest(consumer, lambda: stop.event.is_set() or (deadline is not None and time.monotonic() > deadline))
            typer.echo(
                f"stopped ({stop.why if stop.event.is_set() else 'duration elapsed'}): {totals(consumer.totals)}"
            )
        finally:
            con.close()


def totals(totals: dict) -> str:
    names = {"findings": "PII findings", "erased": "late events of forgotten users dropped"}
    return ", ".join(f"{v:,} {names.get(k, k.replace('_', ' '))}" for k, v in totals.items())
