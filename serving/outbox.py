"""A durable local outbox: events are committed to SQLite first, then shipped to Kafka in order.

An API answer that depends on an event (a logged chat, an accepted rating) waits only for the SQLite commit,
so a broker outage never fails a request and never loses an event: the sender keeps retrying and deletes a
row only after the broker acknowledged it (acks=all). Rows go out in insertion order, so per-user order holds.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


# acks=all; short waits and a capped reconnect backoff, so that a broker that comes back is used at once.
PRODUCER_OPTIONS = {"acks": "all", "linger_ms": 5, "max_block_ms": 5000, "request_timeout_ms": 5000,
                    "reconnect_backoff_max_ms": 1000}


class Outbox:
    """SQLite outbox. `append_many` commits many events in one transaction (one fsync): the API groups
    the events of concurrent requests into one call."""

    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives a power cut
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " key BLOB, value BLOB NOT NULL)"
        )
        self._lock = threading.Lock()

    def append_many(self, rows: list[tuple[str, bytes | None, bytes]]) -> None:
        """Commit (topic, key, value) rows; returns once they are on disk."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT INTO outbox (topic, key, value) VALUES (?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def size(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def oldest(self, n: int) -> list[tuple[int, str, bytes | None, bytes]]:
        with self._lock:
            return self._db.execute("SELECT seq, topic, key, value FROM outbox ORDER BY seq LIMIT ?", (n,)).fetchall()

    def delete_through(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class OutboxSender:
    """Ships the outbox to Kafka from a thread; reconnects and retries until the broker takes the events."""

    def __init__(self, outbox: Outbox, make_producer: Callable[[], object], batch: int = 500):
        self.outbox, self.make_producer, self.batch = outbox, make_producer, batch
        self.sent = 0
        self.failures = 0
        self.healthy = True  # the last attempt to reach Kafka succeeded
        self.wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="outbox-sender", daemon=True)
        self._producer = None

    def start(self) -> OutboxSender:
        self._thread.start()
        return self

    def close(self, drain_s: float = 5.0) -> None:
        deadline = time.monotonic() + drain_s
        while self.outbox.size() and time.monotonic() < deadline:
            self.wakeup.set()
            time.sleep(0.05)
        self._stop.set()
        self.wakeup.set()
        self._thread.join(10)
        if self._producer is not None:
            self._producer.close(timeout=2)

    def _loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            rows = self.outbox.oldest(self.batch)
            if not rows:
                self.wakeup.wait(0.2)
                self.wakeup.clear()
                continue
            try:
                if self._producer is None:
                    self._producer = self.make_producer()
                futures = [self._producer.send(topic, key=key, value=value) for _, topic, key, value in rows]
                self._producer.flush(timeout=10)
                for f in futures:
                    f.get(timeout=0)
                self.outbox.delete_through(rows[-1][0])
                self.sent += len(rows)
                self.healthy, backoff = True, 0.1
            except Exception as e:  # broker down or unreachable: keep the rows, retry later
                self.failures += 1
                self.healthy = False
                log.warning("outbox: Kafka did not take %d events (%s); retrying in %.1f s", len(rows), e, backoff)
                if self._producer is not None:
                    try:
                        self._producer.close(timeout=1)
                    except Exception:
                        pass
                    self._producer = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)


def _relay_main(path: str, settings: dict, healthy, stop) -> None:
    """The relay process: ships the outbox to Kafka, so the API process spends no time in the producer."""
    import signal

    from kafka import KafkaProducer

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through `stop`, after draining
    parent = os.getppid()
    outbox = Outbox(Path(path))
    sender = OutboxSender(outbox, lambda: KafkaProducer(**settings, **PRODUCER_OPTIONS)).start()
    while not stop.wait(0.2):
        healthy.value = sender.healthy
        if os.getppid() != parent:  # the API was killed (kill -9, OOM): its restart starts a relay of its own
            log.warning("the API process %d is gone: the outbox relay stops", parent)
            break
    sender.close()
    outbox.close()


class OutboxRelay:
    """Runs OutboxSender in a process of its own (the GIL of the API process stays with HTTP)."""

    def __init__(self, path: Path, producer_settings: dict):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._healthy, self._stop = ctx.Value("b", 1), ctx.Event()
        self.process = ctx.Process(target=_relay_main, name="flywheel-outbox-relay", daemon=True,
                                   args=(str(path), producer_settings, self._healthy, self._stop))
        self.process.start()

    @property
    def healthy(self) -> bool:
        return bool(self._healthy.value) and self.process.is_alive()

    def close(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
