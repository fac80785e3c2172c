"""PII scrubbing: Presidio analyzer + anonymizer on spaCy NER, with recognizers for chat text, tuned for speed.

What it finds beyond Presidio's predefined recognizers (bench/pii_quality.py): names in any case (the NER
reads a truecased view of one-case text, and a gazetteer finds names by itself: ingest/names.py); phones,
addresses and postcodes of other countries, spelled-out emails, Luhn-valid card numbers of any length, and
dates of birth and passport numbers after their cue (ingest/recognizers.py). What it lets through: commerce
brands and `allow_words`, which the NER takes for names.

What makes it fast:
- spaCy runs only its `ner` component (it has its own tok2vec in the small English model; the shared
  tok2vec, tagger, parser and lemmatizer feed nothing that the recognizers need), batched with `nlp.pipe`;
- NLP artifacts are built from token attributes (is_stop, is_punct) instead of Presidio's per-token
  vocabulary lookups, which took a quarter of the time;
- recognizers for number-shaped entities (phones, cards, SSNs, ...) are skipped on texts with too few
  digits; phonenumbers' matcher (Presidio's PhoneRecognizer) is replaced: alone it cost more than the NER;
- batches are split across worker processes (`ingest.scrub_pool.ScrubPool`) so both cores scrub.

Findings keep entity type, offsets in the original text and score, never the value.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from functools import lru_cache

from ingest.config import PiiConfig
from ingest.imports import without_torch
from ingest.names import COMMERCE_WORDS, WORD, only_allowed, truecase
from ingest.recognizers import recognizers

log = logging.getLogger(__name__)
SCRUBBER_VERSION = "presidio-2.2/spacy-ner/2+names+intl"

# Fewest digits a text needs before a recognizer of this entity can match anything.
MIN_DIGITS = {
    "PHONE_NUMBER": 7,
    "CREDIT_CARD": 12,
    "US_SSN": 9,
    "IBAN_CODE": 8,
    "IP_ADDRESS": 4,
    "US_BANK_NUMBER": 8,
    "US_PASSPORT": 6,
    "US_ITIN": 9,
    "US_DRIVER_LICENSE": 4,
    "MEDICAL_LICENSE": 4,
    "UK_NHS": 10,
    "STREET_ADDRESS": 1,
    "DATE_OF_BIRTH": 4,
    "PASSPORT": 5,
}
# Validated, narrow types win over broad ones when two findings cover the same span.
SPECIFICITY = {
    "CREDIT_CARD": 5,
    "IBAN_CODE": 5,
    "EMAIL_ADDRESS": 5,
    "US_SSN": 4,
    "IP_ADDRESS": 4,
    "DATE_OF_BIRTH": 4,
    "PASSPORT": 4,
    "STREET_ADDRESS": 3,
    "PHONE_NUMBER": 2,
    "PERSON": 2,
    "URL": 1,
}
# Predefined recognizers that ours replace: libphonenumber's matcher finds only numbers valid in the regions
# it is given (US, DE, IL, IN, CA, BR: "UK" and "FE" are not region codes) and cost more than the NER.
REPLACED = {"PhoneRecognizer"}


@dataclass(frozen=True, order=True)
class Finding:
    start: int
    end: int
    entity_type: str
    score: float


@dataclass(frozen=True)
class Scrubbed:
    text: str
    findings: tuple[Finding, ...]


def offline_tldextract() -> None:
    """Presidio's email recognizer calls tldextract, which downloads the public suffix list on first use.

    Point it at the snapshot bundled in the package: no network at run time.
    """
    import tldextract

    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


class _DigitGate:
    """Wraps a recognizer: texts with fewer digits than its entity needs are not analysed at all."""

    def __init__(self, inner, min_digits: int):
        self.__dict__.update(inner.__dict__)  # Presidio reads name, id, entities ~20 times per text: no __getattr__
        self.inner, self.min_digits = inner, min_digits

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def analyze(self, text, entities, nlp_artifacts=None):
        if digits(text) < self.min_digits:
            return []
        return self.inner.analyze(text, entities, nlp_artifacts)


_NOT_DIGITS = re.compile(r"\D+")


@lru_cache(maxsize=64)  # a dozen gated recognizers ask about the same text in a row
def digits(text: str) -> int:
    return len(_NOT_DIGITS.sub("", text))


class _RegexTimeoutAlarm(logging.Handler):
    """Presidio catches a regex timeout, logs a warning and returns no match: that would store the text
    unscrubbed. This handler notices the warning so that the scrubber fails closed instead."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.fired = False
        self.watching: int | None = None  # the thread this scrubber analyzes on, while it does

    def emit(self, record: logging.LogRecord) -> None:
        # The logger is global: only a timeout of this scrubber's own analysis counts (two scrubbers in one
        # process, as in the tests, set off each other's alarm and failed a later, innocent text).
        if "timed out" in record.getMessage() and record.thread == self.watching:
            self.fired = True


def _build_analyzer(cfg: PiiConfig):
    import spacy
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry, pattern_recognizer
    from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine

    offline_tldextract()
    pattern_recognizer.REGEX_TIMEOUT_SECONDS = cfg.regex_timeout_s  # read at each match; default 60 s
    nlp = spacy.load(cfg.spacy_model, exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"])
    ner_config = NerModelConfiguration()
    unmapped = set(nlp.get_pipe("ner").labels) - set(ner_config.model_to_presidio_entity_mapping)
    ner_config = NerModelConfiguration(labels_to_ignore=sorted(unmapped | set(ner_config.labels_to_ignore)))

    class NerOnlyEngine(SpacyNlpEngine):
        def _doc_to_nlp_artifact(self, doc, language):
            entities, scores = self._get_updated_entities(self._get_entities(doc), self._get_scores_for_entities(doc))
            toks = [(t.idx, t.lower_, t.is_stop or t.is_punct) for t in doc]  # one pass over the tokens
            artifacts = NlpArtifacts(
                entities=entities,
                tokens=doc,
                tokens_indices=[i for i, _, _ in toks],
                lemmas=[w for _, w, _ in toks],
                nlp_engine=None,
                language=language,
                scores=scores,
            )
            artifacts.keywords = [w for _, w, skip in toks if not skip]
            artifacts.nlp_engine = self
            return artifacts

    engine = NerOnlyEngine(
        models=[{"lang_code": "en", "model_name": cfg.spacy_model}], ner_model_configuration=ner_config
    )
    engine.nlp = {"en": nlp}
    registry = RecognizerRegistry(supported_languages=["en"])
    presidio_log = logging.getLogger("presidio-analyzer")
    level, _ = presidio_log.level, presidio_log.setLevel(logging.ERROR)  # one warning per foreign recognizer
    try:
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    finally:
        presidio_log.setLevel(level)
    for rec in recognizers(cfg.regex_timeout_s):
        registry.add_recognizer(rec)
    for deny in cfg.deny_patterns:
        registry.add_recognizer(
            PatternRecognizer(supported_entity=deny.entity, patterns=[Pattern(deny.entity, deny.regex, deny.score)])
        )
    wanted = set(cfg.entities) | {d.entity for d in cfg.deny_patterns}
    kept = []
    for rec in registry.recognizers:
        served = set(rec.supported_entities) & wanted
        if not served or rec.name in REPLACED:
            continue
        gate = min((MIN_DIGITS.get(e, 0) for e in served), default=0)
        kept.append(_DigitGate(rec, gate) if gate else rec)
    registry.recognizers = kept
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])
    return nlp, engine, analyzer, sorted(wanted)


