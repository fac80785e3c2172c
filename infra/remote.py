"""The read and admin commands while `flywheel up` holds the database.

DuckDB allows one writer process per file, and `flywheel up` is that writer while it runs. The commands below
then go through the service instead of failing: the CLI finds it in DATA_DIR/service.json (written by `up`),
sends the command and its arguments to `POST /v1/admin/command` with a reviewer key (FLYWHEEL_REVIEWER_KEY, one of
serving.admin_keys), and the service runs the same command function on its own connection, acting as that
reviewer, and answers what it printed and its exit code. The output is the same because the code is.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path

from infra.errors import FlywheelError
from serving.schemas import REMOTE_COMMANDS

log = logging.getLogger(__name__)
REMOTE = {tuple(c.split()) for c in REMOTE_COMMANDS}
ENDPOINT = "service.json"
KEY_ENV = "FLYWHEEL_REVIEWER_KEY"
_running = threading.Lock()  # a command's output is captured from stdout: one at a time


def command_of(argv: list[str]) -> tuple[str, ...] | None:
    """The remote command `argv` starts with (("ab", "report"), ("forget",)), or None."""
    for path in REMOTE:
        if tuple(argv[: len(path)]) == path:
            return path
    return None


def split_top_options(rest: list[str]) -> tuple[Path | None, list[str]]:
    """(--config FILE, the command line after the top-level options), as `flywheel` parses them."""
    config, i = None, 0
    while i < len(rest) and rest[i].startswith("-"):
        if rest[i] in ("--config", "-c") and i + 1 < len(rest):
            config, i = Path(rest[i + 1]), i + 2
        elif rest[i].startswith("--config="):
            config, i = Path(rest[i].split("=", 1)[1]), i + 1
        else:
            break
    return config, rest[i:]


# -- in `flywheel up` ------------------------------------------------------------------------------------------
def write_endpoint(data_dir: Path, url: str) -> None:
    path = Path(data_dir) / ENDPOINT
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    os.replace(tmp, path)


def clear_endpoint(data_dir: Path) -> None:
    path = Path(data_dir) / ENDPOINT
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def run_inside(service, argv: list[str]) -> dict:
    """Run `argv` (a remote command) as `flywheel` would, inside the service (`service`: an InService)."""
    from click.testing import CliRunner
    from typer.main import get_command

    from infra.commands import build_app
    from infra.commands.common import State
    from infra.config import ConfigError

    if command_of(argv) is None:  # the route's schema allows only these: a second lock on the door
        raise ValueError(f"{' '.join(argv[:2])!r}: not a command the service runs")
    with _running:
        result = CliRunner().invoke(get_command(build_app()), argv, obj=State(None, [], service), prog_name="flywheel")
    stderr, code = result.stderr, result.exit_code
    if isinstance(result.exception, ConfigError | FlywheelError):
        stderr, code = stderr + f"flywheel: {result.exception}\n", 2
    elif result.exception is not None and not isinstance(result.exception, SystemExit):
        log.error("flywheel %s failed in the service", " ".join(argv), exc_info=result.exc_info)
        stderr, code = stderr + f"flywheel: {' '.join(argv[:2])} failed in the service (its log has why)\n", 1
    log.info("flywheel %s run for %s through the admin API: exit %d", " ".join(argv[:2]), service.actor, code)
    return {"exit_code": code, "stdout": result.stdout, "stderr": stderr}


# -- in the CLI ------------------------------------------------------------------------------------------------
def forward(held: FlywheelError, rest: list[str], overrides: list[str]) -> int:
    """The command in `rest` found the database held: run it through the service that holds it, print what it
    printed and return its exit code; a command that cannot go through fails with why."""
    import httpx

    from infra.config import load_config

    config_path, argv = split_top_options(rest)
    path = command_of(argv)
    if path is None:
        raise held
    data_dir = load_config(config_path, overrides).data_dir
    try:
        url = json.loads((Path(data_dir) / ENDPOINT).read_text())["url"]
    except (OSError, ValueError, KeyError):
        raise FlywheelError(f"{held}; no running `flywheel up` is named in {Path(data_dir) / ENDPOINT}") from None
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise FlywheelError(
            f"the database is held by `flywheel up` ({url}): set {KEY_ENV} to a reviewer key (serving.admin_keys) "
            f"to run `flywheel {' '.join(path)}` through it"
        )
    ignored = [o for o in overrides if not o.startswith("data_dir=")]
    if ignored:
        raise FlywheelError(
            f"{', '.join(ignored)}: through the running service its own config applies; drop the override"
        )
    try:
        body = {"command": " ".join(path), "args": argv[len(path) :]}
        r = httpx.post(f"{url}/v1/admin/command", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=600)
    except httpx.HTTPError as e:
        raise FlywheelError(f"the database is held, and the service at {url} does not answer: {e}") from None
    if r.status_code != 200:
        try:
            why = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            why = r.text[:200]
        raise FlywheelError(f"the service at {url} refused `flywheel {' '.join(path)}`: {r.status_code} {why}")
    answer = r.json()
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    return int(answer["exit_code"])
