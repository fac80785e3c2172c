"""vLLM servers behind Flywheel's gateway (`serving.backend = "vllm"`).

Flywheel keeps what is its own (keys, limits, response ids, variant routing, the outbox, metrics) and vLLM
generates. Each adapter version is loaded on every server under its immutable version name
(`POST /v1/load_lora_adapter`), checked before it serves (the probe prompt's greedy tokens must equal peft's,
`retrain.probe`), and unloaded when the split no longer uses it. A server that is down is skipped when the
split changes and brought up to date when it answers again; until then it gets no requests. With several
servers a user sticks to one (rendezvous hashing over the healthy ones), so vLLM's prefix cache keeps their
conversation; when that server goes, only its users move.

Invariants: the split switches only once every healthy server serves every adapter it names; an adapter that
a server refuses or answers wrongly is reported (`AdapterFailed`) and the old split stays.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serving.config import VllmConfig
from serving.errors import ApiError

log = logging.getLogger(__name__)
UNLOAD_GRACE_S = 0.5
BASE_NAME = "base"  # the served name of the base model on every server (--served-model-name)


class AdapterFailed(ValueError):
    """A server refused an adapter or answered its probe wrongly: the candidate must not serve."""

    def __init__(self, version: str, reason: str):
        super().__init__(f"adapter {version}: {reason}")
        self.version, self.reason = version, reason


class NoServer(RuntimeError):
    """No vLLM server answers: the split cannot change now (tried again at the next refresh)."""


def unavailable(message: str = "the model servers are unavailable: try again shortly") -> ApiError:
    return ApiError(503, message, headers={"Retry-After": "2"})


@dataclass
class Server:
    url: str
    healthy: bool = False
    loaded: dict[str, str] = field(default_factory=dict)  # adapter version -> path, as the server reports


def pick(servers: list[Server], user_id: str) -> Server | None:
    """The user's server: the healthy one with the highest hash of (server, user) (rendezvous hashing), so a
    server that leaves moves only its own users and one that returns takes back only those."""
    up = [s for s in servers if s.healthy]
    if not up:
        return None
    return max(up, key=lambda s: hashlib.sha256(f"{s.url}\x00{user_id}".encode()).digest())


class VllmBackend:
    """The servers, their adapters and the HTTP clients the chat route forwards through."""

    def __init__(self, urls: list[str], cfg: VllmConfig):
        if not urls:
            raise ValueError("serving.vllm: no server to forward to")
        self.cfg = cfg
        self.servers = [Server(u.rstrip("/")) for u in urls]
        key = cfg.api_key.get_secret_value() if cfg.api_key else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = httpx.Timeout(cfg.request_timeout_s, connect=5.0)
        self.client = httpx.AsyncClient(headers=self.headers, timeout=timeout, limits=httpx.Limits(max_connections=512))
        self.admin = httpx.Client(headers=self.headers, timeout=httpx.Timeout(60.0, connect=5.0))
        self.wanted: dict[str, str] = {}
        self.in_flight: dict[str, int] = {}
        self._counts = threading.Condition()
        self._lock = threading.Lock()  # the routing thread and the health check change adapters one at a time

    # -- requests ---------------------------------------------------------------------------------------
    def server_for(self, user_id: str, avoid: set[str] = frozenset()) -> Server:  # type: ignore[assignment]
        server = pick([s for s in self.servers if s.url not in avoid], user_id)
        if server is None:
            raise unavailable()
        return server

    def down(self, server: Server, why: object) -> None:
        if server.healthy:
            log.warning("vLLM server %s is unreachable (%s): its users move to the others", server.url, why)
        server.healthy = False

    @contextmanager
    def using(self, variant: str) -> Iterator[None]:
        """Count a request to `variant` while vLLM answers it: a retired adapter is unloaded only after."""
        with self._counts:
            self.in_flight[variant] = self.in_flight.get(variant, 0) + 1
        try:
            yield
        finally:
            with self._counts:
                self.in_flight[variant] -= 1
                self._counts.notify_all()

    def _drained(self, version: str) -> None:
        """Until no request to `version` is in flight. The split has switched already; a request routed just
        before the switch takes microseconds to reach `using`, so the wait starts after a short grace."""
        time.sleep(UNLOAD_GRACE_S)
        with self._counts:
            if not self._counts.wait_for(lambda: not self.in_flight.get(version), self.cfg.request_timeout_s):
                log.warning(
                    "adapter %s still answers %d requests: unloading it anyway", version, self.in_flight[version]
                )

    # -- adapters (the Router's holder) ------------------------------------------------------------------
    def sync_adapters(self, wanted: dict[str, str]) -> None:
        """Load what `wanted` names on every server that answers (probe-checked), unload what it does not."""
        with self._lock:
            reachable = [s for s in self.servers if self._refresh(s)]
            if not reachable:
                raise NoServer("no vLLM server answers: the split waits for one")
            for server in reachable:
                self._reconcile(server, wanted)
            self.wanted = dict(wanted)

    def check(self) -> None:
        """Every few seconds: which servers answer; one that came back (a restart forgets every adapter) is
        brought up to date before it takes requests again."""
        with self._lock:
            for server in self.servers:
                was = server.healthy
                if not self._refresh(server):
                    continue
                if server.healthy and all(server.loaded.get(v) == p for v, p in self.wanted.items()):
                    continue
                try:
                    self._reconcile(server, self.wanted)
                except (AdapterFailed, httpx.HTTPError) as e:
                    log.error("vLLM server %s cannot serve the split yet: %s", server.url, e)
                    server.healthy = False
                    continue
                if not was:
                    log.info("vLLM server %s serves (%d adapters)", server.url, len(self.wanted))

    def _refresh(self, server: Server) -> bool:
        """What the server has loaded (its /v1/models: LoRA entries name their parent); unreachable: down."""
        try:
            r = self.admin.get(f"{server.url}/v1/models", timeout=5.0)
            r.raise_for_status()
            models = r.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError) as e:
            self.down(server, e)
            server.loaded = {}
            return False
        server.loaded = {m["id"]: m.get("root") or "" for m in models if m.get("parent")}
        return True

    def _reconcile(self, server: Server, wanted: dict[str, str]) -> None:
        for version, path in wanted.items():
            if server.loaded.get(version) == str(path):
                continue
            if version in server.loaded:  # same name, another folder: versions are immutable
                raise AdapterFailed(version, f"{server.url} has it from {server.loaded[version]}, not {path}")
            self._load(server, version, str(path))
        for version in [v for v in server.loaded if v not in wanted]:
            self._drained(version)
            r = self.admin.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": version})
            if r.status_code >= 400 and r.status_code != 404:
                log.warning("unloading %s from %s: %s %s", version, server.url, r.status_code, error_message(r))
            server.loaded.pop(version, None)
            log.info("vLLM server %s unloaded adapter %s", server.url, version)
        server.healthy = True

    def _load(self, server: Server, version: str, path: str) -> None:
        from retrain import probe  # plain JSON reading: no torch

        try:
            expected = probe.read(Path(path)) if self.cfg.probe_tokens else {"tokens": []}
        except ValueError as e:
            raise AdapterFailed(version, str(e)) from None
        if expected is None:
            raise AdapterFailed(
                version, f"no {probe.FILE} in {path}: retrain writes it; nothing proves vLLM loads it right"
            )
        r = self.admin.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": version, "lora_path": str(path)})
        if r.status_code != 200:
            raise AdapterFailed(version, f"{server.url} refused to load it: {r.status_code} {error_message(r)}")
        server.loaded[version] = str(path)
        want = expected["tokens"][: self.cfg.probe_tokens]
        if want:
            got = self._probe(server, version, expected["prompt_ids"], len(want))
            if got != want:
                self.admin.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": version})
                server.loaded.pop(version, None)
                raise AdapterFailed(version, f"{server.url} answers the probe with {got}, peft with {want}")
        log.info(
            "vLLM server %s loaded adapter %s from %s (probe: %d tokens equal)", server.url, version, path, len(want)
        )

    def _probe(self, server: Server, version: str, prompt_ids: list[int], n: int) -> list[int]:
        body = {
            "model": version, "prompt": prompt_ids, "max_tokens": n, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True,
        }  # fmt: skip
        r = self.admin.post(f"{server.url}/v1/completions", json=body)
        if r.status_code != 200:
            raise AdapterFailed(version, f"{server.url} failed the probe: {r.status_code} {error_message(r)}")
        return list(r.json()["choices"][0].get("token_ids") or [])

    async def aclose(self) -> None:
        await self.client.aclose()

    def close(self) -> None:
        self.admin.close()


def error_message(r: httpx.Response) -> str:
    """vLLM's error message (OpenAI's shape), or the start of its body."""
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:300]
