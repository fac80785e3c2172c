"""The ingest loop: Kafka consumer group → prepare (parse, dedupe, scrub) → one DuckDB transaction.

Exactly-once effect: DuckDB is the source of truth for offsets. The transaction that stores a batch also
stores the next offset of each partition; on assignment the consumer seeks to those offsets (ignoring what
Kafka has committed); the commit to Kafka afterwards is informative (lag dashboards), and its failure is
logged, never fatal. A batch whose write fails is re-read from its first offset after a pause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import duckdb
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Histogram

from ingest import sink
from ingest.batch import Record, prepare
from ingest.scrub import SCRUBBER_VERSION
from ingest.scrub_pool import ScrubPool

log = logging.getLogger(__name__)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.events = Counter("flywheel_ingest_events", "Events by outcome", ["outcome"], registry=registry)
        self.findings = Counter("flywheel_ingest_pii_findings", "PII findings stored", registry=registry)
        self.batch_seconds = Histogram(
            "flywheel_ingest_batch_seconds", "Time to prepare and write a batch", registry=registry
        )
        self.write_errors = Counter("flywheel_ingest_write_errors", "Batches whose write failed", registry=registry)


class IngestConsumer:
    def __init__(
        self,
        consumer: Any,  # a kafka-python KafkaConsumer (untyped)
        con: duckdb.DuckDBPyConnection,
        scrubber: ScrubPool,
        *,
        kind_of_topic: dict[str, str],
        group_id: str,
        batch_max_events: int,
        batch_max_ms: int,
        registry: CollectorRegistry | None = None,
    ):
        self.consumer, self.con, self.scrubber = consumer, con, scrubber
        self.kind_of_topic, self.group_id = kind_of_topic, group_id
        self.batch_max_events, self.batch_max_ms = batch_max_events, batch_max_ms
        self.metrics = IngestMetrics(registry or CollectorRegistry())
        self.pending: list[Record] = []
        self.totals = {
            "chats": 0,
            "feedback": 0,
            "duplicates": 0,
            "dead_letters": 0,
            "quarantined": 0,
            "findings": 0,
            "erased": 0,
        }

    # -- rebalance ---------------------------------------------------------------------------------
    def _cluster_id(self) -> str | None:
        try:  # kafka-python keeps the id from the last Metadata response here
            cluster_id: str | None = self.consumer._client.cluster.cluster_id
            return cluster_id
        except AttributeError:
            return None

    def on_assigned(self, assigned: Collection[TopicPartition]) -> None:
        stored = sink.stored_offsets(self.con, self.group_id)
        cluster = self._cluster_id()
        for tp in assigned:
            offset, stored_cluster = stored.get((tp.topic, tp.partition), (None, None))
            if offset is not None and stored_cluster == cluster:
                self.consumer.seek(tp, offset)
            else:
                if offset is not None:
                    log.warning(
                        "%s[%d]: stored offset %d is for Kafka cluster %s, this is %s: reading from the "
                        "beginning (idempotent inserts drop what is already stored)",
                        tp.topic,
                        tp.partition,
                        offset,
                        stored_cluster,
                        cluster,
                    )
                self.consumer.seek_to_beginning(tp)
        log.info("assigned %d partitions", len(assigned))

    def on_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self.flush()

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool], draining: Callable[[], bool] = lambda: False) -> None:
        """Ingest until `should_stop()`, or, once `draining()`, until every assigned partition is read to its
        end offset and stored (a clean stop leaves no ingest lag behind)."""
        this = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python has no types
            def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
                this.on_revoked(revoked)

            def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
                this.on_assigned(assigned)

        self.consumer.subscribe(list(self.kind_of_topic), listener=Listener())
        while not should_stop():
            self.poll_batch(should_stop)
            self.flush()
            if draining() and self.caught_up():
                break
        log.info("ingest stopped after the batch in flight: %s", self.totals)

    def poll_batch(self, should_stop: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.batch_max_ms / 1000
        while len(self.pending) < self.batch_max_events and not should_stop():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                polled = self.consumer.poll(
                    timeout_ms=max(int(remaining * 1000), 1), max_records=self.batch_max_events - len(self.pending)
                )
            except KafkaError as e:  # the broker away: kafka-python 3 raises its connection error from poll
                log.warning("polling Kafka failed (%s); trying again", e)
                time.sleep(0.2)
                continue
            for records in polled.values():
                self.pending += [Record(r.topic, r.partition, r.offset, r.value) for r in records]

    def caught_up(self) -> bool:
        """Every assigned partition stored up to its end offset (False while no partition is assigned)."""
        assigned = self.consumer.assignment()
        if not assigned or self.pending:
            return False
        try:
            ends = self.consumer.end_offsets(list(assigned))
            return all(self.consumer.position(tp) >= ends[tp] for tp in assigned)
        except (KafkaError, AssertionError, KeyError):  # a rebalance or the broker away: not caught up yet
            return False

    def flush(self) -> None:
        if not self.pending:
            return
        records, self.pending = self.pending, []
        started = time.perf_counter()
        try:
            batch = prepare(records, self.kind_of_topic, self.scrubber.scrub, SCRUBBER_VERSION)
            written = sink.write(self.con, self.group_id, self._cluster_id(), batch)
        except (duckdb.Error, OSError) as e:
            self.metrics.write_errors.inc()
            log.error("writing a batch of %d events failed (%s); re-reading it in 2 s", len(records), e)
            self._rewind(records)
            time.sleep(2)
            return
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        for outcome in self.totals:
            self.totals[outcome] += getattr(written, outcome)
            if outcome != "findings":
                self.metrics.events.labels(outcome).inc(getattr(written, outcome))
        self.metrics.findings.inc(written.findings)
        log.info("stored a batch of %d events in %.2f s", len(records), time.perf_counter() - started)
        self._commit_informative(batch.next_offsets)

    def _rewind(self, records: list[Record]) -> None:
        first: dict[tuple[str, int], int] = {}
        for r in records:
            first[(r.topic, r.partition)] = min(first.get((r.topic, r.partition), r.offset), r.offset)
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition), offset)
            except (KafkaError, AssertionError, ValueError):
                pass  # no longer assigned: the next owner reads from the offsets stored in DuckDB

    def _commit_informative(self, next_offsets: dict[tuple[str, int], int]) -> None:
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in next_offsets.items()}
        try:
            self.consumer.commit(offsets)
        except (KafkaError, AssertionError) as e:  # DuckDB has the offsets; Kafka's copy is for dashboards
            log.warning("informative Kafka commit failed: %s", e)
