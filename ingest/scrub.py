"""PII scrubbing: Presidio analyzer + anonymizer on spaCy NER, tuned for throughput.

What makes it fast without changing what Presidio finds:
- spaCy runs only its `ner` component (it has its own tok2vec in the small English model; the shared
  tok2vec, tagger, parser and lemmatizer feed nothing that the recognizers need), batched with `nlp.pipe`;
- NLP artifacts are built from token attributes (is_stop, is_punct) instead of Presidio's per-token
  vocabulary lookups, which took a quarter of the time;
- recognizers for number-shaped entities (phones, cards, SSNs, ...) are skipped on texts with too few
  digits; phonenumbers' matcher alone cost more than the NER;
- batches are split across worker processes (`ScrubPool`) so both cores scrub.

Findings keep entity type, offsets in the original text and score, never the value.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from dataclasses import dataclass

from ingest.config import PiiConfig

log = logging.getLogger(__name__)
SCRUBBER_VERSION = "presidio-2.2/spacy-ner/1"

# Fewest digits a text needs before a recognizer of this entity can match anything.
MIN_DIGITS = {
    "PHONE_NUMBER": 7, "CREDIT_CARD": 12, "US_SSN": 9, "IBAN_CODE": 8, "IP_ADDRESS": 4, "US_BANK_NUMBER": 8,
    "US_PASSPORT": 6, "US_ITIN": 9, "US_DRIVER_LICENSE": 4, "MEDICAL_LICENSE": 4, "UK_NHS": 10,
    "STREET_ADDRESS": 1,
}
STREET_ADDRESS_REGEX = (
    r"\b\d{1,6}[A-Za-z]?\s+(?:[A-Z][A-Za-z]+\.?\s+){1,4}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    r"Parkway|Pkwy|Square|Sq|Highway|Hwy|Circle|Cir|Trail|Trl)\b\.?"
    r"(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[A-Za-z0-9-]+)?"
    r"(?:,\s*[A-Z][A-Za-z]+(?:\s[A-Z][A-Za-z]+)*(?:,\s*[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?)?"
)


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
        self.inner, self.min_digits = inner, min_digits

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def analyze(self, text, entities, nlp_artifacts=None):
        if sum(c.isdigit() for c in text) < self.min_digits:
            return []
        return self.inner.analyze(text, entities, nlp_artifacts)


def _build_analyzer(cfg: PiiConfig):
    import spacy
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine

    offline_tldextract()
    nlp = spacy.load(cfg.spacy_model, exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"])

    class NerOnlyEngine(SpacyNlpEngine):
        def _doc_to_nlp_artifact(self, doc, language):
            entities, scores = self._get_updated_entities(
                self._get_entities(doc), self._get_scores_for_entities(doc)
            )
            artifacts = NlpArtifacts(
                entities=entities, tokens=doc, tokens_indices=[t.idx for t in doc],
                lemmas=[t.lower_ for t in doc], nlp_engine=None, language=language, scores=scores,
            )
            artifacts.keywords = [t.lower_ for t in doc if not (t.is_stop or t.is_punct)]
            artifacts.nlp_engine = self
            return artifacts

    engine = NerOnlyEngine(models=[{"lang_code": "en", "model_name": cfg.spacy_model}])
    engine.nlp = {"en": nlp}
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    registry.add_recognizer(
        PatternRecognizer(
            supported_entity="STREET_ADDRESS",
            patterns=[Pattern("street address", STREET_ADDRESS_REGEX, 0.7)],
            context=["address", "live", "ship", "deliver", "street"],
        )
    )
    for deny in cfg.deny_patterns:
        registry.add_recognizer(
            PatternRecognizer(supported_entity=deny.entity, patterns=[Pattern(deny.entity, deny.regex, deny.score)])
        )
    wanted = set(cfg.entities) | {d.entity for d in cfg.deny_patterns}
    kept = []
    for rec in registry.recognizers:
        served = set(rec.supported_entities) & wanted
        if not served:
            continue
        gate = min((MIN_DIGITS.get(e, 0) for e in served), default=0)
        kept.append(_DigitGate(rec, gate) if gate else rec)
    registry.recognizers = kept
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])
    return nlp, engine, analyzer, sorted(wanted)


class Scrubber:
    """Scrubs lists of texts in this process."""

    def __init__(self, cfg: PiiConfig):
        self.cfg = cfg
        from presidio_anonymizer import AnonymizerEngine

        self.nlp, self.engine, self.analyzer, self.entities = _build_analyzer(cfg)
        self.anonymizer = AnonymizerEngine()  # default operator: replace with <ENTITY_TYPE>

    def scrub(self, texts: list[str]) -> list[Scrubbed]:
        out = []
        docs = self.nlp.pipe(texts, batch_size=256)
        for text, doc in zip(texts, docs):
            if not text:
                out.append(Scrubbed(text, ()))
                continue
            results = self.analyzer.analyze(
                text, language="en", entities=self.entities, score_threshold=self.cfg.score_threshold,
                allow_list=self.cfg.allow_list or None, nlp_artifacts=self.engine._doc_to_nlp_artifact(doc, "en"),
            )
            scrubbed = self.anonymizer.anonymize(text=text, analyzer_results=results).text if results else text
            findings = tuple(sorted(Finding(r.start, r.end, r.entity_type, round(float(r.score), 4)) for r in results))
            out.append(Scrubbed(scrubbed, findings))
        return out


class ScrubFailed(Exception):
    """Scrubbing raised or ran past its time budget: the texts must not be stored."""


_worker: Scrubber | None = None


def _init_worker(cfg_json: str) -> None:
    global _worker
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _worker = Scrubber(PiiConfig.model_validate_json(cfg_json))


def _scrub_in_worker(texts: list[str]) -> list[Scrubbed]:
    return _worker.scrub(texts)


class ScrubPool:
    """Scrubs across `cfg.workers` processes (or in-process when 0), with a time budget per call.

    A call that raises or runs past the budget raises ScrubFailed; a worker stuck past the budget is
    killed and the pool rebuilt, so one pathological text cannot stall ingest.
    """

    def __init__(self, cfg: PiiConfig):
        self.cfg = cfg
        self._local = Scrubber(cfg) if cfg.workers == 0 else None
        self._pool = None if self._local else self._start()

    def _start(self):
        ctx = multiprocessing.get_context("spawn")  # no fork: the parent runs Kafka client threads
        pool = ctx.Pool(self.cfg.workers, initializer=_init_worker, initargs=(self.cfg.model_dump_json(),))
        pool.apply(os.getpid)  # wait until a worker is up, so start-up cost is paid here
        return pool

    def scrub(self, texts: list[str]) -> list[Scrubbed]:
        if not texts:
            return []
        if self._local is not None:
            try:
                return self._local.scrub(texts)
            except Exception as e:
                raise ScrubFailed(f"{type(e).__name__}: {e}"[:200]) from e
        n = self.cfg.workers
        size = -(-len(texts) // n)
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        pending = [self._pool.apply_async(_scrub_in_worker, (chunk,)) for chunk in chunks]
        budget = max(5.0, size * self.cfg.time_budget_ms_per_text / 1000)
        deadline = time.monotonic() + budget
        try:
            return [s for p in pending for s in p.get(timeout=max(deadline - time.monotonic(), 0.01))]
        except multiprocessing.TimeoutError:
            log.error("scrubbing %d texts ran past its %.1f s budget; restarting the scrub workers", len(texts), budget)
            self._pool.terminate()
            self._pool = self._start()
            raise ScrubFailed(f"time budget of {budget:.1f} s exceeded") from None
        except Exception as e:
            raise ScrubFailed(f"{type(e).__name__}: {e}"[:200]) from e

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
