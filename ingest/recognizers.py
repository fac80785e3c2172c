"""Flywheel's own Presidio recognizers: what the predefined ones miss on chat text (bench/pii_quality.py).

- `NameRecognizer`: names from the gazetteer in any case (ingest/names.py);
- `SpelledEmailRecognizer`: "jose dot 12 at gmail dot com", "kim (at) web dot de";
- `AddressRecognizer`: street lines of the US, UK, Australia, Germany and France, UK postcodes, the tail
  of an address up to its postcode, military addresses; in any case;
- `InternationalPhoneRecognizer`: phone shapes of any country (8 to 15 digits in groups, a leading + or 0
  or brackets), which libphonenumber's matcher misses when the region is not one it was given;
- `CardNumberRecognizer`: 12 to 19 digits that pass the Luhn check (Maestro, Diners, JCB, 19-digit Visa);
- `ContextValueRecognizer`: a value that is PII only after its cue: a date after "born"/"DOB", a passport
  number after "passport".

Every pattern runs with a timeout (`regex`): a pathological text raises, and the scrubber fails it closed.
"""

from __future__ import annotations

import regex

from ingest.imports import without_torch

with without_torch():
    from presidio_analyzer import AnalysisExplanation, EntityRecognizer, RecognizerResult

from ingest import names
from ingest.names import WORD

TIMEOUT_S = 2.0


class _Recognizer(EntityRecognizer):
    entity = ""

    def __init__(self, timeout_s: float = TIMEOUT_S):
        self.timeout_s = timeout_s  # cues are matched by each recognizer itself: Presidio's context words skip
        # stop words, and spaCy counts "call" and "name" among them
        super().__init__(supported_entities=[self.entity], name=type(self).__name__, supported_language="en")

    def load(self) -> None:
        pass

    def result(self, start: int, end: int, score: float) -> RecognizerResult:
        why = AnalysisExplanation(recognizer=self.name, original_score=score)  # the context enhancer writes here
        return RecognizerResult(self.entity, start, end, score, analysis_explanation=why)

    def finditer(self, pattern: regex.Pattern, text: str):
        return pattern.finditer(text, timeout=self.timeout_s)


class NameRecognizer(_Recognizer):
    entity = "PERSON"

    def analyze(self, text, entities, nlp_artifacts=None):
        return [self.result(s, e, score) for s, e, score in names.name_spans(text)]


TLD = (
    r"(?:com|net|org|edu|gov|info|biz|io|co|me|uk|de|fr|es|it|nl|be|at|ch|se|no|dk|fi|pl|pt|ie|au|nz|ca|us|in"
    r"|br|mx|jp|cn)"
)
DOT = r"(?:\s*[(\[{]\s*dot\s*[)\]}]\s*|\s+dot\s+|\.)"
AT = r"(?:\s*[(\[{]\s*at\s*[)\]}]\s*|\s+at\s+|\s*@\s*)"
PART = r"[^\W_](?:[\w%+-]*[^\W_])?"
SPELLED_EMAIL = regex.compile(
    rf"(?<![\w.@])(?:[^\W\d_]\s+)?{PART}(?:{DOT}{PART}){{0,3}}{AT}{PART}(?:{DOT}{PART}){{0,2}}?{DOT}{TLD}(?:{DOT}{TLD})?\b",
    regex.IGNORECASE,
)


class SpelledEmailRecognizer(_Recognizer):
    entity = "EMAIL_ADDRESS"
    cue = regex.compile(r"\bdot\b|[(\[{]\s*at\s*[)\]}]|\s@\s", regex.IGNORECASE)

    def analyze(self, text, entities, nlp_artifacts=None):
        if not self.cue.search(text, timeout=self.timeout_s):
            return []
        return [self.result(*m.span(), 0.85) for m in self.finditer(SPELLED_EMAIL, text)]


def _street_suffixes() -> list[str]:
    import importlib

    words: set[str] = set()
    for loc in ("en_US", "en_GB", "en_AU", "en_CA", "en_NZ", "en_IE"):
        provider = importlib.import_module(f"faker.providers.address.{loc}").Provider
        words.update(s.lower() for s in getattr(provider, "street_suffixes", ()))
    words |= {"st", "ave", "rd", "blvd", "ln", "dr", "ct", "pl", "sq", "hwy", "pkwy", "cir", "trl", "cres", "tce"}
    return sorted(words)


