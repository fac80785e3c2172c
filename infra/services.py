"""Wiring: turns the config into the long-running parts (`flywheel up`, `flywheel ingest`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from infra.config import Config
from ingest.contracts import BASE

if TYPE_CHECKING:
    from infra.api import Api
    from ingest.consumer import IngestConsumer

log = logging.getLogger(__name__)


def start_kafka(cfg: Config, stack: ExitStack) -> tuple[str, str]:
    """(bootstrap, description): a configured cluster, a running bundled broker, or a new one owned here."""
    from infra import broker, kafka

    if cfg.kafka.bootstrap_servers:
        kafka.ensure_topics(cfg.kafka, cfg.kafka.bootstrap_servers)
        return cfg.kafka.bootstrap_servers, "Kafka cluster"
    running = broker.read_state(cfg.data_dir)
    if running is not None:
        return running.bootstrap, f"bundled broker (pid {running.pid}, started by `flywheel broker start`)"
    embedded = stack.enter_context(broker.EmbeddedBroker(cfg.kafka, cfg.data_dir, supervise=True))
    return embedded.bootstrap, f"bundled broker (pid {embedded.proc.pid})"


def close_store(con, path: Path, data_dir: Path, echo: Callable[[str], None] = print) -> None:
    """Anchor the audit log, close the service's connection; a forget done through the admin API is compacted
    now."""
    from infra import db, keys

    keys.write_anchor(con, data_dir)
    con.close()
    if db.compact_marker(path).exists():
        before, after = db.compact(path)
        echo(f"database  compacted after a forget ({before:,} -> {after:,} bytes)")


@dataclass
class Services:
    bootstrap: str
    kafka: str  # which Kafka: "bundled broker (pid N)", "Kafka cluster", ...
    con: duckdb.DuckDBPyConnection
    ingest: IngestConsumer
    ingest_thread: threading.Thread
    api: Api
    review: ReviewStore


def start_services(
    cfg: Config, stack: ExitStack, halt: threading.Event, echo: Callable[[str], None] = print
) -> Services:
    """Broker (unless one runs or a cluster is configured), DuckDB, ingest and the API with the review pages,
    in this process; an error in ingest sets `halt` (the process's stop). `stack` stops them so that nothing
    accepted is left behind: HTTP closes, the outbox is sent to Kafka, ingest reads to the end offsets and
    stores, the outbox deletes what ingest stored, then ingest, DuckDB and the broker stop."""
    from prometheus_client import CollectorRegistry

    from infra import db

    bootstrap, kind = start_kafka(cfg, stack)
    echo(f"kafka     {bootstrap}  {kind}; topics {cfg.kafka.chats_topic}, {cfg.kafka.feedback_topic}")
    con = db.open_store(cfg.db_path, cfg.db.threads)
    stack.callback(close_store, con, cfg.db_path, cfg.data_dir, echo)
    anchoring = threading.Event()
    threading.Thread(target=anchor_audit, args=(con, cfg.data_dir, anchoring), name="audit-anchor", daemon=True).start()
    stack.callback(anchoring.set)
    info = db.describe(con)
    echo(f"database  {cfg.db_path}  schema v{info['schema_version']}, {len(info['tables'])} tables")
    registry = CollectorRegistry()  # one /metrics for ingest and the API
    ingest = build_ingest(cfg, bootstrap, con.cursor(), registry)
    stop, drain = threading.Event(), threading.Event()
    thread = start_ingest_thread(ingest, stop, drain, halt)
    stack.callback(thread.join)
    stack.callback(stop.set)  # on an error during start-up; in a clean stop ingest has ended by now
    echo(f"ingest    consumer group {cfg.ingest.group_id}, {cfg.ingest.pii.workers} scrub workers")
    review = ReviewStore(con, cfg)
    from infra import ab, remote
    from infra.api import Api

    def adapter_failed(version: str, reason: str) -> None:  # serving could not load it: the incumbent serves on
        ab.adapter_failed(cfg, con.cursor(), version, reason)

    api = Api(cfg, bootstrap, registry, review=review, on_adapter_failed=adapter_failed)
    stack.callback(shut_down, api, thread, drain, stop, echo)
    echo(f"api       {api.url}/v1  (OpenAI-compatible; models: {', '.join(api.router.variants())})")
    if line := api.vllm_line():
        echo(line)
    remote.write_endpoint(cfg.data_dir, api.url)  # where the CLI sends its commands while this holds the database
    stack.callback(remote.clear_endpoint, cfg.data_dir)
    echo(f"review    {api.url}/review  and A/B dashboard {api.url}/ab  (sign in with a key from serving.admin_keys)")
    return Services(bootstrap, kind, con, ingest, thread, api, review)


def anchor_audit(con, data_dir: Path, stop: threading.Event, every_s: float = 2.0) -> None:
    """Re-sign the audit log's head whenever it moved (reviews, forgets, retrain and A/B decisions)."""
    from infra import keys

    while not stop.wait(every_s):
        try:
            keys.write_anchor(con.cursor(), data_dir)
        except Exception:
            log.exception("anchoring the audit log failed; trying again")


DRAIN_TIMEOUT_S = 120.0  # ingest stores ~500 events/s here: a minute of full-speed feedback


def shut_down(
    api: Api,
    ingest: threading.Thread,
    drain: threading.Event,
    stop: threading.Event,
    echo: Callable[[str], None] = print,
) -> None:
    """The order that leaves nothing accepted behind. Whatever a step cannot finish in time stays in the
    outbox file and is sent again at the next start (to a new bundled broker if this one is gone)."""
    api.close_http()
    if not api.sender.settle(DRAIN_TIMEOUT_S, while_=ingest.is_alive) and api.sender.outbox.unsent():
        echo(f"outbox    {api.sender.outbox.unsent()} events not yet in Kafka: kept, sent at the next start")
    drain.set()
    ingest.join(DRAIN_TIMEOUT_S)
    stop.set()
    ingest.join()
    api.close()
    left = api.outbox_left
    if left:
        echo(f"outbox    {left} events not yet stored by ingest: kept in the outbox, sent again at the next start")


def build_ingest(cfg: Config, bootstrap: str, con: duckdb.DuckDBPyConnection, registry=None):
    """An IngestConsumer with its Kafka consumer and scrub workers (the workers start here)."""
    from kafka import KafkaConsumer

    from infra.kafka import client_settings, consumer_settings
    from ingest.consumer import IngestConsumer
    from ingest.scrub_pool import ScrubPool

    consumer = KafkaConsumer(
        **client_settings(cfg.kafka, bootstrap),
        **consumer_settings(cfg.kafka),
        group_id=cfg.ingest.group_id,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    return IngestConsumer(
        consumer,
        con,
        ScrubPool(cfg.ingest.pii),
        kind_of_topic={cfg.kafka.chats_topic: "chat", cfg.kafka.feedback_topic: "feedback"},
        group_id=cfg.ingest.group_id,
        batch_max_events=cfg.ingest.batch_max_events,
        batch_max_ms=cfg.ingest.batch_max_ms,
        registry=registry,
    )


def run_ingest(ingest, should_stop: Callable[[], bool], draining: Callable[[], bool] = lambda: False) -> None:
    try:
        ingest.run(should_stop, draining)
    finally:
        ingest.consumer.close()
        ingest.scrubber.close()


def start_ingest_thread(
    ingest, stop: threading.Event, drain: threading.Event | None = None, halt: threading.Event | None = None
) -> threading.Thread:
    """Ingest in a thread of this process (DuckDB has one writer process: this one). Setting `drain` ends it
    once it has stored everything up to the end offsets; setting `stop` ends it after the batch in flight."""

    def target():
        try:
            run_ingest(ingest, stop.is_set, drain.is_set if drain is not None else (lambda: False))
        except Exception:
            log.exception("ingest stopped on an error; stopping flywheel")
            stop.set()
            if halt is not None:
                halt.set()

    thread = threading.Thread(target=target, name="ingest", daemon=True)
    thread.start()
    return thread


def produce_synthetic(cfg: Config, bootstrap: str, n: int, seed: int = 0, malformed: int = 0) -> int:
    """Produce n synthetic store-support events (chats and feedback) and `malformed` broken ones."""
    from infra import keys
    from infra.kafka import client_settings
    from ingest.producer import EventProducer
    from ingest.synthetic import events
    from serving.ids import pseudonym

    key = keys.data_dir_key(cfg.data_dir, "user-pseudonyms")
    producer = EventProducer.connect(
        client_settings(cfg.kafka, bootstrap), cfg.kafka.chats_topic, cfg.kafka.feedback_topic
    )
    try:
        for event in events(n, seed=seed):  # user ids as the API stores them: `forget` finds them by raw id
            producer.send(event.model_copy(update={"user_id": pseudonym(key, event.app_id, event.user_id)}))
        for i in range(malformed):
            producer.send_raw(
                cfg.kafka.chats_topic, b"simulated", b'{"schema_version": 1, "broken": ' + str(i).encode()
            )
        producer.flush(timeout=cfg.kafka.connect_timeout_s * 3)
    finally:
        producer.close()
    return n + malformed


class ReviewStore:
    """The review page's backend (serving.pages.ReviewBackend) on the service's own DuckDB connection:
    one cursor per call, so requests in threads do not share one."""

    def __init__(self, con: duckdb.DuckDBPyConnection, cfg: Config):
        self.con, self.cfg = con, cfg
        # sha256(FORGET_PREFIX || pseudonym) -> when, for the API's check of late ratings (loaded once, then
        # kept current by forget() in this process)
        self._forgotten = {
            h: t.timestamp() for h, t in con.execute("SELECT user_hash, forgotten_at FROM forgotten_users").fetchall()
        }
        self.after_taint: Callable[[], object] | None = None  # `up` sets it: retrain soon without the user

    def forgotten_before(self, user_id: str, when: float) -> bool:
        """Whether `user_id` (a pseudonym) was forgotten after `when` (epoch seconds)."""
        from curation.forget import user_hash

        at = self._forgotten.get(user_hash(user_id))
        return at is not None and when <= at

    def pending(self, limit: int) -> list[dict]:
        from curation import review

        return review.pending(self.con.cursor(), limit)

    def counts(self) -> dict[str, int]:
        from curation import review

        return review.counts(self.con.cursor())

    def filter_stats(self) -> dict[str, int]:
        from curation import review

        return review.filter_stats(self.con.cursor())

    def audit(self, limit: int) -> list[dict]:
        from curation import audit

        return audit.entries(self.con.cursor(), limit)

    def decide(self, sample_ids: list[str], decision: str, reviewer: str, reason: str | None) -> int:
        from curation import review
        from serving.pages import BadDecision

        try:
            return review.decide(self.con.cursor(), sample_ids, decision, reviewer, reason)
        except review.ReviewError as e:
            raise BadDecision(str(e), 404 if isinstance(e, review.UnknownSamples) else 400) from None

    def ab(self) -> dict:
        """What the /ab dashboard shows: experiments with their decisions (numbers included) and the live
        history."""
        from abtest import experiment
        from retrain import registry

        cur = self.con.cursor()
        live = registry.live(cur)
        exps = [
            {**e.__dict__, "decisions": experiment.decisions(cur, e.experiment_id)} for e in experiment.experiments(cur)
        ]
        return {
            "experiments": exps,
            "history": registry.history(cur),
            "live": live["version"] if live else BASE,
            "srm_threshold": self.cfg.abtest.srm_p,
            "days": self.days(cur),
            "lineage": registry.lineage_rows(cur),
        }

    def days(self, cur) -> list[dict]:
        """The history across nights (`abtest.history.days`) from the audit log, chats and decisions."""
        from abtest import history

        runs = cur.execute(
            "SELECT epoch(logged_at), action, subject, details->>'reason' FROM audit_log "
            "WHERE actor = 'retrain' AND action IN ('candidate', 'rejected', 'failed', 'skipped') ORDER BY seq"
        ).fetchall()
        rated = cur.execute(
            "SELECT epoch(c.created_at), c.user_id, c.variant, (l.rating = 1)::INT FROM chats c "
            "JOIN latest_feedback l ON l.response_id = c.response_id AND l.user_id = c.user_id "
            "LEFT JOIN experiments e ON e.experiment_id = c.experiment_id "
            "WHERE e.challenger IS NULL OR c.variant <> e.challenger"
        ).fetchall()
        decisions = cur.execute(
            "SELECT epoch(decided_at), decision, experiment_id, reason FROM decisions "
            "WHERE decision IN ('promote', 'rollback') ORDER BY decided_at"
        ).fetchall()
        taints = cur.execute(
            "SELECT epoch(changed_at), version FROM adapter_events WHERE status = 'tainted' ORDER BY changed_at"
        ).fetchall()
        return history.days(runs, rated, decisions, taints=taints, tau=self.cfg.abtest.tau, alpha=self.cfg.abtest.alpha)

    def command(self, argv: list[str], actor: str) -> dict:
        """A read or admin `flywheel` command run here for a reviewer (`infra.remote`)."""
        from infra import remote
        from infra.commands.common import InService

        return remote.run_inside(InService(self.cfg, self.con, self, actor), argv)

    def forget(self, app_id: str, user_id: str, actor: str) -> dict:
        """Rows go now; the file is compacted (freed blocks overwritten) when the store is next opened
        alone: at the next start, on `flywheel db compact`, or when this service stops."""
        from infra.db import compact_marker
        from serving.pages import BadDecision

        try:
            done = forget_user(self.con.cursor(), self.cfg, app_id, user_id, actor)
        except ValueError as e:
            raise BadDecision(str(e)) from None
        self._forgotten[done["user_hash"]] = time.time()
        if done["adapters"] and self.after_taint is not None:
            self.after_taint()
            done["routing"] = [*done.get("routing", []), "a retrain without the user is scheduled within a minute"]
        compact_marker(self.cfg.db_path).touch()
        return {**done, "compaction": "pending: runs when the service stops or restarts"}


def forget_user(con, cfg: Config, app_id: str, user_id: str, actor: str) -> dict:
    """Erase the user `user_id` of app `app_id`, given as the app sent it: the stored id is its pseudonym."""
    from curation.forget import forget
    from infra import keys
    from retrain import registry
    from serving.ids import pseudonym

    known = set(cfg.serving.api_keys) | {a for (a,) in con.execute("SELECT DISTINCT app_id FROM chats").fetchall()}
    if app_id not in known:  # a typo would otherwise erase nobody, quietly
        raise ValueError(
            f"unknown app {app_id!r}: one of {', '.join(sorted(known))} (serving.api_keys and the apps of stored chats)"
        )
    user = pseudonym(keys.data_dir_key(cfg.data_dir, "user-pseudonyms"), app_id, user_id)
    done = forget(con, user, actor, taint=registry.taint_trained_on).as_dict()
    if done["adapters"]:  # some were trained on the user: stop serving them now, not at the next A/B win
        from infra.ab import serve_untainted

        done["routing"] = serve_untainted(cfg, con)
    return done
