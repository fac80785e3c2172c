"""`flywheel ab`: start, decide, and read live A/B experiments."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.commands.common import actor_of, state, store

app = typer.Typer(help="Live A/B experiments: a candidate adapter against the live one.", no_args_is_help=True)


@app.command("start")
def ab_start(ctx: typer.Context, version: Annotated[str, typer.Argument(help="A candidate adapter version.")]) -> None:
    """Start an experiment: VERSION gets the first ramp share of users, the live version the rest."""
    from infra import ab

    cfg = state(ctx).config()
    with store(ctx) as con:
        exp = ab.start_experiment(cfg, con, version)
    typer.echo(f"started {exp.experiment_id}: {exp.challenger} on {exp.share:.0%} of users against {exp.incumbent}")


@app.command("decide")
def ab_decide(ctx: typer.Context) -> None:
    """Evaluate now and act: promote, roll back, ramp up, or continue (and start one for a new candidate
    when abtest.auto_start)."""
    from infra import ab

    cfg = state(ctx).config()
    with store(ctx) as con:
        said = ab.tick(cfg, con)
    typer.echo("\n".join(said) or "no experiment running and no candidate to start one with")


@app.command("stop")
def ab_stop(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option("--reason", help="Why it is stopped (kept in the audit log).")],
    actor: Annotated[str | None, typer.Option(help="Your identity (default: cli:<login>).")] = None,
) -> None:
    """End the running experiment now and keep the incumbent: the challenger is rolled back."""
    from infra import ab

    cfg = state(ctx).config()
    who = actor_of(ctx, actor)
    with store(ctx) as con:
        typer.echo(ab.stop_experiment(cfg, con, reason, who))


@app.command("status")
def ab_status(ctx: typer.Context) -> None:
    """The running experiment and what the numbers say now (nothing is changed)."""
    from abtest import experiment as ab
    from retrain import registry

    cfg = state(ctx).config()
    with store(ctx, read_only=True) as con:
        exp = ab.get(con)
        live = registry.live(con)
        if exp is None:
            typer.echo(f"no experiment running; live: {live['version'] if live else 'base'}")
            return
        ch = registry.get(con, exp.challenger)
        ev = ab.evaluate(con, exp, cfg.abtest, tainted=bool(ch and ch["tainted"]))
    typer.echo(
        f"{exp.experiment_id}: {exp.challenger} on {exp.share:.0%} against {exp.incumbent} "
        f"(stage {exp.stage + 1}/{len(cfg.abtest.ramp)})"
    )
    typer.echo(ab_table(ev.numbers))
    typer.echo(f"would decide: {ev.decision}: {ev.reason}")


@app.command("report")
def ab_report(ctx: typer.Context) -> None:
    """Every experiment: arms, users, ratings, up-rate with its confidence interval, guardrails, SRM, and
    the decision history (what the /ab dashboard shows)."""
    from abtest import experiment as ab

    with store(ctx, read_only=True) as con:
        exps = ab.experiments(con)
        history = {e.experiment_id: ab.decisions(con, e.experiment_id) for e in exps}
    if not exps:
        typer.echo("no experiments yet")
    for e in exps:
        typer.echo(f"{e.experiment_id}  {e.status}  {e.challenger} vs {e.incumbent}, share {e.share:.0%}")
        steps = history[e.experiment_id]
        if steps:
            typer.echo(ab_table(steps[-1]["numbers"]))
        for d in steps:
            if d["decision"] != "continue" or d is steps[-1]:
                typer.echo(f"  {d['at']}Z  {d['decision']:<8} {d['reason']}")


def ab_table(numbers: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    lines = [f"  {'arm':<11}{'variant':<9}{'users':>7}{'ratings':>9}{'up-rate':>9}  {'interval':<17}{'p95 ms':>8}"]
    for role, a in numbers.get("arms", {}).items():
        ci = "-" if a["ci"][0] is None else f"[{pct(a['ci'][0])}, {pct(a['ci'][1])}]"
        p95 = "-" if a["p95_latency_ms"] is None else f"{a['p95_latency_ms']:.0f}"
        lines.append(
            f"  {role:<11}{a['variant']:<9}{a['users']:>7}{a['ratings']:>9}{pct(a['up_rate']):>9}  {ci:<17}{p95:>8}"
        )
    guard = ", ".join(f"{g['name']} {'ok' if g['ok'] else 'BREACHED'}" for g in numbers.get("guardrails", []))
    diff = numbers.get("difference")
    lines.append(
        f"  difference {'-' if diff is None else f'{diff:+.1%}'}, mSPRT {numbers.get('msprt', 0):.3g} "
        f"(threshold {numbers.get('threshold', 0):g}), SRM p={numbers.get('srm_p', 1):.3g}; "
        f"guardrails: {guard or 'not enough data'}"
    )
    return "\n".join(lines)
