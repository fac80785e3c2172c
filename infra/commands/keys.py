"""`flywheel keys`: API key helpers."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="API keys.", no_args_is_help=True)


@app.command("hash")
def keys_hash(key: Annotated[str, typer.Argument(help="The API key an app will send.")]) -> None:
    """Print the SHA-256 to put in serving.api_keys (the key itself is never stored)."""
    from serving.ids import hash_key

    typer.echo(hash_key(key))
