"""Ingest through the real bundled broker into a real DuckDB file."""

import random

import pytest

from infra.db import open_store
from ingest.contracts import ChatLog, Feedback, Message
from ingest.synthetic import events
from tests.helpers.kafka import ingest_until_caught_up, producer, topic_config

CANARIES = {
    "email": "quigley.canary7@example.com",
    "phone": "+1 212 555 0147",
    "card": "4111 1111 1111 1111",
    "ssn": "536-22-8741",
    "iban": "GB82WEST12345698765432",
    "ip": "203.0.113.77",
}


@pytest.mark.slow
def test_valid_duplicated_and_malformed_events(broker, tmp_path):
    cfg, _ = topic_config(broker, tmp_path)
    evs = events(400, seed=7)
    p = producer(cfg, broker)
    for e in evs:
        p.send(e)
    for e in random.Random(1).sample(evs, 40):  # client retries re-send the same event
        p.send(e)
    malformed = [b"{oops", b'{"schema_version": 3}', b"[]", b'{"schema_version": 1, "kind": "chat"}']
    for value in malformed:
        p.send_raw(cfg.kafka.chats_topic, b"u", value)
    p.flush()

    con = open_store(cfg.db_path)
    stored, ends = ingest_until_caught_up(cfg, broker, con)
    n_chats = sum(isinstance(e, ChatLog) for e in evs)
    assert con.execute("SELECT count(*), count(DISTINCT event_id) FROM chats").fetchone() == (n_chats, n_chats)
    n_fb = len(evs) - n_chats
    assert con.execute("SELECT count(*), count(DISTINCT event_id) FROM feedback").fetchone() == (n_fb, n_fb)
    assert con.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == len(malformed)
    assert stored == ends and sum(ends.values()) == len(evs) + 40 + len(malformed)
    ids = {str(e.event_id) for e in evs}
    assert {
        str(r[0]) for r in con.execute("SELECT event_id FROM chats UNION ALL SELECT event_id FROM feedback").fetchall()
    } == ids
    con.close()


def canary_events() -> list:
    c = CANARIES
    chat = ChatLog(
        response_id="resp-canary",
        app_id="app",
        user_id="user-canary",
        variant="base",
        latency_ms=5,
        messages=[
            Message(role="system", content=f"Escalate to {c['email']} if needed."),
            Message(role="user", content=f"My card {c['card']} and SSN {c['ssn']}; call {c['phone']}."),
            Message(role="assistant", content=f"Refund sent to IBAN {c['iban']}."),
            Message(role="user", content=f"I logged in from {c['ip']}, email {c['email']}."),
        ],
        response=f"I will call you at {c['phone']} and write to {c['email']}.",
    )
    fb = Feedback(
        response_id="resp-canary",
        app_id="app",
        user_id="user-canary",
        rating=-1,
        comment=f"Wrong! Use {c['email']} or {c['phone']}.",
        correction=f"We refunded card {c['card']} and IBAN {c['iban']}.",
    )
    return [chat, fb]


@pytest.mark.slow
def test_canary_pii_reaches_no_table_and_no_byte_of_the_file(broker, tmp_path):
    cfg, _ = topic_config(broker, tmp_path)
    p = producer(cfg, broker)
    for e in canary_events():
        p.send(e)
    p.send_raw(cfg.kafka.chats_topic, b"u", f'{{"broken": "{CANARIES["email"]} {CANARIES["card"]}'.encode())
    p.flush()
    con = open_store(cfg.db_path)
    ingest_until_caught_up(cfg, broker, con)
    assert con.execute("SELECT count(*) FROM chats").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM feedback").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 1
    found = {r[0] for r in con.execute("SELECT DISTINCT entity_type FROM pii_findings").fetchall()}
    assert {"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS"} <= found
    tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
    for table in tables:
        dump = str(con.execute(f'SELECT CAST(COLUMNS(*) AS VARCHAR) FROM "{table}"').fetchall())
        for name, value in CANARIES.items():
            assert value not in dump, (table, name)
    con.execute("CHECKPOINT")
    con.close()
    raw = cfg.db_path.read_bytes()
    for name, value in CANARIES.items():
        assert value.encode() not in raw, name


@pytest.mark.slow
def test_a_failing_kafka_commit_never_stops_ingest(broker, tmp_path, monkeypatch):
    from kafka import KafkaConsumer
    from kafka.errors import CommitFailedError

    def refuse(self, offsets=None):
        raise CommitFailedError("injected: the group rebalanced")

    monkeypatch.setattr(KafkaConsumer, "commit", refuse)
    cfg, _ = topic_config(broker, tmp_path)
    p = producer(cfg, broker)
    evs = events(120, seed=5)
    for e in evs:
        p.send(e)
    p.flush()
    con = open_store(cfg.db_path)
    stored, ends = ingest_until_caught_up(cfg, broker, con)  # DuckDB's offsets are the truth
    assert stored == ends
    assert con.execute("SELECT (SELECT count(*) FROM chats) + (SELECT count(*) FROM feedback)").fetchone()[0] == 120
    con.close()


@pytest.mark.slow
def test_a_poll_that_raises_while_the_broker_is_away_never_stops_ingest(broker, tmp_path, monkeypatch):
    """kafka-python raised KafkaConnectionError from poll() while a killed broker restarted, which stopped
    `flywheel up` (tests/chaos/test_broker_kill.py, about one run in four)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaConnectionError

    real, raised = KafkaConsumer.poll, []

    def away(self, *args, **kwargs):
        if len(raised) < 3 and self.config["group_id"] == cfg.ingest.group_id:  # ingest's consumer only
            raised.append(1)
            raise KafkaConnectionError("111 ECONNREFUSED (injected)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(KafkaConsumer, "poll", away)
    cfg, _ = topic_config(broker, tmp_path)
    p = producer(cfg, broker)
    for e in events(60, seed=6):
        p.send(e)
    p.flush()
    con = open_store(cfg.db_path)
    stored, ends = ingest_until_caught_up(cfg, broker, con)
    assert len(raised) == 3 and stored == ends
    assert con.execute("SELECT (SELECT count(*) FROM chats) + (SELECT count(*) FROM feedback)").fetchone()[0] == 60
    con.close()
