"""`flywheel retrain`: one nightly run now, or when `flywheel up` runs it next."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.commands.common import state, store


def retrain(
    ctx: typer.Context,
    now: Annotated[bool, typer.Option("--now", help="Run once now (curate, snapshot, train, gates).")] = False,
) -> None:
    """Train a new adapter from the approved samples: curate and snapshot, LoRA (QLoRA on CUDA) in a
    subprocess from the live adapter, then the artifact and offline gates; a passing run is registered
    as a candidate. Without --now: when `flywheel up` runs it next."""
    from infra import control

    cfg = state(ctx).config()
    if not now:
        from datetime import datetime

        from infra.schedule import cron

        trigger = cron(cfg.retrain.schedule)
        nxt = trigger.get_next_fire_time(None, datetime.now(trigger.timezone))
        typer.echo(
            f"`flywheel up` retrains on cron '{cfg.retrain.schedule}' (next: {nxt:%Y-%m-%d %H:%M %Z}); "
            "run one now with `flywheel retrain --now`"
        )
        return
    with store(ctx) as con:
        outcome = control.retrain(cfg, con, echo=True)
    typer.echo(outcome_line(outcome))
    if outcome.status == "failed":
        raise typer.Exit(1)


def outcome_line(outcome) -> str:
    took = f" in {outcome.seconds:.0f} s"
    if outcome.status == "skipped":
        return f"retrain skipped: {outcome.reason}"
    if outcome.status == "candidate":
        train, offline = outcome.metrics["train"], outcome.metrics["offline"]
        c, i = offline["candidate"], offline["incumbent"]
        return (
            f"retrain {outcome.version}: candidate{took}; {train['steps']} steps, {train['tokens_per_s']:,.0f} "
            f"tokens/s; eval desirable loss {c['desirable_loss']:.3f} vs incumbent {i['desirable_loss']:.3f}, "
            f"general loss {c['general_loss']:.3f} vs {i['general_loss']:.3f}"
        )
    return f"retrain {outcome.version}: {outcome.status}{took}: {outcome.reason}"
