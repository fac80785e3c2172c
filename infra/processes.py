"""The control process's children: training and gate runs, each `python -m ...` in its own session, with a
timeout, a kill that reaches its whole process group, and a failure reason read from its stderr. One run at
a time across processes (`RetrainLock`, a file lock in the data dir released by the kernel if we die)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

STOPPED = "stopped: the control process is shutting down"


class RetrainLock:
    """An exclusive, non-blocking lock on DATA_DIR/retrain.lock (released by the kernel if we die)."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "retrain.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Children:
    """The training and gate processes running now, so that shutting down can kill them (a run in flight is
    then recorded as failed with reason "stopped", the incumbent untouched)."""

    def __init__(self) -> None:
        self.running: set[subprocess.Popen] = set()
        self.stopped: set[int] = set()  # pids that stop() killed: their runs fail as "stopped", not "killed"
        self.stopping = threading.Event()  # while set, no new process starts

    def stop(self) -> None:
        self.stopping.set()
        for proc in list(self.running):
            self.stopped.add(proc.pid)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def resume(self) -> None:
        self.stopping.clear()

    def run(
        self, args: list[str], timeout: float, on_start: Callable | None = None, echo: bool = False
    ) -> tuple[int, str, list[str]]:
        """Run `python ARGS` in a fresh process; returns (exit code, last stdout line, last stderr lines).
        A negative code is the signal that ended it (-9: killed, often the kernel's OOM killer)."""
        if self.stopping.is_set():
            return -signal.SIGTERM, "", [STOPPED]
        proc = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.running.add(proc)
        if on_start:
            on_start(proc)
        tail: deque[str] = deque(maxlen=40)
        reasons: list[str] = []  # a worker's reason, kept before the tail: torchrun's report of a failure is long
        out: list[str] = []
        readers = [
            threading.Thread(target=_pump, args=(proc, tail, reasons, echo), daemon=True),
            threading.Thread(target=lambda: out.extend(proc.stdout or ()), daemon=True),
        ]
        for r in readers:
            r.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            tail.append(f"timed out after {timeout:g} s")
        finally:
            self.running.discard(proc)
        for r in readers:
            r.join(5)
        if proc.pid in self.stopped:
            self.stopped.discard(proc.pid)
            tail.append(STOPPED)
        lines = [x for x in out if x.strip()]
        return proc.returncode, lines[-1].strip() if lines else "", reasons + list(tail)

    def gate(self, args: list[str], timeout: float) -> dict:
        """Run a gate in a fresh process; a gate that crashes or hangs says no (`judged`: False)."""
        code, last, tail = self.run(args, timeout)
        if code == 0 and last.startswith("{"):
            return json.loads(last)
        return {"ok": False, "reason": failure_reason(code, tail), "judged": False}


def _pump(proc: subprocess.Popen, tail: deque, reasons: list[str], echo: bool) -> None:
    """stderr: progress and the failure reason, echoed while it runs."""
    from retrain.worker import FAILED

    for line in proc.stderr or ():
        tail.append(line.rstrip())
        if line.startswith(FAILED):
            reasons[:] = [line.rstrip()]
        if echo:
            sys.stderr.write(line)
            sys.stderr.flush()


def failure_reason(code: int, tail: list[str]) -> str:
    from retrain.worker import FAILED

    for line in reversed(tail):
        if line.startswith(FAILED):
            return line[len(FAILED) :]
        if line.startswith(("timed out after", "stopped: ")):
            return line
    if code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (" (out of memory, or killed by hand)" if name == "SIGKILL" else "")
    return f"exited with code {code}: " + (tail[-1] if tail else "no output")
