"""`flywheel db`: create or migrate, describe, and compact the DuckDB file."""

from __future__ import annotations

import typer

from infra.commands.common import ensure_data_dir, state, store

app = typer.Typer(help="The DuckDB store.", no_args_is_help=True)


@app.command("init")
def db_init(ctx: typer.Context) -> None:
    """Create the database file or bring its schema up to date (safe to repeat)."""
    from infra import db

    cfg = state(ctx).config()
    ensure_data_dir(cfg.data_dir)
    con = db.connect(cfg.db_path)
    try:
        applied = db.migrate(con)
        version = db.describe(con)["schema_version"]
    finally:
        con.close()
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none (already up to date)"
    typer.echo(f"{cfg.db_path}: schema v{version}; applied {names}")


@app.command("info")
def db_info(ctx: typer.Context) -> None:
    """Schema version and row counts per table."""
    from infra import db

    cfg = state(ctx).config()
    with store(ctx, read_only=True) as con:
        info = db.describe(con)
    typer.echo(f"{cfg.db_path}: schema v{info['schema_version']}")
    for table, count in info["tables"].items():
        typer.echo(f"  {table:<16} {count:>10,}")


@app.command("compact")
def db_compact(ctx: typer.Context) -> None:
    """Rewrite the database file so that deleted values are gone from its bytes."""
    from infra import db

    cfg = state(ctx).config()
    before, after = db.compact(cfg.db_path)
    typer.echo(f"{cfg.db_path}: compacted ({before:,} -> {after:,} bytes)")
