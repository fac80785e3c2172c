"""A durable local outbox: events are committed to SQLite first, then shipped to Kafka in order.

An API answer that depends on an event (a logged chat, an accepted rating) waits only for the SQLite commit,
so a broker outage never fails a request and never loses an event: the sender keeps retrying (acks=all) and
deletes a row only once ingest has stored it in DuckDB, so a broker that loses its log (the bundled one keeps
it in memory) is sent the rows again. Rows go out in insertion order, so per-user order holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


# acks=all; short waits and a capped reconnect backoff, so that a broker that comes back is used at once.
PRODUCER_OPTIONS = {
    "acks": "all",
    "linger_ms": 5,
    "max_block_ms": 5000,
    "request_timeout_ms": 5000,
    "reconnect_backoff_max_ms": 1000,
}


class Outbox:
    """SQLite outbox. `append_many` commits many events in one transaction (one fsync): the API groups
    the events of concurrent requests into one call.

    A row lives until ingest has stored it, not until Kafka has it: the bundled broker keeps its log in memory,
    so an acknowledged send is not yet durable. After the send, the row records where it went (cluster id,
    partition, offset); it is deleted once the ingest group's committed offset in that cluster is past it
    (ingest commits to Kafka only after DuckDB has committed). Rows sent to a cluster that is gone (a new
    bundled broker has a new cluster id) are sent again; ingest is idempotent on `event_id`. A row Kafka
    refuses for good (too large, a bad topic) is moved to `outbox_rejected` with the reason, so it does not
    block the rows behind it. Deleted rows are overwritten (`secure_delete`) and the WAL is truncated after
    each deletion, so no copy of a shipped event's raw text stays in the file.
    """

    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # SQLite gives the WAL the file's mode
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives a power cut
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " key BLOB, value BLOB NOT NULL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for column, kind in (("cluster", "TEXT"), ("part", "INTEGER"), ("off", "INTEGER")):
            if column not in columns:  # an outbox written before rows waited for ingest
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (cluster, topic, part, off)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox_rejected (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, key BLOB,"
            " value BLOB NOT NULL, reason TEXT NOT NULL, rejected_at REAL NOT NULL)"
        )
        self._lock = threading.Lock()

    def append_many(self, rows: list[tuple[str, bytes | None, bytes]]) -> None:
        """Commit (topic, key, value) rows; returns once they are on disk."""
        with self._lock, self._transaction():
            self._db.executemany("INSERT INTO outbox (topic, key, value) VALUES (?, ?, ?)", rows)

    def _transaction(self):
        db = self._db

        class Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return Tx()

    def _count(self, sql: str) -> int:
        with self._lock:
            return self._db.execute(sql).fetchone()[0]

    def size(self) -> int:
        """Rows held: not yet sent, or sent and not yet stored by ingest."""
        return self._count("SELECT count(*) FROM outbox")

    def unsent(self) -> int:
        return self._count("SELECT count(*) FROM outbox WHERE off IS NULL")

    def rejected(self) -> int:
        return self._count("SELECT count(*) FROM outbox_rejected")

    def oldest_unsent(self, n: int) -> list[tuple[int, str, bytes | None, bytes]]:
        with self._lock:
            return self._db.execute(
                "SELECT seq, topic, key, value FROM outbox WHERE off IS NULL ORDER BY seq LIMIT ?", (n,)
            ).fetchall()

    def mark_sent(self, cluster: str, sent: list[tuple[int, int, int]]) -> None:
        """(seq, partition, offset) of rows Kafka acknowledged in `cluster`."""
        with self._lock, self._transaction():
            self._db.executemany(
                "UPDATE outbox SET cluster = ?, part = ?, off = ? WHERE seq = ?",
                [(cluster, part, off, seq) for seq, part, off in sent],
            )

    def set_aside(self, rejected: list[tuple[int, str]]) -> None:
        """(seq, reason) of rows Kafka refuses for good: moved to `outbox_rejected`."""
        now = time.time()
        with self._lock, self._transaction():
            for seq, reason in rejected:
                self._db.execute(
                    "INSERT OR REPLACE INTO outbox_rejected SELECT seq, topic, key, value, ?, ? FROM"
                    " outbox WHERE seq = ?",
                    (reason, now, seq),
                )
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def confirm(self, cluster: str, committed: dict[tuple[str, int], int]) -> int:
        """Delete the rows ingest has stored (offset below the group's committed offset in `cluster`) and
        mark rows sent to any other cluster for sending again. Returns the rows deleted."""
        with self._lock:
            with self._transaction():
                resent = self._db.execute(
                    "UPDATE outbox SET cluster = NULL, part = NULL, off = NULL"
                    " WHERE off IS NOT NULL AND cluster IS NOT ?",
                    (cluster,),
                ).rowcount
                deleted = sum(
                    self._db.execute(
                        "DELETE FROM outbox WHERE cluster = ? AND topic = ? AND part = ? AND off < ?",
                        (cluster, topic, part, off),
                    ).rowcount
                    for (topic, part), off in committed.items()
                )
            if resent:
                log.warning("outbox: %d events were sent to a Kafka cluster that is gone; sending them again", resent)
            if deleted:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def close(self) -> None:
        with self._lock:
            self._db.close()


def permanent(error: BaseException) -> bool:
    """Kafka will never take this record: too large, an illegal topic name, not authorised; retrying would block
    every row behind it. Anything else (connection, timeout, a broker that restarted and forgot this producer)
    is retried: a row is set aside only for a reason named here."""
    from kafka import errors

    refusals = (
        errors.MessageSizeTooLargeError,
        errors.RecordListTooLargeError,
        errors.InvalidTopicError,
        errors.TopicAuthorizationFailedError,
    )
    return isinstance(error, refusals) or type(error) in (ValueError, TypeError)  # kafka-python's local checks


class GroupCommit:
    """Events of concurrent requests go to the outbox together: one thread hop and one fsync per group,
    instead of one per request. Each request still returns only after its own event is on disk."""

    def __init__(self, outbox: Outbox):
        self.outbox, self.pending, self.task = outbox, [], None

    async def put(self, row: tuple[str, bytes, bytes]) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.pending.append((row, done))
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            group, self.pending = self.pending, []
            try:
                await loop.run_in_executor(None, self.outbox.append_many, [row for row, _ in group])
            except Exception as e:
                for _, done in group:
                    done.set_exception(e)
                continue
            for _, done in group:
                done.set_result(None)


class OutboxSender:
    """Ships the outbox to Kafka from a thread; reconnects and retries until the broker takes the events, and
    deletes them once the ingest group `group_id` has committed past them (see `Outbox`)."""

    CONFIRM_EVERY_S = 0.5

    def __init__(
        self,
        outbox: Outbox,
        make_producer: Callable[[], object],
        *,
        group_id: str,
        make_admin: Callable[[], object],
        batch: int = 500,
    ):
        self.outbox, self.make_producer, self.make_admin, self.batch = outbox, make_producer, make_admin, batch
        self.group_id = group_id
        self.sent = self.failures = self.rejected = 0
        self.healthy = True  # the last attempt to reach Kafka succeeded
        self.wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="outbox-sender", daemon=True)
        self._producer = self._admin = None
        self._confirmed_at = 0.0

    @classmethod
    def to_kafka(cls, outbox: Outbox, settings: dict, group_id: str, **kw) -> OutboxSender:
        """A sender with kafka-python clients built from connection `settings` (not started)."""
        from kafka import KafkaAdminClient, KafkaProducer

        return cls(
            outbox,
            lambda: KafkaProducer(**settings, **PRODUCER_OPTIONS),
            group_id=group_id,
            make_admin=lambda: KafkaAdminClient(**settings, request_timeout_ms=5000),
            **kw,
        )

    def start(self) -> OutboxSender:
        self._thread.start()
        return self

    def drain(self, timeout_s: float) -> bool:
        """Wait until every row is in Kafka; True when none is left unsent."""
        deadline = time.monotonic() + timeout_s
        while self.outbox.unsent() and time.monotonic() < deadline:
            self.wakeup.set()
            time.sleep(0.05)
        return not self.outbox.unsent()

    def close(self, drain_s: float = 5.0) -> None:
        self.drain(drain_s)
        self._stop.set()
        self.wakeup.set()
        self._thread.join(30)
        self._confirm()  # what ingest stored in the meantime leaves the file now
        if self._producer is not None:
            self._producer.close(timeout=2)
        if self._admin is not None:
            self._admin.close()

    def _loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            if time.monotonic() - self._confirmed_at > self.CONFIRM_EVERY_S:
                self._confirm()
            rows = self.outbox.oldest_unsent(self.batch)
            if not rows:
                self.wakeup.wait(0.2)
                self.wakeup.clear()
                continue
            try:
                self._send(rows)
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

    def _send(self, rows: list[tuple[int, str, bytes | None, bytes]]) -> None:
        """Send, then record where each row went; a row refused for good is set aside with its reason. A
        retriable failure of any row raises after recording the others (they are not sent twice)."""
        if self._producer is None:
            self._producer = self.make_producer()
        futures, refused = [], []
        for seq, topic, key, value in rows:
            try:
                futures.append((seq, self._producer.send(topic, key=key, value=value)))
            except Exception as e:
                if not permanent(e):
                    raise
                refused.append((seq, f"{type(e).__name__}: {e}"))
        self._producer.flush(timeout=10)
        sent, retry = [], None
        for seq, future in futures:
            try:
                meta = future.get(timeout=0)
                sent.append((seq, meta.partition, meta.offset))
            except Exception as e:
                if permanent(e):
                    refused.append((seq, f"{type(e).__name__}: {e}"))
                else:
                    retry = retry or e
        if sent:
            self.outbox.mark_sent(self._producer._metadata.cluster_id or "", sent)
            self.sent += len(sent)
        if refused:
            self.outbox.set_aside(refused)
            self.rejected += len(refused)
            for seq, reason in refused:
                log.error("outbox: Kafka refuses event %d for good (%s); moved to outbox_rejected", seq, reason)
        if retry is not None:
            raise retry

    def _confirm(self) -> None:
        self._confirmed_at = time.monotonic()
        try:
            if self._admin is None:
                self._admin = self.make_admin()
            offsets = self._admin.list_group_offsets({self.group_id: None})[self.group_id]
            cluster = self._admin._client.cluster.cluster_id or ""
        except Exception as e:  # Kafka away: nothing is deleted, nothing is lost; try again later
            log.debug("outbox: could not read the ingest group's offsets (%s)", e)
            if self._admin is not None:
                try:
                    self._admin.close()
                except Exception:
                    pass
                self._admin = None
            return
        self.outbox.confirm(cluster, {(tp.topic, tp.partition): o.offset for tp, o in offsets.items()})