UK_POSTCODE = r"\b[a-z]{1,2}\d[a-z\d]?\s?\d[a-z]{2}\b"
US_STATE_ZIP = r"\b[a-z]{2},?\s+\d{5}(?:-\d{4})?\b"
AU_STATE_POST = r"\b(?:nsw|vic|qld|wa|sa|tas|act|nt),?\s+\d{4}\b"
EU_POST_CITY = r"\b\d{5}\s+[^\W\d_][\w'’-]*(?:[ -][^\W\d_][\w'’-]*){0,2}"
POSTAL = rf"(?:{UK_POSTCODE}|{US_STATE_ZIP}|{AU_STATE_POST}|{EU_POST_CITY})"
UNIT_WORD = r"(?:flat|apt\.?|apartment|unit|suite|ste\.?|studio|level|room|floor)"
UNIT = rf"(?:{UNIT_WORD}\s*[\w/-]{{1,6}},?\s+)"
UNIT_AFTER = rf"(?:,?\s+{UNIT_WORD}\s*[\w-]+)"
NAME_WORD = r"[^\W\d_][\w'’.-]*"
# Up to three short comma-separated parts (a town, a state) before a postcode.
TAIL = rf"(?:(?:,?\s+{NAME_WORD}(?:\s{NAME_WORD}){{0,3}}){{0,3}}?,?\s+{POSTAL}|,?\s+{POSTAL})?"
# Without a postcode, a town in Title Case after the street ("221 Baker Street, Springfield"); case-sensitive.
TOWN = r"(?:,\s*(?-i:[A-Z][\w'’-]+(?:\s[A-Z][\w'’-]+){0,2})(?:,\s*(?-i:[A-Z]{2}))?)"
STREET = (
    rf"{UNIT}?\d{{1,5}}[a-z]?(?:[-/]\d{{1,5}}[a-z]?)?,?\s+(?:{NAME_WORD}\s+){{0,3}}?\L<suffix>\b\.?"
    rf"{UNIT_AFTER}?{TAIL}{TOWN}?"
)
DE_SUFFIX = r"(?:straße|strasse|str\.|weg|gasse|allee|platz|ring|damm|ufer|chaussee|steig|pfad|markt|hof|graben)"
DE_STREET = rf"[^\W\d_][\w'’-]*{DE_SUFFIX}\s+\d{{1,4}}[a-z]?(?:\s?[-/]\s?\d{{1,4}}[a-z]?)?(?:,?\s+{EU_POST_CITY})?"
FR_WORDS = (
    "rue",
    "avenue",
    "boulevard",
    "bd",
    "chemin",
    "impasse",
    "place",
    "allée",
    "allee",
    "quai",
    "route",
    "cours",
    "passage",
    "square",
    "voie",
)
FR_STREET = (
    r"(?:\d{1,4}(?:\s?(?:bis|ter))?,?\s+)?\L<fr>\s+[^,.;!?\n\d]{2,40}"
    rf"(?:,\s*{EU_POST_CITY})?"
)
# A UK postcode with what precedes it on the line: a named street, a flat, a town.
UK_ADDRESS = (
    rf"(?:{UNIT}?(?:{NAME_WORD}\s+){{1,3}}?\L<suffix>\b\.?{UNIT_AFTER}?|{UNIT})?"
    rf"(?:,?\s*{NAME_WORD}(?:\s{NAME_WORD}){{0,3}}){{0,2}}?,?\s*{UK_POSTCODE}"
)
MILITARY = r"\b(?:psc|unit|usns|uss|usnv|usv|uscgc)\s+\d+,?\s+box\s+\d+,?\s+(?:apo|fpo|dpo)\s+a[aep]\s+\d{5}\b"


class AddressRecognizer(_Recognizer):
    """Each pattern runs only on texts that hold its anchor (a street word, a postcode), found by a set
    lookup or a short regex: most chat texts hold none, and the full patterns are the slow part."""

    entity = "STREET_ADDRESS"

    def __init__(self, timeout_s: float = TIMEOUT_S):
        super().__init__(timeout_s)
        flags = regex.IGNORECASE
        self.suffixes = frozenset(_street_suffixes())
        self.street = regex.compile(STREET, flags, suffix=sorted(self.suffixes))
        self.de_anchor = regex.compile(rf"{DE_SUFFIX}\s+\d", flags)
        self.de = regex.compile(DE_STREET, flags)
        self.fr = regex.compile(FR_STREET, flags, fr=FR_WORDS)
        self.uk_anchor = regex.compile(UK_POSTCODE, flags)
        self.uk = regex.compile(UK_ADDRESS, flags, suffix=sorted(self.suffixes))
        self.military = regex.compile(MILITARY, flags)

    def analyze(self, text, entities, nlp_artifacts=None):
        words = {w.lower() for w in WORD.findall(text)}
        patterns = []
        if words & self.suffixes:
            patterns.append(self.street)
        if self.de_anchor.search(text, timeout=self.timeout_s):
            patterns.append(self.de)
        if words.intersection(FR_WORDS):
            patterns.append(self.fr)
        if self.uk_anchor.search(text, timeout=self.timeout_s):
            patterns.append(self.uk)
        if "box" in words:
            patterns.append(self.military)
        return [self.result(*m.span(), 0.7) for p in patterns for m in self.finditer(p, text)]