def drop_digit_names(results: list, text: str) -> list:
    """A PERSON finding with digits in it that overlaps a finding of another type is the NER swallowing a
    value beside a name ("passport J11578156"): the other finding is the one that is right."""
    others = [r for r in results if r.entity_type != "PERSON"]
    return [
        r
        for r in results
        if not (
            r.entity_type == "PERSON"
            and any(c.isdigit() for c in text[r.start : r.end])
            and any(o.start < r.end and r.start < o.end for o in others)
        )
    ]


def drop_contained(results: list) -> list:
    """Findings inside a larger (or equal, more specific) finding add nothing but noise: a URL inside an
    email, a PERSON inside a street name, a PHONE_NUMBER that is an SSN. The larger one is kept."""
    ranked = sorted(results, key=lambda r: (-(r.end - r.start), -SPECIFICITY.get(r.entity_type, 0), -r.score))
    kept: list = []
    for r in ranked:
        if not any(k.start <= r.start and r.end <= k.end for k in kept):
            kept.append(r)
    return kept


class ScrubFailed(Exception):
    """Scrubbing raised or ran past its time budget: the texts must not be stored."""


class Scrubber:
    """Scrubs lists of texts in this process."""

    def __init__(self, cfg: PiiConfig):
        self.cfg = cfg
        with without_torch():
            from presidio_analyzer import pattern_recognizer
            from presidio_anonymizer import AnonymizerEngine

            self._patterns_module = pattern_recognizer

            self.nlp, self.engine, self.analyzer, self.entities = _build_analyzer(cfg)
            self.anonymizer = AnonymizerEngine()  # default operator: replace with <ENTITY_TYPE>
        truecase("warm up")  # loads the gazetteer and wordfreq (~2 s) now, not inside the first batch's budget
        self.allowed_phrases = {a.lower() for a in cfg.allow_list}
        self.allowed_words = COMMERCE_WORDS | {  # "Gore-Tex" allows "Gore" too: the NER splits at hyphens
            w.lower() for a in cfg.allow_words for word in WORD.findall(a) for w in (word, *re.split(r"['’-]", word))
        }
        self.alarm = _RegexTimeoutAlarm()
        logging.getLogger("presidio-analyzer").addHandler(self.alarm)

    def scrub(self, texts: list[str]) -> list[Scrubbed]:
        # Presidio reads its regex timeout from one module-wide variable: this scrubber's, while it scrubs
        # (another scrubber in the process, as in the tests, may have set its own).
        self._patterns_module.REGEX_TIMEOUT_SECONDS = self.cfg.regex_timeout_s
        out = []
        docs = self.nlp.pipe(map(truecase, texts), batch_size=256)  # same offsets, names capitalised
        for text, doc in zip(texts, docs):
            if not text:
                out.append(Scrubbed(text, ()))
                continue
            self.alarm.watching = threading.get_ident()
            try:
                results = self.analyzer.analyze(
                    text,
                    language="en",
                    entities=self.entities,
                    score_threshold=self.cfg.score_threshold,
                    nlp_artifacts=self.engine._doc_to_nlp_artifact(doc, "en"),
                )
            finally:
                self.alarm.watching = None
            if self.alarm.fired:
                self.alarm.fired = False
                raise ScrubFailed(f"a recognizer's regex timed out after {self.cfg.regex_timeout_s:g} s")
            results = [r for r in results if not self._allowed(text[r.start : r.end], r.entity_type)]
            results = drop_contained(drop_digit_names(results, text))
            scrubbed = self.anonymizer.anonymize(text=text, analyzer_results=results).text if results else text
            findings = tuple(sorted(Finding(r.start, r.end, r.entity_type, round(float(r.score), 4)) for r in results))
            out.append(Scrubbed(scrubbed, findings))
        return out

    def _allowed(self, span: str, entity: str) -> bool:
        """Configured as not PII, or a name without a letter (the NER has called "03/04/2024" a PERSON)."""
        if span.lower() in self.allowed_phrases:
            return True
        return entity == "PERSON" and (only_allowed(span, self.allowed_words) or not any(c.isalpha() for c in span))
