"""`flywheel config`: the effective config and the reference of every key."""

from __future__ import annotations

import typer

from infra.commands.common import state

app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


@app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective config as TOML (secrets masked)."""
    import tomli_w

    from infra.config import to_toml_dict

    typer.echo(tomli_w.dumps(to_toml_dict(state(ctx).config())), nl=False)


@app.command("reference")
def config_reference() -> None:
    """Print every config key with its default and meaning (Markdown table)."""
    from infra.config import reference_markdown

    typer.echo(reference_markdown())
