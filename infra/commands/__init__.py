"""The `flywheel` command tree: a module per command group (`review`, `ab`, `adapters`, ...), a function per
command, each importing its stage inside the handler so that `flywheel --help` loads no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from infra.commands import ab, adapters, audit, broker, config, curate, db, keys, retrain, review, run
from infra.commands.common import State

HELP = (
    "Continuous learning for LLM chat apps: thumbs-up/down in, gated LoRA promotions out.\n\n"
    "Config: defaults < --config FILE (or $FLYWHEEL_CONFIG) < FLYWHEEL_SECTION__KEY < KEY=VALUE "
    "overrides anywhere on the line, e.g. `flywheel up retrain.lora.r=8`."
)
# In the order `flywheel --help` lists them: the loop first, then the groups.
COMMANDS = (run.up, run.demo, run.serve, run.simulate, run.ingest, curate.curate, curate.forget, retrain.retrain)
GROUPS = {
    "review": review.app,
    "audit": audit.app,
    "adapters": adapters.app,
    "ab": ab.app,
    "keys": keys.app,
    "broker": broker.app,
    "db": db.app,
    "config": config.app,
}


def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config file (else $FLYWHEEL_CONFIG, else defaults).")
    ] = None,
) -> None:
    if not isinstance(ctx.obj, State):  # a State already: a command run inside the service (infra.remote)
        ctx.obj = State(config, list(ctx.obj or []))


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="flywheel",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(main_options)
    for command in COMMANDS:
        app.command()(command)
    for name, group in GROUPS.items():
        app.add_typer(group, name=name)
    return app
