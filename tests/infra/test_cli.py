"""The CLI as a user runs it: help everywhere, one-line errors with exit 2, clean start and stop."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import typer

from infra.cli import build_app
from infra.db import available_migrations
from tests.conftest import ROOT, flywheel


def leaf_commands(command=None, path=()):
    command = command or typer.main.get_command(build_app())
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path
        return
    for name, sub in subcommands.items():
        yield from leaf_commands(sub, path + (name,))


COMMANDS = list(leaf_commands())


def test_the_tree_has_the_promised_commands():
    assert {
        ("up",),
        ("broker", "start"),
        ("broker", "stop"),
        ("broker", "status"),
        ("db", "init"),
        ("db", "info"),
        ("config", "show"),
    } <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help_and_is_documented(path):
    result = flywheel(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: flywheel " + " ".join(path) in result.stdout
    command = typer.main.get_command(build_app())
    for name in path:
        command = command.commands[name]
    assert command.help and command.help.split("\n")[0].strip()[:30] in " ".join(result.stdout.split())
    assert "flywheel " + " ".join(path) in (ROOT / "README.md").read_text()


def test_help_leaves_torch_unloaded():
    code = (
        "import sys, time; t = time.perf_counter(); from infra.cli import main; rc = main(['--help']);"
        "print(rc, 'torch' in sys.modules, time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    rc, torch_loaded, _seconds = out.split()[-3:]
    assert (rc, torch_loaded) == ("0", "False")


def one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("flywheel:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_input_gives_one_line_and_exit_2(tmp_path):
    env = {"FLYWHEEL_DATA_DIR": str(tmp_path / "var")}
    one_line_error(flywheel("config", "show", "retrain.lora.rank=3", env=env), "retrain.lora.rank", "accepted")
    one_line_error(flywheel("config", "show", "kafka.partitions=lots", env=env), "kafka.partitions", "'lots'")
    one_line_error(flywheel("up", "--duration", "1", f"kafka.broker_binary={tmp_path}/tansu", env=env), "broker binary")
    one_line_error(
        flywheel("up", "kafka.bootstrap_servers=127.0.0.1:9", "kafka.connect_timeout_s=1", env=env),
        "cannot reach Kafka at 127.0.0.1:9",
    )
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    one_line_error(flywheel("up", f"data_dir={blocked}/var", env=env), "not writable")
    one_line_error(flywheel("--config", str(tmp_path / "none.toml"), "config", "show", env=env), "not found")


def test_port_in_use_from_the_cli(tmp_path, broker):
    port = broker.bootstrap.rsplit(":", 1)[1]
    result = flywheel("up", f"kafka.port={port}", env={"FLYWHEEL_DATA_DIR": str(tmp_path)})
    one_line_error(result, f"port {port}", "in use")


def up_env(data, tiny_lm) -> dict:
    """`flywheel up` on the tiny model and a free port: the real 135M model is for the end-to-end tests."""
    return {"FLYWHEEL_DATA_DIR": str(data), "FLYWHEEL_BASE_MODEL": str(tiny_lm), "FLYWHEEL_SERVING__PORT": "0"}


@pytest.mark.slow
def test_up_starts_broker_database_ingest_and_api_then_stops_cleanly(tmp_path, tiny_lm):
    data = tmp_path / "var"
    result = flywheel("up", "--duration", "1", env=up_env(data, tiny_lm))
    assert result.returncode == 0, result.stderr
    latest = available_migrations()[-1].version
    assert "bundled broker" in result.stdout and f"schema v{latest}," in result.stdout
    assert "api       http://127.0.0.1:" in result.stdout
    assert result.stdout.rstrip().endswith("stopped cleanly")
    assert (data / "flywheel.duckdb").exists()
    assert not (data / "broker.json").exists()


@pytest.mark.slow
def test_up_ingests_what_is_produced_to_the_topics(tmp_path, tiny_lm):
    data = tmp_path / "var"
    result = flywheel("up", "--duration", "30", "--simulate", "300", env=up_env(data, tiny_lm))
    assert result.returncode == 0, result.stderr
    con = duckdb.connect(str(data / "flywheel.duckdb"), read_only=True)
    chats, feedback = con.execute("SELECT (SELECT count(*) FROM chats), (SELECT count(*) FROM feedback)").fetchone()
    findings = con.execute("SELECT count(*) FROM pii_findings").fetchone()[0]
    con.close()
    assert chats + feedback == 300 and findings > 0
    assert f"ingested  {chats:,} chats, {feedback:,} feedback" in result.stdout


@pytest.mark.slow
def test_sigterm_stops_up_cleanly(tmp_path, tiny_lm):
    env = {**os.environ, **up_env(tmp_path / "var", tiny_lm)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "flywheel is up" in line:
            break
    # First run without --demo-keys: the README's public keys are replaced by new ones, printed once.
    assert [line.split(":")[0] for line in lines[:2]] == [
        "keys      new app key for 'app'",
        "keys      new reviewer key for 'reviewer'",
    ]
    kafka = next(line for line in lines if line.startswith("kafka"))
    broker_pid = int(kafka.split("pid ")[1].split(")")[0])
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopping (SIGTERM)" in out and "stopped cleanly" in out
    time.sleep(0.2)
    assert not Path(f"/proc/{broker_pid}").exists() or "zombie" in Path(f"/proc/{broker_pid}/status").read_text()


def test_broker_start_status_stop(tmp_path):
    env = {"FLYWHEEL_DATA_DIR": str(tmp_path)}
    try:
        started = flywheel("broker", "start", env=env)
        assert started.returncode == 0 and "broker started at 127.0.0.1:" in started.stdout
        again = flywheel("broker", "start", env=env)
        assert "already running" in again.stdout
        status = flywheel("broker", "status", env=env)
        assert status.returncode == 0 and "flywheel.chats, flywheel.feedback" in status.stdout
    finally:
        stopped = flywheel("broker", "stop", env=env)
    assert "stopped" in stopped.stdout
    one_line_error(flywheel("broker", "status", env=env), "no Kafka broker is running")


def test_db_init_is_idempotent_and_info_counts(tmp_path):
    env = {"FLYWHEEL_DATA_DIR": str(tmp_path)}
    one_line_error(flywheel("db", "info", env=env), "flywheel db init")
    first = flywheel("db", "init", env=env)
    assert first.returncode == 0 and "applied 0001_initial" in first.stdout
    second = flywheel("db", "init", env=env)
    assert "already up to date" in second.stdout
    info = flywheel("db", "info", env=env)
    assert info.returncode == 0 and "chats" in info.stdout and "kafka_offsets" in info.stdout


def test_a_database_held_by_another_writer_is_one_line(tmp_path):
    path = tmp_path / "flywheel.duckdb"
    duckdb.connect(str(path)).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = flywheel("db", "init", env={"FLYWHEEL_DATA_DIR": str(tmp_path)})
        one_line_error(result, "in use by process", str(holder.pid))
    finally:
        holder.kill()
        holder.wait()
