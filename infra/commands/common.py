"""What every command shares: the lazily loaded config, the data dir, the database for one command, and the
signal handling that lets a long-running command stop in order."""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from infra.config import Config, load_config
from infra.errors import FlywheelError


@dataclass
class InService:
    """A command run inside `flywheel up` for a reviewer who sent it to the admin API (`infra.remote`): the
    service's config, its DuckDB connection and review store, and the reviewer it acts as."""

    cfg: Config
    con: Any  # the service's duckdb connection: each command gets a cursor of its own
    review: Any  # infra.services.ReviewStore
    actor: str


class State:
    """What the top-level options set; the config is loaded on first use."""

    def __init__(self, config_path: Path | None, overrides: list[str], service: InService | None = None):
        self.config_path, self.overrides, self.service = config_path, overrides, service
        self._config: Config | None = service.cfg if service is not None else None

    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, self.overrides)
            logging.getLogger().setLevel(self._config.log_level)
        return self._config


def state(ctx: typer.Context) -> State:
    found = ctx.find_object(State)
    assert found is not None  # the top-level callback sets it before any command runs
    return found


def ensure_data_dir(path: Path) -> Path:
    """Create the data dir (0700: it holds chat text, keys and secrets) and prove it is writable, or say how
    to fix it."""
    probe = Path(path) / ".write-test"
    try:
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
        Path(path).chmod(0o700)  # one made by an earlier version, or by hand
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise FlywheelError(
            f"data dir {path} is not writable ({e.strerror}): set data_dir=PATH or FLYWHEEL_DATA_DIR "
            "to a folder you can write"
        ) from None
    return Path(path)


DEMO_KEYS_HELP = (
    "Serve the default config's public keys (flywheel-demo-key, flywheel-review-key), on loopback "
    "only. Without it, keys left at their default are replaced by keys generated on the first run."
)


class StopSignal:
    """SIGINT/SIGTERM set a flag instead of killing the process, so that shutdown runs in order.

    Installed before anything starts: a signal during start-up stops right after it.
    """

    def __init__(self) -> None:
        self.event, self.why = threading.Event(), "duration elapsed"

    def _handle(self, signum, _frame) -> None:
        self.why = signal.Signals(signum).name
        self.event.set()

    def __enter__(self) -> StopSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def wait(self, duration: float | None) -> str:
        """Block until a signal or `duration` seconds; returns why it stopped."""
        deadline = None if duration is None else time.monotonic() + duration
        # Short waits in a loop: a bare Event.wait() can sit through a signal until the next bytecode.
        while not self.event.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self.why


def config_and_kafka(ctx: typer.Context) -> tuple[Config, str]:
    """The config, a writable data dir, and where Kafka is (the configured cluster or the bundled broker)."""
    from infra import broker

    cfg = state(ctx).config()
    ensure_data_dir(cfg.data_dir)
    return cfg, broker.resolve_bootstrap(cfg.kafka, cfg.data_dir)


def cli_actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def actor_of(ctx: typer.Context, given: str | None) -> str:
    """Who a command acts as: `given` (--reviewer, --actor) or cli:<login>; through the service, the reviewer
    whose key was sent, and no one else."""
    service = state(ctx).service
    if service is None:
        return given or cli_actor()
    if given is not None and given != service.actor:
        raise FlywheelError(f"through the service you act as {service.actor}, the reviewer whose key you sent")
    return service.actor


def clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@contextmanager
def store(ctx: typer.Context, read_only: bool = False):
    """The database, opened for one command (migrated unless read-only)."""
    from infra import db

    st = state(ctx)
    if st.service is not None:  # inside `flywheel up`: its connection, which also anchors the audit log itself
        cursor = st.service.con.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
        return
    cfg = st.config()
    if read_only:
        con = db.connect(cfg.db_path, read_only=True)
    else:
        ensure_data_dir(cfg.data_dir)
        con = db.open_store(cfg.db_path, cfg.db.threads)
    try:
        yield con
        if not read_only:
            from infra import keys

            keys.write_anchor(con, cfg.data_dir)  # whatever this command logged is anchored before it exits
    finally:
        con.close()
