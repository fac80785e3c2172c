"""Scrubbing on every core: a batch's texts split across worker processes, each with its own `Scrubber`.

A worker that dies or overruns its time budget fails its batch (`ScrubFailed`): the caller quarantines it,
never stores it raw. `workers=0` scrubs in this process (tests, one-core machines).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from multiprocessing.connection import Connection

from ingest.config import PiiConfig
from ingest.contracts import scrub_cost
from ingest.scrub import Scrubbed, Scrubber, ScrubFailed

log = logging.getLogger(__name__)


def _worker_main(cfg_json: str, conn: Connection) -> None:
    """A scrub worker: texts in, Scrubbed out, over its own pipe, until the pipe closes.

    It ignores SIGINT/SIGTERM: Ctrl-C and `kill` of a process group reach the workers too, and a worker that
    died mid-batch would turn a clean shutdown into quarantined events. The parent stops it instead.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    scrubber = Scrubber(PiiConfig.model_validate_json(cfg_json))
    conn.send("ready")
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):  # the parent is gone (even by kill -9): so are we
            return
        try:
            conn.send(("ok", scrubber.scrub(texts)))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"[:200]))


class _Worker:
    def __init__(self, cfg_json: str):
        ctx = multiprocessing.get_context("spawn")  # no fork: the parent runs Kafka client threads
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(cfg_json, child), daemon=True, name="flywheel-scrub")
        self.proc.start()
        child.close()

    def wait_ready(self, timeout: float) -> None:
        try:
            if self.conn.poll(timeout) and self.conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        self.kill()
        raise ScrubFailed(f"scrub worker did not start (exit code {self.proc.exitcode}); see the log above")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class ScrubPool:
    """Scrubs across `cfg.workers` processes (or in-process when 0), with a time budget per call.

    A call that raises, loses its worker, or runs past the budget raises ScrubFailed; a worker that is
    stuck or dead is replaced, so one pathological text cannot stall ingest.
    """

    def __init__(self, cfg: PiiConfig):
        self.cfg = cfg
        self._local = Scrubber(cfg) if cfg.workers == 0 else None
        self._workers = [_Worker(cfg.model_dump_json()) for _ in range(cfg.workers)]
        for w in self._workers:  # start together, wait together: start-up cost is paid here, once
            w.wait_ready(120)

    def scrub(self, texts: list[str]) -> list[Scrubbed]:
        """Scrub each distinct text once (system prompts and canned answers repeat in every chat)."""
        unique = list(dict.fromkeys(texts))
        if len(unique) < len(texts):
            done = dict(zip(unique, self._scrub_unique(unique)))
            return [done[t] for t in texts]
        return self._scrub_unique(texts)

    def _scrub_unique(self, texts: list[str]) -> list[Scrubbed]:
        if not texts:
            return []
        if self._local is not None:
            try:
                return self._local.scrub(texts)
            except ScrubFailed:
                raise
            except Exception as e:
                raise ScrubFailed(f"{type(e).__name__}: {e}"[:200]) from e
        # Chunks of equal scrubbing cost, not of equal count: one long text must not keep a worker busy while
        # the others idle (a 16,000-character comment is 0.33 s; bench/scrub_attack.py). Largest first, each to
        # the least loaded worker; results go back in the callers' order.
        loads = [0] * min(len(self._workers), len(texts))
        members: list[list[int]] = [[] for _ in loads]
        for i in sorted(range(len(texts)), key=lambda i: -scrub_cost(texts[i])):
            w = loads.index(min(loads))
            members[w].append(i)
            loads[w] += scrub_cost(texts[i]) + 200  # + a short text's fixed cost
        members = [sorted(m) for m in members if m]
        chunks = [[texts[i] for i in m] for m in members]
        busy = self._workers[: len(chunks)]
        for worker, chunk in zip(busy, chunks):
            worker.conn.send(chunk)
        size = max(len(c) for c in chunks)
        budget = max(5.0, size * self.cfg.time_budget_ms_per_text / 1000)
        deadline = time.monotonic() + budget
        results, failures, broken = [], [], []
        for i, worker in enumerate(busy):
            try:
                if not worker.conn.poll(max(deadline - time.monotonic(), 0)):
                    failures.append(f"time budget of {budget:.1f} s exceeded")
                    broken.append(i)
                    continue
                status, payload = worker.conn.recv()
            except (EOFError, OSError):
                failures.append("scrub worker died")
                broken.append(i)
                continue
            if status == "ok":
                results.append(payload)
            else:
                failures.append(payload)
        for i in broken:
            self._replace(i)
        if failures:
            raise ScrubFailed(failures[0])
        ordered: list[Scrubbed | None] = [None] * len(texts)
        for m, payload in zip(members, results):
            for i, scrubbed in zip(m, payload):
                ordered[i] = scrubbed
        done = [s for s in ordered if s is not None]
        if len(done) != len(texts):  # the members cover every text: a gap would shift results onto other texts
            raise ScrubFailed(f"{len(texts) - len(done)} texts came back without a result")
        return done

    def _replace(self, i: int) -> None:
        log.error("scrub worker %d stuck or dead; replacing it", i)
        self._workers[i].kill()
        self._workers[i] = _Worker(self.cfg.model_dump_json())
        self._workers[i].wait_ready(120)

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers = []
