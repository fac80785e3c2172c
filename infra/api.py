"""The API in this process: the base model behind Flywheel's batched generator, the outbox and its relay to
Kafka, the routing follower, and uvicorn in a thread (`flywheel up`, `flywheel serve`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from infra.config import Config

if TYPE_CHECKING:
    from infra.services import ReviewStore

log = logging.getLogger(__name__)


def response_secret(cfg: Config) -> bytes:
    """The HMAC key of response ids: configured (at least 32 bytes), or generated once into the data dir."""
    from infra import keys

    if cfg.serving.response_secret is not None:
        return keys.check_secret(cfg.serving.response_secret.get_secret_value().encode(), "serving.response_secret")
    return keys.file_secret(cfg.data_dir / "response.secret")


def load_generator(cfg: Config):
    """The base model in fp32 (faster than bf16 on CPU) behind a started BatchGenerator, and its tokenizer;
    a serving config the model's context cannot hold is refused with its setting named."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infra.errors import FlywheelError
    from infra.models import resolve_base_model
    from serving.generator import BatchGenerator
    from serving.limits import prompt_tokens_limit

    s = cfg.serving
    path = resolve_base_model(cfg.base_model, cfg.data_dir / "models")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    generator = BatchGenerator(
        model,
        tokenizer,
        max_batch=s.max_batch,
        max_wait_ms=s.max_wait_ms,
        queue_depth=s.queue_depth,
        max_batch_tokens=s.max_batch_tokens,
    )
    try:
        prompt_tokens_limit(s, generator.context_tokens)
    except ValueError as e:
        raise FlywheelError(str(e)) from None
    return generator.start(), tokenizer


def start_vllm(cfg: Config):
    """(the started server or None, the backend): `serving.vllm.urls` as they are, or one server started here
    from `make vllm`'s virtualenv on the base model."""
    from infra.models import resolve_base_model
    from infra.vllm import VllmProcess
    from serving.upstream import VllmBackend

    v = cfg.serving.vllm
    process = None
    urls = list(v.urls)
    if not urls:
        model = resolve_base_model(cfg.base_model, cfg.data_dir / "models")
        process = VllmProcess(v, model, cfg.data_dir).start()
        urls = [process.url]
    backend = VllmBackend(urls, v)
    backend.check()
    if not any(s.healthy for s in backend.servers):
        log.warning("no vLLM server answers yet (%s): chats get 503 until one does", ", ".join(urls))
    return process, backend


class Api:
    """The API with everything it needs, started in threads of this process."""

    def __init__(
        self,
        cfg: Config,
        bootstrap: str,
        registry=None,
        review: ReviewStore | None = None,
        on_adapter_failed: Callable[[str, str], object] | None = None,
    ):
        import uvicorn

        from infra import keys
        from infra.broker import check_port_free
        from infra.kafka import client_settings
        from serving.app import create_app
        from serving.outbox import Outbox
        from serving.relay import OutboxRelay
        from serving.routing import ModelHolder, Router

        s = cfg.serving
        if s.port:
            check_port_free(s.host, s.port, "serving.port")
        self.generator, tokenizer, self.vllm, self.upstream = None, None, None, None
        if s.backend == "vllm":
            self.vllm, self.upstream = start_vllm(cfg)
        else:
            self.generator, tokenizer = load_generator(cfg)
        self.outbox = Outbox(cfg.data_dir / "outbox.sqlite")
        self.sender = OutboxRelay(
            cfg.data_dir / "outbox.sqlite", client_settings(cfg.kafka, bootstrap), cfg.ingest.group_id
        )
        holder = self.upstream if self.upstream is not None else ModelHolder(self.generator)
        self.router = Router(cfg.data_dir / "routing.json", holder, on_failed=on_adapter_failed)
        self.router.refresh()
        app = create_app(
            s,
            generator=self.generator,
            tokenizer=tokenizer,
            outbox=self.outbox,
            chats_topic=cfg.kafka.chats_topic,
            feedback_topic=cfg.kafka.feedback_topic,
            secret=response_secret(cfg),
            user_key=keys.data_dir_key(cfg.data_dir, "user-pseudonyms"),
            route=self.router.route,
            variants=self.router.variants,
            ready=lambda: self.sender.healthy,
            registry=registry,
            review=review,
            forgotten=review.forgotten_before if review is not None else None,
            upstream=self.upstream,
        )
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=s.host, port=s.port, log_level="warning", access_log=False)
        )
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self.server.run, name="api", daemon=True),
            threading.Thread(target=self._follow_routing, name="routing", daemon=True),
        ]
        for t in self._threads:
            t.start()
        while not self.server.started:
            if not self._threads[0].is_alive():
                raise RuntimeError("the API server did not start; see the log above")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0].getsockname()
        return f"http://{sock[0]}:{sock[1]}"

    def vllm_line(self) -> str | None:
        """What `up` and `serve` print about the vLLM servers (None on the torch backend)."""
        if self.upstream is None:
            return None
        urls = ", ".join(s.url for s in self.upstream.servers)
        if self.vllm is not None:
            pid = self.vllm.proc.pid if self.vllm.proc is not None else "-"
            return f"vllm      {urls}  (started by flywheel, pid {pid}; log {self.vllm.log_path})"
        up = sum(s.healthy for s in self.upstream.servers)
        return f"vllm      {urls}  (serving.vllm.urls; {up} of {len(self.upstream.servers)} answering)"

    def _follow_routing(self) -> None:
        while not self._stop.wait(2.0):
            try:
                if self.upstream is not None:
                    self.upstream.check()  # servers that came back get the split's adapters first
                self.router.refresh()
            except Exception:
                log.exception("routing refresh failed; keeping the current split")

    def close_http(self) -> None:
        """Stop taking requests (answering those in flight), the routing follower and the model."""
        self._stop.set()
        self.server.should_exit = True
        for t in self._threads:
            t.join(10)
        if self.generator is not None:
            self.generator.close()
        if self.upstream is not None:
            self.upstream.close()
        if self.vllm is not None:
            self.vllm.stop()

    def close(self) -> None:
        if not self._stop.is_set():
            self.close_http()
        self.sender.close()
        self.outbox_left = self.outbox.size()
        self.outbox.close()
