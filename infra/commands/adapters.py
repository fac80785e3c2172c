"""`flywheel adapters`: the registry's versions, lineage and status history."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated

import typer

from infra.commands.common import clip, store
from infra.errors import FlywheelError

app = typer.Typer(help="The adapter registry: versions, status, lineage, history.", no_args_is_help=True)


@app.command("list")
def adapters_list(ctx: typer.Context) -> None:
    """Every version with its parent, status, snapshot and reason."""
    from rich.console import Console
    from rich.table import Table

    from retrain import registry

    with store(ctx, read_only=True) as con:
        rows = registry.listing(con)
    table = Table("version", "parent", "status", "snapshot", "created (UTC)", "reason")
    for version, parent, status, tainted, snap, created, reason in rows:
        table.add_row(
            version, parent or "-", status + (" (tainted)" if tainted else ""), snap or "-", created, clip(reason, 70)
        )
    Console(width=160).print(table)


@app.command("history")
def adapters_history(
    ctx: typer.Context,
    at: Annotated[
        str | None,
        typer.Option(help="Only say which version served at this time (ISO 8601, UTC unless it names a zone)."),
    ] = None,
) -> None:
    """Every status change, oldest first; --at T names the version that served at T."""
    from datetime import datetime

    from retrain import registry

    with store(ctx, read_only=True) as con:
        if at is not None:
            try:
                when = datetime.fromisoformat(at)
            except ValueError:
                raise FlywheelError(f"--at {at!r} is not an ISO 8601 time such as 2026-11-22T02:00") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            typer.echo(f"{when.isoformat()}: {registry.live_at(con, when)}")
            return
        for changed, version, status, reason in registry.history(con):
            typer.echo(f"{changed[:19]}Z  {version:<6} {status:<11} {reason}")
