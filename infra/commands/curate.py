"""`flywheel curate` (rated chats into samples, and a snapshot) and `flywheel forget` (erase one user)."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.commands.common import actor_of, cli_actor, ensure_data_dir, state, store
from infra.errors import FlywheelError


def curate(
    ctx: typer.Context,
    snapshot: Annotated[bool, typer.Option(help="Also freeze the approved samples into a snapshot.")] = True,
) -> None:
    """Turn rated chats into samples (filters, dedup, per-user cap, review policy) and snapshot the
    approved ones as Parquet."""
    from curation import curate as curation
    from curation import snapshot as snapshots
    from infra import db

    cfg = state(ctx).config()
    ensure_data_dir(cfg.data_dir)
    con = db.open_store(cfg.db_path, cfg.db.threads)
    try:
        report = curation.run(con, cfg.curation, actor=cli_actor())
        typer.echo(curation_summary(report, cfg.curation.review_policy))
        if snapshot:
            try:
                snap = snapshots.build(con, cfg.curation, cfg.data_dir / "snapshots", actor=cli_actor())
            except ValueError as e:
                raise FlywheelError(str(e)) from None
            if snap is None:
                typer.echo("snapshot   none: no approved samples yet (see `flywheel review list`)")
            else:
                c = snap.manifest["counts"]
                typer.echo(
                    f"snapshot   {snap.snapshot_id} ({'new' if snap.created else 'unchanged'}): "
                    f"{c['train']} train + {c['eval']} eval samples from {c['users']} users, "
                    f"{c['over_user_cap']} over the per-user cap; {snap.path}"
                )
    finally:
        con.close()


def forget(
    ctx: typer.Context,
    app_id: Annotated[
        str,
        typer.Option(
            "--app", help="The app that sent the user's requests (a name in serving.api_keys): a user is (app, user)."
        ),
    ],
    user: Annotated[str, typer.Option("--user", help="The user id, exactly as the app sent it.")],
    actor: Annotated[str | None, typer.Option(help="Who asks (default: cli:<login>).")] = None,
) -> None:
    """Erase a user's chats, feedback, samples and findings (then compact the database file), and list
    the snapshots and adapters trained on their data; those adapters are never promoted again."""
    from infra import db
    from infra.services import forget_user

    cfg, service = state(ctx).config(), state(ctx).service
    who = actor_of(ctx, actor)
    if service is not None:  # inside `flywheel up`: its store also stops late ratings and schedules a retrain
        from serving.pages import BadDecision

        try:
            done = service.review.forget(app_id, user, who)
        except BadDecision as e:
            raise FlywheelError(str(e)) from None
    else:
        with store(ctx) as con:
            try:
                done = forget_user(con, cfg, app_id, user, who)
            except ValueError as e:
                raise FlywheelError(str(e)) from None
        before, after = db.compact(cfg.db_path)
    typer.echo("deleted    " + ", ".join(f"{n} {t}" for t, n in done["deleted"].items()))
    snapshots, adapters = ", ".join(done["snapshots"]), ", ".join(done["adapters"])
    typer.echo(
        f"snapshots  {snapshots + ' held their data (Parquet files deleted)' if snapshots else 'none held their data'}"
    )
    typer.echo(
        "adapters   "
        + (f"{adapters} trained on it (marked tainted: never promoted again)" if adapters else "none trained on it")
    )
    for line in done.get("routing", []):
        typer.echo(f"routing    {line}")
    if service is not None:
        typer.echo("database   compaction pending: runs when the service stops or restarts; audit entry written")
    else:
        typer.echo(f"database   compacted ({before:,} -> {after:,} bytes); audit entry written")


def curation_summary(report, policy: str) -> str:
    up = "-" if report.up_share is None else f"{report.up_share:.0%}"
    dropped = ", ".join(f"{n} {k}" for k, n in sorted(report.dropped.items())) or "none"
    return (
        f"candidates {report.candidates} rated chats: {report.ratings_up} up, {report.ratings_down} down "
        f"(up share {up}; unhappy users rate more), {report.corrections} corrections\n"
        f"samples    {report.samples} ({report.new} new), {report.kept} kept from {report.users} users "
        f"(cap {report.per_user_cap} per user); dropped: {dropped}\n"
        f"review     policy {policy}: {report.auto_approved} approved by the policy, {report.pending} pending"
    )
