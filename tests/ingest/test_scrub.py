"""The real Presidio + spaCy scrubber on crafted texts."""

import pytest

from ingest.config import DenyPattern, PiiConfig
from ingest.scrub import ScrubFailed
from ingest.scrub_pool import ScrubPool

TEXT = (
    "Hi, I'm Maria Garcia, email maria.garcia@example.com, phone +1 415 555 0123. "
    "Card 4111 1111 1111 1111, SSN 536-22-8741, IBAN DE89370400440532013000, IP 192.168.10.77, "
    "ship to 221 Baker Street, Springfield."
)
VALUES = {
    "PERSON": "Maria Garcia",
    "EMAIL_ADDRESS": "maria.garcia@example.com",
    "PHONE_NUMBER": "+1 415 555 0123",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "US_SSN": "536-22-8741",
    "IBAN_CODE": "DE89370400440532013000",
    "IP_ADDRESS": "192.168.10.77",
    "STREET_ADDRESS": "221 Baker Street",
}


def test_every_entity_is_replaced_by_its_placeholder(scrub_pool):
    [result] = scrub_pool.scrub([TEXT])
    for entity, value in VALUES.items():
        assert value not in result.text, entity
        assert f"<{entity}>" in result.text, (entity, result.text)
    found: dict[str, set] = {}
    for f in result.findings:
        found.setdefault(f.entity_type, set()).add(TEXT[f.start : f.end])
    for entity, value in VALUES.items():
        assert any(value in span or span in value for span in found[entity]), (entity, found)
    assert all(0 < f.score <= 1 for f in result.findings)


def test_clean_text_is_untouched(scrub_pool):
    text = "How long does shipping take for order #123456? Returns are free within 30 days."
    [result] = scrub_pool.scrub([text])
    assert result.text == text and result.findings == ()


def test_allow_list_and_deny_patterns():
    cfg = PiiConfig(
        workers=0,
        allow_list=["Maria Garcia"],
        deny_patterns=[DenyPattern(entity="ORDER_ID", regex=r"#\d{6}", score=0.9)],
    )
    pool = ScrubPool(cfg)
    [result] = pool.scrub(["Maria Garcia asked about order #123456."])
    assert result.text == "Maria Garcia asked about order <ORDER_ID>."


def test_worker_processes_give_the_same_result_as_in_process(scrub_pool):
    texts = [TEXT, "nothing here", "Call John Smith at 212-555-0199.", ""] * 5
    pool = ScrubPool(PiiConfig(workers=1))
    try:
        assert pool.scrub(texts) == scrub_pool.scrub(texts)
    finally:
        pool.close()


EVIL = DenyPattern(entity="EVIL", regex=r"(a|a)+$")  # catastrophic backtracking, even for `regex`


def test_a_regex_timeout_fails_closed_instead_of_skipping_the_pattern():
    pool = ScrubPool(PiiConfig(workers=0, regex_timeout_s=0.2, deny_patterns=[EVIL]))
    with pytest.raises(ScrubFailed, match="timed out"):
        pool.scrub(["a" * 40 + "!"])
    assert pool.scrub(["Call John Smith."])[0].text == "Call <PERSON>."


@pytest.mark.slow
def test_a_hung_worker_fails_closed_within_its_budget_and_the_pool_recovers():
    pool = ScrubPool(PiiConfig(workers=1, regex_timeout_s=600, time_budget_ms_per_text=1, deny_patterns=[EVIL]))
    try:
        with pytest.raises(ScrubFailed, match="time budget"):
            pool.scrub(["a" * 40 + "!"])
        assert pool.scrub(["Call John Smith."])[0].text == "Call <PERSON>."
    finally:
        pool.close()


def test_an_analyzer_that_raises_is_scrub_failed(scrub_pool, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("analyzer exploded")

    monkeypatch.setattr(scrub_pool._local.analyzer, "analyze", boom)
    with pytest.raises(ScrubFailed, match="analyzer exploded"):
        scrub_pool.scrub(["Maria Garcia"])


def test_two_workers_split_by_cost_and_answer_in_order(scrub_pool):
    """Chunks are balanced by scrubbing cost (one long text does not keep a worker busy while the other
    idles); each result still belongs to its text."""
    texts = [f"Mail maria{i}@example.com please" for i in range(9)] + ["The parcel never came. " * 100]
    texts.insert(3, "Call 555-201-7788 about order 4")
    pool = ScrubPool(PiiConfig(workers=2))
    try:
        pooled = pool.scrub(texts)
    finally:
        pool.close()
    assert [s.text for s in pooled] == [s.text for s in scrub_pool.scrub(texts)]
    assert "<EMAIL_ADDRESS>" in pooled[0].text and "<PHONE_NUMBER>" in pooled[3].text
