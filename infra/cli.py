"""`flywheel`: one console script, one subcommand per job; each handler imports its stage lazily.

Dotted overrides such as `retrain.lora.r=16` may stand anywhere on the command line; they are taken out
before the subcommand is parsed and applied last (defaults < --config file < FLYWHEEL_* env < overrides).
Problems the user can fix (bad config, busy port, unreachable broker, ...) print one line and exit 2.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Optional

import typer

from infra.config import Config, ConfigError, load_config, split_overrides
from infra.errors import FlywheelError

log = logging.getLogger("flywheel")


class State:
    """What the top-level options set; the config is loaded on first use."""

    def __init__(self, config_path: Path | None, overrides: list[str]):
        self.config_path, self.overrides = config_path, overrides
        self._config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, self.overrides)
            logging.getLogger().setLevel(self._config.log_level)
        return self._config


def _state(ctx: typer.Context) -> State:
    return ctx.find_object(State)


def ensure_data_dir(path: Path) -> Path:
    """Create the data dir and prove it is writable, or say how to fix it."""
    probe = Path(path) / ".write-test"
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise FlywheelError(
            f"data dir {path} is not writable ({e.strerror}): set data_dir=PATH or FLYWHEEL_DATA_DIR "
            "to a folder you can write"
        ) from None
    return Path(path)


def start_kafka(cfg: Config, stack: ExitStack) -> tuple[str, str]:
    """(bootstrap, description): a configured cluster, a running bundled broker, or a new one owned here."""
    from infra import broker, kafka

    if cfg.kafka.bootstrap_servers:
        kafka.ensure_topics(cfg.kafka, cfg.kafka.bootstrap_servers)
        return cfg.kafka.bootstrap_servers, "Kafka cluster"
    running = broker.read_state(cfg.data_dir)
    if running is not None:
        return running.bootstrap, f"bundled broker (pid {running.pid}, started by `flywheel broker start`)"
    embedded = stack.enter_context(broker.EmbeddedBroker(cfg.kafka, cfg.data_dir))
    return embedded.bootstrap, f"bundled broker (pid {embedded.proc.pid})"


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


def _config_and_kafka(ctx: typer.Context) -> tuple[Config, str]:
    """The config, a writable data dir, and where Kafka is (the configured cluster or the bundled broker)."""
    from infra import broker

    cfg = _state(ctx).config()
    ensure_data_dir(cfg.data_dir)
    return cfg, broker.resolve_bootstrap(cfg.kafka, cfg.data_dir)


def _totals(totals: dict) -> str:
    names = {"findings": "PII findings"}
    return ", ".join(f"{v:,} {names.get(k, k.replace('_', ' '))}" for k, v in totals.items())


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="flywheel",
        help="Continuous learning for LLM chat apps: thumbs-up/down in, gated LoRA promotions out.\n\n"
        "Config: defaults < --config FILE (or $FLYWHEEL_CONFIG) < FLYWHEEL_SECTION__KEY < KEY=VALUE "
        "overrides anywhere on the line, e.g. `flywheel up retrain.lora.r=8`.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def main_options(
        ctx: typer.Context,
        config: Annotated[
            Optional[Path],
            typer.Option("--config", "-c", help="TOML config file (else $FLYWHEEL_CONFIG, else defaults)."),
        ] = None,
    ) -> None:
        ctx.obj = State(config, list(ctx.obj or []))

    @app.command()
    def up(
        ctx: typer.Context,
        duration: Annotated[
            Optional[float], typer.Option(help="Stop after this many seconds (for scripted runs).")
        ] = None,
        simulate: Annotated[
            int, typer.Option(help="Once up, produce this many synthetic chats and ratings to the topics.")
        ] = 0,
    ) -> None:
        """Start everything: broker (when embedded), database, ingest; Ctrl-C or SIGTERM stops all."""
        from infra import db

        cfg = _state(ctx).config()
        ensure_data_dir(cfg.data_dir)
        with StopSignal() as stop, ExitStack() as stack:
            bootstrap, kind = start_kafka(cfg, stack)
            typer.echo(f"kafka     {bootstrap}  {kind}; topics {cfg.kafka.chats_topic}, {cfg.kafka.feedback_topic}")
            con = db.open_store(cfg.db_path, cfg.db.threads)
            stack.callback(con.close)
            info = db.describe(con)
            typer.echo(f"database  {cfg.db_path}  schema v{info['schema_version']}, {len(info['tables'])} tables")
            from prometheus_client import CollectorRegistry

            from infra.services import build_ingest, start_ingest_thread

            registry = CollectorRegistry()  # one /metrics for ingest and the API
            ingest = build_ingest(cfg, bootstrap, con.cursor(), registry)
            thread = start_ingest_thread(ingest, stop.event)
            stack.callback(thread.join)
            typer.echo(f"ingest    consumer group {cfg.ingest.group_id}, {cfg.ingest.pii.workers} scrub workers")
            from infra.services import Api

            api = Api(cfg, bootstrap, registry)
            stack.callback(api.close)
            typer.echo(f"api       {api.url}/v1  (OpenAI-compatible; models: {', '.join(api.router.variants())})")
            if simulate:
                from infra.services import produce_synthetic

                produce_synthetic(cfg, bootstrap, simulate)
                typer.echo(f"simulate  produced {simulate} synthetic events")
            until = f"for {duration:g} s" if duration is not None else "until Ctrl-C"
            typer.echo(f"flywheel is up {until}")
            why = stop.wait(duration)
            stop.event.set()
            typer.echo(f"stopping ({why})")
            thread.join()
            typer.echo(f"ingested  {_totals(ingest.totals)}")
        typer.echo("stopped cleanly")

    @app.command()
    def serve(
        ctx: typer.Context,
        duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.")] = None,
    ) -> None:
        """Run the API alone (chat completions, feedback); events go through the outbox to Kafka."""
        from infra.services import Api

        cfg, bootstrap = _config_and_kafka(ctx)
        with StopSignal() as stop:
            api = Api(cfg, bootstrap)
            try:
                typer.echo(f"api {api.url}/v1  (OpenAI-compatible; models: {', '.join(api.router.variants())})")
                why = stop.wait(duration)
                typer.echo(f"stopping ({why})")
            finally:
                api.close()

    keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")

    @keys_app.command("hash")
    def keys_hash(key: Annotated[str, typer.Argument(help="The API key an app will send.")]) -> None:
        """Print the SHA-256 to put in serving.api_keys (the key itself is never stored)."""
        from serving.ids import hash_key

        typer.echo(hash_key(key))

    @app.command()
    def simulate(
        ctx: typer.Context,
        events: Annotated[int, typer.Option(help="How many events (chats, and ratings of ~30% of them).")] = 1000,
        malformed: Annotated[int, typer.Option(help="Also send this many broken events.")] = 0,
        seed: Annotated[int, typer.Option(help="Same seed, same events.")] = 0,
    ) -> None:
        """Produce synthetic store-support chats and ratings (with names, emails, phones) to the topics."""
        from infra.services import produce_synthetic

        cfg, bootstrap = _config_and_kafka(ctx)
        sent = produce_synthetic(cfg, bootstrap, events, seed, malformed)
        typer.echo(f"produced {sent} events to {cfg.kafka.chats_topic} and {cfg.kafka.feedback_topic} at {bootstrap}")

    @app.command()
    def ingest(
        ctx: typer.Context,
        duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.")] = None,
    ) -> None:
        """Consume chats and feedback from Kafka, scrub PII, store in DuckDB; SIGTERM finishes the batch."""
        from infra import db
        from infra.services import build_ingest, run_ingest

        cfg, bootstrap = _config_and_kafka(ctx)
        with StopSignal() as stop:
            con = db.open_store(cfg.db_path, cfg.db.threads)
            try:
                consumer = build_ingest(cfg, bootstrap, con)
                typer.echo(f"ingesting from {bootstrap} into {cfg.db_path}")
                deadline = None if duration is None else time.monotonic() + duration
                run_ingest(consumer, lambda: stop.event.is_set() or (deadline is not None and time.monotonic() > deadline))
                typer.echo(f"stopped ({stop.why if stop.event.is_set() else 'duration elapsed'}): {_totals(consumer.totals)}")
            finally:
                con.close()

    broker_app = typer.Typer(help="Run the bundled Kafka broker (Tansu) in the background.", no_args_is_help=True)
    app.add_typer(broker_app, name="broker")

    @broker_app.command("start")
    def broker_start(ctx: typer.Context) -> None:
        """Start the bundled broker as a background process recorded in the data dir."""
        from infra import broker

        cfg = _state(ctx).config()
        if cfg.kafka.bootstrap_servers:
            raise FlywheelError("kafka.bootstrap_servers is set: Flywheel uses that cluster and starts no broker")
        ensure_data_dir(cfg.data_dir)
        running = broker.read_state(cfg.data_dir)
        if running is not None:
            typer.echo(f"broker already running at {running.bootstrap} (pid {running.pid})")
            return
        started = broker.EmbeddedBroker(cfg.kafka, cfg.data_dir, detach=True).start()
        typer.echo(f"broker started at {started.bootstrap} (pid {started.proc.pid})")

    @broker_app.command("stop")
    def broker_stop(ctx: typer.Context) -> None:
        """Stop the background broker (its in-memory topics are lost)."""
        from infra import broker

        stopped = broker.stop_daemon(_state(ctx).config().data_dir)
        typer.echo(f"broker at {stopped.bootstrap} stopped" if stopped else "no broker was running")

    @broker_app.command("status")
    def broker_status(ctx: typer.Context) -> None:
        """Say where the broker is and whether it answers (exit 2 when none does)."""
        from infra import broker, kafka

        cfg = _state(ctx).config()
        bootstrap = broker.resolve_bootstrap(cfg.kafka, cfg.data_dir)
        client = kafka.admin(cfg.kafka, bootstrap)
        try:
            topics = sorted(t for t in client.list_topics() if not t.startswith("__"))
        finally:
            client.close()
        typer.echo(f"broker at {bootstrap} answers; topics: {', '.join(topics) or 'none'}")

    db_app = typer.Typer(help="The DuckDB store.", no_args_is_help=True)
    app.add_typer(db_app, name="db")

    @db_app.command("init")
    def db_init(ctx: typer.Context) -> None:
        """Create the database file or bring its schema up to date (safe to repeat)."""
        from infra import db

        cfg = _state(ctx).config()
        ensure_data_dir(cfg.data_dir)
        con = db.connect(cfg.db_path)
        try:
            applied = db.migrate(con)
            version = db.describe(con)["schema_version"]
        finally:
            con.close()
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none (already up to date)"
        typer.echo(f"{cfg.db_path}: schema v{version}; applied {names}")

    @db_app.command("info")
    def db_info(ctx: typer.Context) -> None:
        """Schema version and row counts per table."""
        from infra import db

        cfg = _state(ctx).config()
        con = db.connect(cfg.db_path, read_only=True)
        try:
            info = db.describe(con)
        finally:
            con.close()
        typer.echo(f"{cfg.db_path}: schema v{info['schema_version']}")
        for table, count in info["tables"].items():
            typer.echo(f"  {table:<16} {count:>10,}")

    config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
    app.add_typer(config_app, name="config")

    @config_app.command("show")
    def config_show(ctx: typer.Context) -> None:
        """Print the effective config as TOML (secrets masked)."""
        import tomli_w

        from infra.config import to_toml_dict

        typer.echo(tomli_w.dumps(to_toml_dict(_state(ctx).config())), nl=False)

    @config_app.command("reference")
    def config_reference() -> None:
        """Print every config key with its default and meaning (Markdown table)."""
        from infra.config import reference_markdown

        typer.echo(reference_markdown())

    return app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 usage or config problem)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = split_overrides(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is one line per connection
    command = typer.main.get_command(build_app())
    try:
        # standalone mode prints usage errors as click does and exits; our own errors come through.
        command.main(args=rest, prog_name="flywheel", standalone_mode=True, obj=overrides)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (ConfigError, FlywheelError) as e:
        typer.echo(f"flywheel: {e}", err=True)
        return 2
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
