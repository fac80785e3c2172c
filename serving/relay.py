"""The outbox relay: `OutboxSender` in a process of its own, so that the API process's GIL stays with HTTP.

The relay and the API open the same SQLite file (WAL): the API appends, the relay sends and deletes, and the
API reads the counts (`drain`, `settle`) to know when a stop may go on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from serving.outbox import Outbox, OutboxSender

log = logging.getLogger(__name__)


def _relay_main(path: str, settings: dict, group_id: str, healthy, stop, drain_s: float) -> None:
    """The relay process: ships the outbox to Kafka, so the API process spends no time in the producer."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through `stop`, after draining
    parent = os.getppid()
    outbox = Outbox(Path(path))
    sender = OutboxSender.to_kafka(outbox, settings, group_id).start()
    while not stop.wait(0.2):
        healthy.value = sender.healthy
        if os.getppid() != parent:  # the API was killed (kill -9, OOM): its restart starts a relay of its own
            log.warning("the API process %d is gone: the outbox relay stops", parent)
            break
    sender.close(drain_s.value)
    outbox.close()


class OutboxRelay:
    """Runs OutboxSender in a process of its own (the GIL of the API process stays with HTTP)."""

    def __init__(self, path: Path, producer_settings: dict, group_id: str):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.outbox = Outbox(path)  # this process's view, for drain(): the relay writes through its own
        self._healthy, self._stop, self._drain_s = ctx.Value("b", 1), ctx.Event(), ctx.Value("d", 5.0)
        self.process = ctx.Process(
            target=_relay_main,
            name="flywheel-outbox-relay",
            daemon=True,
            args=(str(path), producer_settings, group_id, self._healthy, self._stop, self._drain_s),
        )
        self.process.start()

    @property
    def healthy(self) -> bool:
        return bool(self._healthy.value) and self.process.is_alive()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every row is in Kafka (the relay keeps running); True when none is left unsent."""
        return self._wait_for_none(self.outbox.unsent, timeout_s)

    def settle(self, timeout_s: float, while_: Callable[[], bool] = lambda: True) -> bool:
        """Wait until the outbox is empty: every row sent, stored by ingest and deleted (for a stop with ingest
        in this process, which `while_` tells is still running). Stronger than `drain`: a row Kafka acknowledged
        just before its broker died counts as sent until the relay sees the new cluster and sends it again."""
        return self._wait_for_none(self.outbox.size, timeout_s, while_)

    def _wait_for_none(
        self, count: Callable[[], int], timeout_s: float, while_: Callable[[], bool] = lambda: True
    ) -> bool:
        """Poll `count` until it is 0, the relay died, `while_()` is false or the time is up; True at 0."""
        deadline = time.monotonic() + timeout_s
        while count() and self.process.is_alive() and while_() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not count()

    def close(self, drain_s: float = 5.0, timeout: float = 45.0) -> None:
        """Stop after sending what is left (up to `drain_s`) and deleting what ingest has stored."""
        self._drain_s.value = drain_s
        self._stop.set()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
        self.outbox.close()
