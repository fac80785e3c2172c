"""Batched generation: requests that arrive together share one forward pass per token.

One thread owns the model. It takes the waiting requests (up to `max_batch`, waiting at most `max_wait_ms`
for company), left-pads them into one batch and decodes token by token with a KV cache. Each row keeps its
own sampling settings (temperature, top_p, seed), token budget, stop strings and adapter: rows routed to
different LoRA adapters run in the same batch (serving.lora_batch). A row that finishes
resolves its future at once; the batch ends when its last row does.

On 2 CPU cores one stream of the 135M model makes ~13 tokens/s and a batch of 16 ~87: concurrent users
must share the batch, not queue behind each other.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from ingest.contracts import BASE

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the configured depth: answer 503 with Retry-After."""


class AdapterGone(Exception):
    """The request's adapter was retired while it waited: answer 503, the client's retry is routed anew."""


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    adapter: str = BASE
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of text
    future: Future = field(default_factory=Future)
    cancel: threading.Event = field(default_factory=threading.Event)  # set: the row stops at its next token


@dataclass(frozen=True)
class GenResult:
    text: str
    finish_reason: str  # stop | length | cancelled (the client left)
    prompt_tokens: int
    completion_tokens: int


class Generator(Protocol):
    """What the API needs from whatever produces answers: this module's `BatchGenerator` on the service's
    own PyTorch model, or a client of an inference server. `submit` raises QueueFull rather than wait; the
    future holds a GenResult, or AdapterGone when the request's adapter was retired while it waited."""

    @property
    def depth(self) -> int: ...  # requests waiting

    @property
    def full(self) -> bool: ...  # a submit now would raise QueueFull

    @property
    def context_tokens(self) -> int | None: ...  # prompt + answer the model takes, when known

    def submit(self, req: GenRequest) -> Future: ...


def _span(req: GenRequest) -> int:
    return len(req.prompt_ids) + req.max_tokens


def _run_into(fn: Callable[[], object], future: Future) -> None:
    try:
        future.set_result(fn())
    except Exception as e:
        future.set_exception(e)


class _Row:
    def __init__(self, req: GenRequest, torch):
        self.req, self.ids, self.sent, self.done = req, [], 0, False
        seed = req.seed % 2**64 if req.seed is not None else time.time_ns() % 2**63
        self.rng = torch.Generator().manual_seed(seed)


class BatchGenerator:
    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 10,
        queue_depth: int = 64,
        max_batch_tokens: int = 32_768,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        # The KV cache holds rows x (longest prompt + its answer) positions: one long prompt must not pad
        # fifteen short ones to its length, or a batch outgrow memory. A request that would take the batch
        # over this waits (first in line) for rows to finish; alone, it always runs.
        self.max_batch_tokens = max_batch_tokens
        self._held: GenRequest | None = None
        self.queue: queue.Queue[GenRequest] = queue.Queue(maxsize=queue_depth)
        self.eos = {
            t
            for t in [tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)]
            for t in (t if isinstance(t, list) else [t])
            if t is not None
        }
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos), 0)
        # A prefill needs the last position's logits only; the lm_head over every position was ~18% of it.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        takes = "logits_to_keep" in inspect.signature(base.forward).parameters
        self._last_only = {"logits_to_keep": 1} if takes else {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="generator", daemon=True)
        self._tasks: queue.Queue[tuple[Callable[[], object], Future]] = queue.Queue()

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    @property
    def full(self) -> bool:
        return self.queue.full()

    @property
    def context_tokens(self) -> int | None:
        """The model's context length (prompt + answer), when its config says."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def start(self) -> BatchGenerator:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def call_between_batches(self, fn: Callable[[], object]) -> Future:
        """Run fn on the model thread between two batches (adapter loads must not race a forward pass)."""
        future: Future = Future()
        if not self._thread.is_alive():
            _run_into(fn, future)
        else:
            self._tasks.put((fn, future))
        return future

    def submit(self, req: GenRequest) -> Future:
        try:
            self.queue.put_nowait(req)
        except queue.Full:
            raise QueueFull from None
        return req.future

    # -- the model thread: continuous batching -----------------------------------------------------
    def _loop(self) -> None:
        rows: list[_Row] = []
        state = None  # (KV cache, attention mask, the token each row feeds next)
        while not self._stop.is_set():
            admitted: list[GenRequest] = []
            try:
                if not self._tasks.empty():  # adapter changes wait until no row is mid-answer; meanwhile
                    if not rows:  # nobody is admitted
                        while not self._tasks.empty():
                            _run_into(*self._tasks.get())
                        continue
                else:
                    admitted = self._take(
                        block=not rows, room=self.max_batch - len(rows), spans=[_span(r.req) for r in rows]
                    )
                if admitted:
                    rows, state = self._join(rows, state, admitted)
                    admitted = []
                if rows:
                    rows, state = self._step(rows, state)
            except Exception as e:  # a broken batch fails its requests (admitted ones too), never the thread
                log.exception("generation failed for %d rows", len(rows) + len(admitted))
                for req in [row.req for row in rows] + admitted:
                    if not req.future.done():
                        req.future.set_exception(e)
                rows, state = [], None

    def _take(self, block: bool, room: int, spans: list[int] = ()) -> list[GenRequest]:
        """Waiting requests: when idle, wait for one and then up to max_wait for company; within `room` rows
        and the token budget (`spans` are the running rows' prompt + max_tokens)."""
        taken: list[GenRequest] = []
        spans = list(spans)
        if room <= 0:
            return taken

        def fits(req: GenRequest) -> bool:
            if not spans:
                return True
            return (len(spans) + 1) * max(*spans, _span(req)) <= self.max_batch_tokens

        def get(timeout: float | None) -> GenRequest:
            if self._held is not None:
                req, self._held = self._held, None
                return req
            return self.queue.get_nowait() if timeout is None else self.queue.get(timeout=timeout)

        def admit(req: GenRequest) -> bool:
            if not fits(req):
                self._held = req  # first in line for the next batch
                return False
            taken.append(req)
            spans.append(_span(req))
            return True

        deadline = time.monotonic() + self.max_wait
        try:
            if block:
                if not admit(get(0.1)):
                    return taken
                while len(taken) < room and admit(get(max(deadline - time.monotonic(), 0))):
                    pass
            else:
                while len(taken) < room and admit(get(None)):
                    pass
        except queue.Empty:
            pass
        return taken

    def generate(self, batch: list[GenRequest]) -> None:
        """Run a batch to completion in the calling thread (tests and benchmarks)."""
        rows, state = self._join([], None, batch)
        while rows:
            rows, state = self._step(rows, state)

    def _adapters(self, rows: list[_Row]):
        """Per-row adapters for the next forward (serving.lora_batch), or nothing on a plain model."""
        from contextlib import nullcontext

        from serving import lora_batch

        if not hasattr(self.model, "peft_config"):
            return nullcontext()
        return lora_batch.rows([r.req.adapter for r in rows], tuple(sorted(self.model.peft_config)))

    def _join(self, rows: list[_Row], state, batch: list[GenRequest]):
        """Prefill the new requests, sample their first token, and merge them into the running batch."""
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        loaded = set(getattr(self.model, "peft_config", {})) | {BASE}
        for r in [r for r in batch if r.adapter not in loaded]:  # retired while it waited
            r.future.set_exception(AdapterGone(f"adapter {r.adapter} is no longer served"))
        for r in [r for r in batch if r.cancel.is_set()]:  # its client left while it waited
            r.future.set_result(GenResult("", "cancelled", len(r.prompt_ids), 0))
        new = [_Row(r, torch) for r in batch if r.adapter in loaded and not r.cancel.is_set()]
        if not new:
            return rows, state
        width = max(len(r.req.prompt_ids) for r in new)
        ids = torch.tensor([[self.pad] * (width - len(r.req.prompt_ids)) + r.req.prompt_ids for r in new])
        mask = torch.tensor([[0] * (width - len(r.req.prompt_ids)) + [1] * len(r.req.prompt_ids) for r in new])
        with torch.inference_mode(), self._adapters(new):
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                **self._last_only,
            )
        tokens = [self._sample(out.logits[i, -1], row) for i, row in enumerate(new)]
        for row, token in zip(new, tokens):
            self._advance(row, token)
        new_state = (out.past_key_values, mask, torch.tensor(tokens))
        if state is None:
            return self._compact(new, new_state)
        (old_past, old_mask, old_last), (new_past, _, new_last) = state, new_state
        length = max(old_mask.shape[1], mask.shape[1])

        def left_pad(t, n):  # pad the sequence dimension (-2 for K/V, -1 for masks) on the left
            return F.pad(t, (0, 0, n, 0)) if t.dim() == 4 else F.pad(t, (n, 0))

        layers = []
        for old_layer, new_layer in zip(old_past.layers, new_past.layers):
            a, b = length - old_mask.shape[1], length - mask.shape[1]
            layers.append(
                (
                    torch.cat([left_pad(old_layer.keys, a), left_pad(new_layer.keys, b)]),
                    torch.cat([left_pad(old_layer.values, a), left_pad(new_layer.values, b)]),
                )
            )
        merged = (
            DynamicCache(layers),
            torch.cat([left_pad(old_mask, length - old_mask.shape[1]), left_pad(mask, length - mask.shape[1])]),
            torch.cat([old_last, new_last]),
        )
        return self._compact(rows + new, merged)

    def _step(self, rows: list[_Row], state):
        """One token for every running row."""
        import torch

        past, mask, last = state
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
        with torch.inference_mode(), self._adapters(rows):
            out = self.model(
                input_ids=last[:, None],
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1)[:, -1:],
                past_key_values=past,
                use_cache=True,
            )
        tokens = [self._sample(out.logits[i, -1], row) for i, row in enumerate(rows)]
        for row, token in zip(rows, tokens):
            self._advance(row, token)
        return self._compact(rows, (out.past_key_values, mask, torch.tensor(tokens)))

    def _compact(self, rows: list[_Row], state):
        """Drop finished rows (and the padding columns nobody needs any more) from the batch."""
        import torch
        from transformers import DynamicCache

        keep = [i for i, row in enumerate(rows) if not row.done]
        if len(keep) == len(rows):
            return rows, state
        if not keep:
            return [], None
        past, mask, last = state
        index = torch.tensor(keep)
        mask = mask[index]
        start = int((mask.sum(0) > 0).nonzero()[0])  # first column some remaining row attends to
        layers = [(layer.keys[index, :, start:], layer.values[index, :, start:]) for layer in past.layers]
        return [rows[i] for i in keep], (DynamicCache(layers), mask[:, start:], last[index])

    def _sample(self, logits, row: _Row) -> int:
        import torch

        req = row.req
        if row.done or req.temperature <= 0:
            return int(logits.argmax())
        # In float64, with the top logit moved to 0 first: a tiny temperature (1e-300) then gives 0 and -inf,
        # that is greedy, where float32 would round it to 0 and divide 0 by 0.
        logits = logits.double()
        probs = torch.softmax((logits - logits.max()) / req.temperature, dim=-1)
        if req.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < req.top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=row.rng))

    def _advance(self, row: _Row, token: int) -> None:
        if row.req.cancel.is_set():  # its client is gone: free the row for someone else
            self._finish(row, "cancelled")
            return
        if token in self.eos:
            self._finish(row, "stop")
            return
        row.ids.append(token)
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        for s in row.req.stop:
            if s and s in text:
                self._finish(row, "stop", text[: text.index(s)])
                return
        if len(row.ids) >= row.req.max_tokens:
            self._finish(row, "length", text)
            return
        if row.req.on_text is not None:
            # Hold back what could still become a stop string or an incomplete character.
            hold = max((len(s) - 1 for s in row.req.stop), default=0)
            safe = len(text) - hold
            if text.endswith("\ufffd"):
                safe = min(safe, len(text) - 1)
            if safe > row.sent:
                row.req.on_text(text[row.sent : safe])
                row.sent = safe

    def _finish(self, row: _Row, reason: str, text: str | None = None) -> None:
        row.done = True
        if text is None:
            text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        if row.req.on_text is not None and len(text) > row.sent:
            row.req.on_text(text[row.sent :])
            row.sent = len(text)
        if not row.req.future.done():
            row.req.future.set_result(GenResult(text, reason, len(row.req.prompt_ids), len(row.ids)))
