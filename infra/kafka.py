"""Kafka client settings from the config, and the checks that turn a broker problem into one line."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from infra.config import KafkaConfig
from infra.errors import FlywheelError

log = logging.getLogger(__name__)


def client_settings(cfg: KafkaConfig, bootstrap: str) -> dict:
    """Connection and security settings shared by producers, consumers and admin clients."""
    settings: dict = {"bootstrap_servers": bootstrap.split(","), "security_protocol": cfg.security_protocol}
    if cfg.sasl_mechanism:
        settings["sasl_mechanism"] = cfg.sasl_mechanism
        settings["sasl_plain_username"] = cfg.sasl_plain_username
        if cfg.sasl_plain_password is not None:
            settings["sasl_plain_password"] = cfg.sasl_plain_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(cfg, name)
        if value is not None:
            settings[name] = str(value)
    return settings


def consumer_settings(cfg: KafkaConfig) -> dict:
    """Group settings that make a consumer group join in seconds (see ARCHITECTURE.md, Broker)."""
    return {
        "max_poll_interval_ms": cfg.max_poll_interval_ms,
        "session_timeout_ms": cfg.session_timeout_ms,
        "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }


@contextmanager
def quiet_kafka_logs():
    """kafka-python logs every refused connection at ERROR; while we probe, our one line says it all."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def admin(cfg: KafkaConfig, bootstrap: str, timeout_s: float | None = None):
    """An admin client, or a one-line error naming the address that did not answer."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = int((timeout_s or cfg.connect_timeout_s) * 1000)
    try:
        with quiet_kafka_logs():
            return KafkaAdminClient(
                **client_settings(cfg, bootstrap), request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms
            )
    except KafkaError as e:
        raise FlywheelError(
            f"cannot reach Kafka at {bootstrap} ({type(e).__name__}): check kafka.bootstrap_servers "
            "and the network, or unset it to use the bundled broker"
        ) from None


def ensure_topics(cfg: KafkaConfig, bootstrap: str) -> list[str]:
    """Create the chat and feedback topics when missing; returns the ones created now."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    client = admin(cfg, bootstrap)
    try:
        existing = set(client.list_topics())
        wanted = [cfg.chats_topic, cfg.feedback_topic]
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                client.create_topics([NewTopic(t, cfg.partitions, cfg.replication_factor) for t in missing])
            except TopicAlreadyExistsError:  # a concurrent creator won the race: fine
                pass
            log.info("created topics %s with %d partitions", missing, cfg.partitions)
        return missing
    finally:
        client.close()


def end_offsets(cfg: KafkaConfig, bootstrap: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """The log-end offset (high watermark) of every partition of `topic`.

    Tansu 0.6.0 answers ListOffsets(latest) with the base offset of the last record batch, not the end of
    the log, so `KafkaConsumer.end_offsets` under-reports there. The high watermark carried by a Fetch
    response is right on Tansu and Kafka alike, so: seek to the (possibly low) ListOffsets answer, fetch
    once per partition, and read the high watermark.
    """
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**client_settings(cfg, bootstrap), enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        for tp, offset in consumer.end_offsets(partitions).items():
            consumer.seek(tp, max(offset - 1, 0))
        deadline = time.monotonic() + timeout_s
        while any(consumer.highwater(tp) is None for tp in partitions) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)
        missing = [tp.partition for tp in partitions if consumer.highwater(tp) is None]
        if missing:
            raise TimeoutError(f"no high watermark for {topic} partitions {missing}")
        return {tp.partition: consumer.highwater(tp) for tp in partitions}
    finally:
        consumer.close()
