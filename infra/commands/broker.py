"""`flywheel broker`: the bundled Kafka broker (Tansu) as a background process."""

from __future__ import annotations

import typer

from infra.commands.common import ensure_data_dir, state
from infra.errors import FlywheelError

app = typer.Typer(help="Run the bundled Kafka broker (Tansu) in the background.", no_args_is_help=True)


@app.command("start")
def broker_start(ctx: typer.Context) -> None:
    """Start the bundled broker as a background process recorded in the data dir."""
    from infra import broker

    cfg = state(ctx).config()
    if cfg.kafka.bootstrap_servers:
        raise FlywheelError("kafka.bootstrap_servers is set: Flywheel uses that cluster and starts no broker")
    ensure_data_dir(cfg.data_dir)
    running = broker.read_state(cfg.data_dir)
    if running is not None:
        typer.echo(f"broker already running at {running.bootstrap} (pid {running.pid})")
        return
    started = broker.EmbeddedBroker(cfg.kafka, cfg.data_dir, detach=True).start()
    typer.echo(f"broker started at {started.bootstrap} (pid {started.proc.pid if started.proc else '?'})")


@app.command("stop")
def broker_stop(ctx: typer.Context) -> None:
    """Stop the background broker (its in-memory topics are lost)."""
    from infra import broker

    stopped = broker.stop_daemon(state(ctx).config().data_dir)
    typer.echo(f"broker at {stopped.bootstrap} stopped" if stopped else "no broker was running")


@app.command("status")
def broker_status(ctx: typer.Context) -> None:
    """Say where the broker is and whether it answers (exit 2 when none does)."""
    from infra import broker, kafka

    cfg = state(ctx).config()
    bootstrap = broker.resolve_bootstrap(cfg.kafka, cfg.data_dir)
    client = kafka.admin(cfg.kafka, bootstrap)
    try:
        topics = sorted(t for t in client.list_topics() if not t.startswith("__"))
    finally:
        client.close()
    typer.echo(f"broker at {bootstrap} answers; topics: {', '.join(topics) or 'none'}")
