"""`flywheel`: one console script, one subcommand per job; each handler imports its stage lazily.

Dotted overrides such as `retrain.lora.r=16` may stand anywhere on the command line; they are taken out
before the subcommand is parsed and applied last (defaults < --config file < FLYWHEEL_* env < overrides).
Problems the user can fix (bad config, busy port, unreachable broker, ...) print one line and exit 2.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from infra.commands import build_app
from infra.config import ConfigError, split_overrides
from infra.errors import DatabaseHeld, FlywheelError

__all__ = ["build_app", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 usage or config problem)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.umask(0o077)  # every file this process and its children create (DuckDB, outbox, logs, adapters) is 0600
    rest, overrides = split_overrides(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is one line per connection
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job added or run
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request (vLLM health checks every 2 s)
    command = typer.main.get_command(build_app())
    try:
        # standalone mode prints usage errors as click does and exits; our own errors come through.
        command.main(args=rest, prog_name="flywheel", standalone_mode=True, obj=overrides)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except DatabaseHeld as held:  # `flywheel up` holds it: the read and admin commands go through its API
        from infra import remote

        try:
            return remote.forward(held, rest, overrides)
        except (ConfigError, FlywheelError) as e:
            typer.echo(f"flywheel: {e}", err=True)
            return 2
    except (ConfigError, FlywheelError) as e:
        typer.echo(f"flywheel: {e}", err=True)
        return 2
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
