"""The bundled broker, through the real Kafka protocol with kafka-python."""

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from infra import broker as broker_mod
from infra.config import KafkaConfig
from infra.errors import FlywheelError
from infra.kafka import admin, client_settings, consumer_settings, end_offsets


def test_topics_exist_with_configured_partitions(broker):
    cfg = KafkaConfig()
    client = admin(cfg, broker.bootstrap)
    try:
        described = {t["name"]: t for t in client.describe_topics([cfg.chats_topic, cfg.feedback_topic])}
    finally:
        client.close()
    for name in (cfg.chats_topic, cfg.feedback_topic):
        assert len(described[name]["partitions"]) == cfg.partitions


@pytest.mark.slow
def test_round_trip_10000_messages_through_a_consumer_group(broker):
    cfg = KafkaConfig()
    topic, n = "roundtrip", 10_000
    client = admin(cfg, broker.bootstrap)
    from kafka.admin import NewTopic

    client.create_topics([NewTopic(topic, 3, 1)])
    client.close()

    producer = KafkaProducer(**client_settings(cfg, broker.bootstrap), acks="all", linger_ms=5)
    for i in range(n):
        producer.send(topic, key=f"user-{i % 97}".encode(), value=f"{i}".encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic, group_id="roundtrip-group", **client_settings(cfg, broker.bootstrap), **consumer_settings(cfg)
    )
    seen, deadline = [], time.monotonic() + 60
    while len(seen) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            seen += [int(r.value) for r in records]
    consumer.commit()
    partitions = [TopicPartition(topic, p) for p in range(3)]
    committed = {tp.partition: consumer.committed(tp) for tp in partitions}
    consumer.close()
    ends = end_offsets(cfg, broker.bootstrap, topic)

    assert sorted(seen) == list(range(n))  # every message once
    assert committed == ends and sum(ends.values()) == n


def test_port_in_use_is_one_line(tmp_path, broker):
    cfg = KafkaConfig(port=int(broker.bootstrap.rsplit(":", 1)[1]))
    with pytest.raises(FlywheelError, match="is in use.*kafka.port=0"):
        broker_mod.EmbeddedBroker(cfg, tmp_path).start()


def test_missing_binary_is_one_line(tmp_path):
    cfg = KafkaConfig(broker_binary=tmp_path / "tansu")
    with pytest.raises(FlywheelError, match="missing or not executable"):
        broker_mod.EmbeddedBroker(cfg, tmp_path).start()


def test_a_broker_that_never_opens_its_port_is_stopped_with_the_bound_named(tmp_path):
    silent = tmp_path / "tansu"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    broker = broker_mod.EmbeddedBroker(KafkaConfig(broker_binary=silent, start_timeout_s=0.5), tmp_path)
    with pytest.raises(FlywheelError, match=r"did not open 127\.0\.0\.1:\d+ within kafka\.start_timeout_s \(0\.5 s\)"):
        broker.start()
    assert broker.proc is None and broker_mod.read_state(tmp_path) is None


def test_state_file_finds_a_running_broker_and_forgets_a_stopped_one(tmp_path):
    cfg = KafkaConfig()
    with pytest.raises(FlywheelError, match="no Kafka broker is running"):
        broker_mod.resolve_bootstrap(cfg, tmp_path)
    with broker_mod.EmbeddedBroker(cfg, tmp_path) as b:
        assert broker_mod.resolve_bootstrap(cfg, tmp_path) == b.bootstrap
        pid = b.proc.pid
    assert broker_mod.read_state(tmp_path) is None
    assert not broker_mod._pid_alive(pid)


def test_configured_cluster_wins_over_embedded(tmp_path):
    cfg = KafkaConfig(bootstrap_servers="k1:9092,k2:9092")
    assert broker_mod.resolve_bootstrap(cfg, tmp_path) == "k1:9092,k2:9092"
    assert client_settings(cfg, cfg.bootstrap_servers)["bootstrap_servers"] == ["k1:9092", "k2:9092"]


def test_sasl_settings_pass_through():
    cfg = KafkaConfig(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="u",
        sasl_plain_password="p",
        ssl_cafile="/etc/ca.pem",
    )
    s = client_settings(cfg, "k:9093")
    assert (s["security_protocol"], s["sasl_mechanism"], s["sasl_plain_username"]) == ("SASL_SSL", "SCRAM-SHA-512", "u")
    assert s["sasl_plain_password"] == "p" and s["ssl_cafile"] == "/etc/ca.pem"


def test_a_supervised_broker_whose_restart_fails_is_started_again(tmp_path, monkeypatch):
    """kill -9 of the broker, then its first restart fails (the topics not created in time, as on a loaded
    machine): before, the watcher saw no process and stopped watching, and the broker stayed gone."""
    real = broker_mod.ensure_topics
    failures = []

    def flaky(cfg, bootstrap):
        if not failures:
            failures.append(bootstrap)
            raise FlywheelError("topics not created in time (injected)")
        return real(cfg, bootstrap)

    with broker_mod.EmbeddedBroker(KafkaConfig(), tmp_path, supervise=True) as b:
        first = b.proc.pid
        monkeypatch.setattr(broker_mod, "ensure_topics", flaky)
        b.proc.kill()
        deadline = time.monotonic() + 60
        while not (b.restarts and b.proc is not None and b.proc.pid != first):
            assert time.monotonic() < deadline, "the broker was not started again"
            time.sleep(0.1)
        assert failures and broker_mod.read_state(tmp_path).pid == b.proc.pid
        assert broker_mod._answers_tcp(b.cfg.host, b.port)
