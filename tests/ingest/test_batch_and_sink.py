"""prepare() with the real scrubber, then the DuckDB sink, on crafted records."""

import random
import uuid

import pytest

from ingest import sink
from ingest.batch import Record, prepare
from ingest.contracts import Message
from ingest.scrub import SCRUBBER_VERSION
from ingest.synthetic import chat, feedback
from tests.helpers.api import make_app

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
    assert sink.stored_offsets(db, "g") == {
        ("c", 0): (2, "cluster-1"),
        ("c", 1): (2, "cluster-1"),
        ("f", 0): (2, "cluster-1"),
    }


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


def _toggled_ratings(tmp_path) -> list[bytes]:
    """Up, down, up on one answer, sent through the real feedback route: the outbox's three feedback values."""
    import time

    from fastapi.testclient import TestClient

    from serving import ids
    from serving.config import ServingConfig
    from serving.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox.sqlite")
    app = make_app(ServingConfig(api_keys={"app": ids.hash_key("k")}), outbox=outbox)
    rid = ids.issue(b"s" * 32, ids.ResponseClaims("app", "u1", "base", None, time.time()))
    client = TestClient(app, base_url="http://127.0.0.1")
    for rating in ("up", "down", "up"):
        r = client.post(
            "/v1/feedback", headers={"Authorization": "Bearer k"}, json={"response_id": rid, "rating": rating}
        )
        assert r.status_code == 202
        time.sleep(0.01)  # three clicks, three distinct times
    values = [v for _, topic, _, v in outbox.oldest_unsent(10) if topic == "f"]
    outbox.close()
    return values


@pytest.mark.parametrize("batches", ["one batch", "three batches", "three batches, then the first re-sent"])
def test_a_toggled_rating_keeps_the_latest(db, scrub_pool, tmp_path, batches):
    """up, down, up again: the third repeats the first's id (it says the same); the latest must win."""
    values = _toggled_ratings(tmp_path)
    assert len(values) == 3
    recs = [Record("f", 0, i, v) for i, v in enumerate(values)]
    groups = [recs] if batches == "one batch" else [[r] for r in recs]
    if batches.endswith("re-sent"):
        groups.append([Record("f", 0, 3, values[0])])  # a broker that lost its log gets the outbox again
    for group in groups:
        sink.write(db, "g", "cluster-1", prepare(group, KINDS, scrub_pool.scrub, SCRUBBER_VERSION))
    assert db.execute("SELECT rating FROM latest_feedback").fetchall() == [(1,)]
    assert db.execute("SELECT count(*) FROM feedback").fetchone()[0] == 2  # still idempotent on event_id


def test_a_dead_letters_excerpt_is_cut_after_scrubbing(scrub_pool):
    """Values that straddle the excerpt's 200th character: cut first, they were not recognised and stayed."""
    from ingest.batch import EXCERPT_CHARS, EXCERPT_SCRUB_MAX

    values = {"maria.gonzalez@example.com": "EMAIL", "4111 1111 1111 1111": "card", "536-22-8741": "SSN"}
    recs = []
    kept = {value: value[: 2 * len(value) // 3] for value in values}  # what a cut at 200 bytes keeps
    for i, value in enumerate(values):
        head = b'{"broken": "' + b"x" * (EXCERPT_CHARS - 13 - len(kept[value])) + b" "
        recs.append(Record("c", 0, i, head + value.encode() + b' and more"'))
    recs.append(Record("c", 0, 3, b"{" + b"y" * EXCERPT_SCRUB_MAX + b" maria.gonzalez@example.com"))
    batch = prepare(recs, KINDS, scrub_pool.scrub, SCRUBBER_VERSION)
    excerpts = [d["excerpt"] for d in batch.dead_letters]
    for value, excerpt in zip(values, excerpts):
        assert excerpt and len(excerpt) <= EXCERPT_CHARS and kept[value] not in excerpt, (value, excerpt)
    assert excerpts[3] is None and batch.dead_letters[3]["length"] > EXCERPT_SCRUB_MAX  # too long: no excerpt


def test_a_text_too_costly_to_scrub_is_quarantined_alone_without_scrubbing(scrub_pool):
    """16,000 phone-shaped characters took 3.7 s of Presidio (prose: 0.33 s): every tenant's ingest stalled."""
    from ingest.contracts import MAX_TEXT_COST, scrub_cost

    recs, (c1, c2, f1) = records()
    costly = f1.model_copy(update={"event_id": uuid.uuid4(), "comment": "call 555-123-4567 " * 700})
    assert scrub_cost(costly.comment) > MAX_TEXT_COST
    scrubbed = []
    batch = prepare(
        recs + [Record("f", 0, 9, costly.model_dump_json().encode())],
        KINDS,
        lambda texts: scrubbed.extend(texts) or scrub_pool.scrub(texts),
        SCRUBBER_VERSION,
    )
    [q] = batch.quarantine
    assert q["event_id"] == str(costly.event_id) and f"at most {MAX_TEXT_COST}" in q["reason"]
    assert costly.comment not in scrubbed  # refused before Presidio ran on it
    assert [r["event_id"] for r in batch.feedback] == [str(f1.event_id)]  # the rest of the batch is stored
