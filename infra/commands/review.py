"""`flywheel review`: the queue of samples a reviewer approves or rejects before training."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.commands.common import actor_of, clip, store
from infra.errors import FlywheelError

app = typer.Typer(help="The review queue: approve or reject samples before training.", no_args_is_help=True)


@app.command("list")
def review_list(ctx: typer.Context, limit: Annotated[int, typer.Option(help="At most this many.")] = 20) -> None:
    """Pending samples: id, label, rating, PII types found, and the scrubbed text."""
    from rich.console import Console
    from rich.table import Table

    from curation import review

    with store(ctx) as con:
        rows, counts = review.pending(con, limit), review.counts(con)
    table = Table("sample", "label", "source", "PII found", "prompt", "answer", show_lines=False)
    for r in rows:
        last = next((m["content"] for m in reversed(r["prompt"]) if m["role"] == "user"), "")
        table.add_row(r["sample_id"], r["label"], r["source"], ",".join(r["pii"]) or "-", clip(last), clip(r["answer"]))
    Console(width=160).print(table)
    typer.echo(", ".join(f"{v} {k}" for k, v in counts.items()))


@app.command("approve")
def review_approve(
    ctx: typer.Context,
    sample_ids: Annotated[list[str] | None, typer.Argument(help="Sample ids.")] = None,
    all_pending: Annotated[bool, typer.Option("--all-pending", help="Every pending sample.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the audit log).")] = None,
    reviewer: Annotated[str | None, typer.Option(help="Your identity (default: cli:<login>).")] = None,
) -> None:
    """Approve samples for training, one or many."""
    _decide(ctx, "approve", sample_ids, all_pending, reason, reviewer)


@app.command("reject")
def review_reject(
    ctx: typer.Context,
    sample_ids: Annotated[list[str] | None, typer.Argument(help="Sample ids.")] = None,
    reason: Annotated[str, typer.Option(help="Why (required; kept in the audit log).")] = "",
    all_pending: Annotated[bool, typer.Option("--all-pending", help="Every pending sample.")] = False,
    reviewer: Annotated[str | None, typer.Option(help="Your identity (default: cli:<login>).")] = None,
) -> None:
    """Reject samples: they never reach training."""
    _decide(ctx, "reject", sample_ids, all_pending, reason, reviewer)


def _decide(ctx, decision, sample_ids, all_pending, reason, reviewer) -> None:
    from curation import review

    actor = actor_of(ctx, reviewer)
    with store(ctx) as con:
        ids = list(sample_ids or [])
        if all_pending:
            ids += review.pending_ids(con)
        if not ids:
            raise FlywheelError("name sample ids, or --all-pending")
        try:
            n = review.decide(con, ids, decision, actor, reason)
        except review.ReviewError as e:
            raise FlywheelError(str(e)) from None
    typer.echo(f"{decision}d {n} sample{'s' * (n != 1)} as {actor}")