PHONE = regex.compile(
    r"(?<![\w+/.-])(?:\+|00)?\(?\d{1,4}+\)?(?:[ .-]?\(?\d{1,5}+\)?){1,6}+(?:\s?(?:x|ext\.?)\s?\d{1,6})?(?![\w/-]|\.\d)",
    regex.IGNORECASE,
)


NOT_PHONE = regex.compile(r"\d{1,4}([./-])\d{1,2}\1\d{2,4}|\d{1,3}(?:\.\d{1,3}){3}")  # dates, IPv4 addresses


class InternationalPhoneRecognizer(_Recognizer):
    """Scores: 0.6 in a phone's shape or after a cue ("call", "mobile"), 0.45 for 10+ bare digits; 8 or 9
    bare digits without a cue are not taken (order numbers)."""

    entity = "PHONE_NUMBER"
    cue = regex.compile(
        r"\b(?:phone|call|number|mobile|cell|tel|telephone|whatsapp|text|reach|ring|fax|nr|no)\b"
        r"(?:\W+(?:is|number|no|nr|on|at|me))*\W*$",
        regex.IGNORECASE,
    )

    def analyze(self, text, entities, nlp_artifacts=None):
        out = []
        for m in self.finditer(PHONE, text):
            value = m.group()
            if NOT_PHONE.fullmatch(value):
                continue
            main = regex.split(r"(?i)\s?(?:x|ext)", value)[0]
            digits = sum(c.isdigit() for c in main)
            if not 8 <= digits <= 15:
                continue
            shaped = value[0] in "+0(" or any(c in main for c in " .-")
            cued = bool(self.cue.search(text, max(0, m.start() - 25), m.start(), timeout=self.timeout_s))
            if shaped or cued or digits >= 10:
                out.append(self.result(*m.span(), 0.6 if shaped or cued else 0.45))
        return out


CARD = regex.compile(r"(?<![\w-])\d(?:[ -]?\d){11,18}(?![\w-])")


def luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


class CardNumberRecognizer(_Recognizer):
    entity = "CREDIT_CARD"

    def analyze(self, text, entities, nlp_artifacts=None):
        out = []
        for m in self.finditer(CARD, text):
            digits = "".join(c for c in m.group() if c.isdigit())
            if luhn(digits) and len(set(digits)) > 1:
                out.append(self.result(*m.span(), 0.9))
        return out


MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
    r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?|januar|februar|märz|mai|juni|juli|oktober|dezember|"
    r"janvier|février|mars|avril|juin|juillet|août|septembre|octobre|novembre|décembre)"
)
DATE = (
    rf"(?:\d{{1,4}}[./-]\d{{1,2}}[./-]\d{{2,4}}|\d{{1,2}}(?:st|nd|rd|th)?\.?\s+(?:of\s+)?{MONTH}\.?,?\s+\d{{4}}|"
    rf"{MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})"
)


class ContextValueRecognizer(_Recognizer):
    """A value after its cue, within `window` characters: PII there, not elsewhere ("ships on 12 May")."""

    def __init__(
        self, entity: str, cue: str, value: str, score: float = 0.85, window: int = 30, timeout_s: float = TIMEOUT_S
    ):
        self.entity = entity
        super().__init__(timeout_s)
        self.name = f"{entity.title().replace('_', '')}ContextRecognizer"
        self.cue = regex.compile(cue, regex.IGNORECASE)
        self.value = regex.compile(value, regex.IGNORECASE)
        self.window = window

    def analyze(self, text, entities, nlp_artifacts=None):
        out = []
        for c in self.finditer(self.cue, text):
            m = self.value.search(text, c.end(), c.end() + self.window, timeout=self.timeout_s)
            if m:
                out.append(self.result(*m.span(), 0.85))
        return out


def date_of_birth() -> ContextValueRecognizer:
    cue = r"\b(?:born|b\.|dob|d\.o\.b\.?|date\s+of\s+birth|birth\s*date|birthday|geboren|geb\.|née?)(?!\w)"
    return ContextValueRecognizer("DATE_OF_BIRTH", cue, DATE)


def passport() -> ContextValueRecognizer:
    cue = r"\bpass(?:port)?\b(?:\s*(?:number|no\.?|nr\.?|num|#|id))?"
    return ContextValueRecognizer("PASSPORT", cue, r"(?<![\w-])(?=[a-z0-9]*\d{5})[a-z0-9]{6,10}(?![\w-])", window=25)


def recognizers(timeout_s: float = TIMEOUT_S) -> list[EntityRecognizer]:
    return [
        NameRecognizer(timeout_s),
        SpelledEmailRecognizer(timeout_s),
        AddressRecognizer(timeout_s),
        InternationalPhoneRecognizer(timeout_s),
        CardNumberRecognizer(timeout_s),
        date_of_birth(),
        passport(),
    ]
