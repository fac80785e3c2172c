"""prepare() with the real scrubber, then the DuckDB sink, on crafted records."""

import random

import pytest

from ingest import sink
from ingest.batch import Record, prepare
from ingest.scrub import SCRUBBER_VERSION
from ingest.contracts import Message
from ingest.synthetic import chat, feedback

KINDS = {"c": "chat", "f": "feedback"}


def records():
    rng = random.Random(3)
    c1 = chat(rng, "u1").model_copy(update={"messages": [Message(role="user", content="I'm Maria Garcia.")]})
    c2 = chat(rng, "u2").model_copy(update={"messages": [Message(role="user", content="Mail me: a.b@example.com")]})
    f1 = feedback(rng, c1)
    return [
        Record("c", 0, 0, c1.model_dump_json().encode()),
        Record("c", 0, 1, c2.model_dump_json().encode()),
        Record("c", 1, 0, c1.model_dump_json().encode()),  # same event re-sent
        Record("c", 1, 1, b"{broken json Maria Garcia maria@example.com"),
        Record("f", 0, 0, f1.model_dump_json().encode()),
        Record("f", 0, 1, b'{"schema_version": 7}'),
    ], (c1, c2, f1)


def test_prepare_sorts_every_record_into_one_place(scrub_pool):
    recs, (c1, c2, f1) = records()
    batch = prepare(recs, KINDS, scrub_pool.scrub, SCRUBBER_VERSION)
    assert [r["event_id"] for r in batch.chats] == [str(c1.event_id), str(c2.event_id)]
    assert [r["event_id"] for r in batch.feedback] == [str(f1.event_id)]
    assert batch.duplicates == 1
    assert [d["reason"] for d in batch.dead_letters] == ["not JSON", "unknown schema version 7"]
    assert batch.next_offsets == {("c", 0): 2, ("c", 1): 2, ("f", 0): 2}
    # the dead letter's excerpt is scrubbed like everything else
    assert "maria@example.com" not in batch.dead_letters[0]["excerpt"]
    assert "<EMAIL_ADDRESS>" in batch.dead_letters[0]["excerpt"]


def test_an_analyzer_that_raises_quarantines_only_the_affected_event(scrub_pool, monkeypatch):
    recs, (c1, c2, f1) = records()
    real = scrub_pool._local.analyzer.analyze
    poison = c2.messages[-1].content

    def analyze(text, *args, **kwargs):
        if text == poison:
            raise RuntimeError("analyzer exploded")
        return real(text, *args, **kwargs)

    monkeypatch.setattr(scrub_pool._local.analyzer, "analyze", analyze)
    batch = prepare(recs, KINDS, scrub_pool.scrub, SCRUBBER_VERSION)
    assert [r["event_id"] for r in batch.chats] == [str(c1.event_id)]
    [q] = batch.quarantine
    assert q["event_id"] == str(c2.event_id) and "analyzer exploded" in q["reason"]
    assert set(q) == {"topic", "partition", "offset", "event_id", "reason", "length", "sha256"}  # no text


def test_write_is_idempotent_and_stores_offsets_in_the_same_transaction(db, scrub_pool):
    recs, (c1, c2, f1) = records()
    batch = prepare(recs, KINDS, scrub_pool.scrub, SCRUBBER_VERSION)
    first = sink.write(db, "g", "cluster-1", batch)
    assert (first.chats, first.feedback, first.dead_letters, first.duplicates) == (2, 1, 2, 1)
    findings = db.execute("SELECT count(*) FROM pii_findings").fetchone()[0]
    assert findings == first.findings > 0
    again = sink.write(db, "g", "cluster-1", batch)  # a replay after a crash between commit and ack
    assert (again.chats, again.feedback, again.dead_letters, again.findings) == (0, 0, 0, 0)
    assert db.execute("SELECT count(*) FROM pii_findings").fetchone()[0] == findings
    assert db.execute("SELECT count(*), count(DISTINCT event_id) FROM chats").fetchone() == (2, 2)
    assert sink.stored_offsets(db, "g") == {("c", 0): (2, "cluster-1"), ("c", 1): (2, "cluster-1"),
                                            ("f", 0): (2, "cluster-1")}


def test_a_failed_write_leaves_neither_rows_nor_offsets(db, scrub_pool, monkeypatch):
    recs, _ = records()
    batch = prepare(recs, KINDS, scrub_pool.scrub, SCRUBBER_VERSION)
    real = sink._insert

    def failing(con, table, *args, **kwargs):
        if table == "dead_letters":
            raise OSError("disk full")
        return real(con, table, *args, **kwargs)

    monkeypatch.setattr(sink, "_insert", failing)
    with pytest.raises(OSError):
        sink.write(db, "g", None, batch)
    for table in ("chats", "feedback", "pii_findings", "kafka_offsets"):
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
