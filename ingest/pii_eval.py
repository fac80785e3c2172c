"""A labelled, chat-shaped PII corpus generated with Faker, and how a scrubber is scored on it.

Used by bench/pii_quality.py (the figures) and tests/ingest/test_pii_eval.py (the floors). Nothing in the
scrubber is fitted to it: its templates, casings and values are drawn here and nowhere else.

- Values come from Faker in 14 locales (names, addresses and phones in their own formats), in every casing
  a chat has: as typed, all lower case, ALL CAPS, and just the name in lower case.
- Every text also carries phrases of the store's own domain (brands, products, policy words, dates that are
  not birth dates): `DOMAIN_PHRASES`. Scrubbing any of their words is over-redaction.
- A value counts as leaked the way the review measured it: a name when any of its words of 4+ letters
  survives in the scrubbed text; any other value when it survives whole.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

LOCALES = (
    "en_US",
    "en_GB",
    "de_DE",
    "fr_FR",
    "es_ES",
    "it_IT",
    "en_IN",
    "pt_BR",
    "nl_NL",
    "pl_PL",
    "en_AU",
    "tr_TR",
    "sv_SE",
    "vi_VN",
)
# Romanised names of cultures whose Faker locale writes them in another script.
ROMANISED = ("zh_CN", "ja_JP")
PHONE_LOCALES = ("en_GB", "de_DE", "fr_FR", "en_AU", "en_US", "es_ES", "it_IT", "nl_NL", "en_IN")
ADDRESS_LOCALES = ("en_GB", "de_DE", "en_US", "fr_FR", "en_AU")

# Words of the store's domain that must pass through: brands, products, policy words.
DOMAIN_PHRASES = (
    "We accept Visa, Mastercard and Klarna",
    "I paid with PayPal",
    "can I use Apple Pay",
    "Amex was declined",
    "it shipped with DHL",
    "the UPS driver never came",
    "Royal Mail lost it",
    "FedEx says delivered",
    "the Northwind Outfitters rain jacket",
    "my Trailblazer hiking boots",
    "the Alpine down parka",
    "a wool sweater in size M",
    "the Summit backpack",
    "your Orders page",
    "the free return label",
    "a Northwind gift card",
    "the 2-year warranty",
    "ships in 3 days",
    "within 45 days of delivery",
    "the Black Friday sale",
    "order #482913 arrived on March 3",
    "since last Monday",
    "on 12 May",
    "Gore-Tex lining",
    "Merino socks",
    "the Patagonia fleece",
    "Hermes tracking page",
    "Zalando had it cheaper",
)

# The store's own brand and product words among them: what a store puts in `ingest.pii.allow_words`.
STORE_WORDS = ("Northwind Outfitters", "Trailblazer", "Alpine", "Summit", "Gore-Tex", "Merino", "Patagonia")

TEMPLATES = (
    "hi its {name} here, {domain}. can u check my order",
    "thx {first}! {domain}",
    "Hello, this is {name}. {domain}, my phone is {phone}",
    "my name is {name} and my email is {email}. {domain}",
    "{domain}? regards, {name}",
    "please send the refund to {name}, {address}. {domain}",
    "new address: {address} (for {first}). {domain}",
    "you can email me at {email_spelled}, {domain}",
    "Reach me on {phone} or {email}. {domain}",
    "the parcel is for my wife {name}. {domain}",
    "I spoke to your agent {first} yesterday, {domain}. my number: {phone}",
    "Account holder: {name}, DOB {dob}. {domain}",
    "i was born on {dob}, does that matter for the account? {domain}",
    "my date of birth is {dob} and passport number {passport}. {domain}",
    "passport {passport}, name {name}. {domain}",
    "deliver to {address} please, {domain}",
    "card {card} was charged twice, {domain}",
    "iban for the refund: {iban}. {domain}",
    "ok so {name} ordered it for me, {domain}",
    "can {first} pick it up? {domain}. call {phone}",
    "email {email_spelled} if anything, {domain}",
    "login from {ip} fails, {domain}",
    "my ssn is {ssn}, {domain}",
    "Hey, {first} {last_only} again. {domain}",
)
CASINGS = ("as typed", "lower", "upper", "name lower")
CASING_WEIGHTS = (0.45, 0.3, 0.1, 0.15)
SLOT = re.compile(r"\{(\w+)\}")
ENTITY = {
    "name": "PERSON",
    "first": "PERSON",
    "last_only": "PERSON",
    "email": "EMAIL_ADDRESS",
    "email_spelled": "EMAIL_ADDRESS",
    "phone": "PHONE_NUMBER",
    "address": "STREET_ADDRESS",
    "dob": "DATE_OF_BIRTH",
    "passport": "PASSPORT",
    "card": "CREDIT_CARD",
    "iban": "IBAN_CODE",
    "ip": "IP_ADDRESS",
    "ssn": "US_SSN",
}


@dataclass
class Sample:
    text: str
    labels: list[tuple[str, int, int]]  # (entity type, start, end)
    domain: list[tuple[int, int]] = field(default_factory=list)  # spans of domain phrases
    casing: str = "as typed"


class _Values:
    def __init__(self, seed: int):
        from faker import Faker

        self.rng = random.Random(seed)
        self.fakers = {loc: Faker(loc) for loc in (*LOCALES, *ROMANISED)}
        for i, f in enumerate(self.fakers.values()):
            f.seed_instance(seed * 1000 + i)

    def person(self) -> tuple[str, str]:
        loc = self.rng.choice(LOCALES + ROMANISED)
        f = self.fakers[loc]
        if loc in ROMANISED:
            first, last = f.first_romanized_name(), f.last_romanized_name()
        else:
            first, last = f.first_name(), f.last_name()
        return first, last

    def value(self, slot: str, names: tuple[str, str]) -> str:
        rng, first, last = self.rng, *names
        f = self.fakers[rng.choice(LOCALES)]
        if slot == "name":
            return f"{first} {last}"
        if slot == "first":
            return first
        if slot == "last_only":
            return last
        if slot == "email":
            return f.email()
        if slot == "email_spelled":
            local = self.rng.choice(
                [
                    first.lower(),
                    f"{first.lower()}{rng.randint(1, 99)}",
                    f"{first.lower()} dot {last.lower()}",
                    f"{first[0].lower()} {last.lower()}",
                ]
            )
            domain = rng.choice(["gmail", "yahoo", "outlook", "hotmail", "web", "gmx"])
            tld = rng.choice(["com", "de", "co dot uk", "fr", "net"])
            at = rng.choice([" at ", " (at) ", " [at] "])
            return f"{local}{at}{domain} dot {tld}"
        if slot == "phone":
            return self.fakers[rng.choice(PHONE_LOCALES)].phone_number()
        if slot == "address":
            return self.fakers[rng.choice(ADDRESS_LOCALES)].address().replace("\n", ", ")
        if slot == "dob":
            d = f.date_of_birth(minimum_age=18, maximum_age=90)
            return d.strftime(rng.choice(["%d/%m/%Y", "%m/%d/%Y", "%Y-%m-%d", "%d.%m.%Y", "%B %d, %Y", "%d %B %Y"]))
        if slot == "passport":
            return (
                self.fakers["en_US"].passport_number()
                if rng.random() < 0.5
                else (
                    "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
                    + str(rng.randint(1000000, 9999999))
                )
            )
        if slot == "card":
            return f.credit_card_number()
        if slot == "iban":
            return self.fakers[rng.choice(("de_DE", "en_GB", "fr_FR", "nl_NL", "es_ES"))].iban()
        if slot == "ip":
            return f.ipv4_public()
        if slot == "ssn":
            return self.fakers["en_US"].ssn()
        raise KeyError(slot)


def _recase(text: str, how: str) -> str:
    out = text.lower() if how == "lower" else text.upper() if how == "upper" else text
    return out if len(out) == len(text) else text  # 'ß'.upper() is 'SS': keep offsets exact


def corpus(n: int, seed: int = 0) -> list[Sample]:
    """`n` texts, deterministic for a seed; 1.46 labelled values per text on average."""
    vals = _Values(seed)
    out = []
    for i in range(n):
        template = TEMPLATES[i % len(TEMPLATES)]
        casing = vals.rng.choices(CASINGS, CASING_WEIGHTS)[0]
        names = vals.person()
        text, labels, domain, pos = "", [], [], 0
        for m in SLOT.finditer(template):
            text += template[pos : m.start()]
            slot = m.group(1)
            v = vals.rng.choice(DOMAIN_PHRASES) if slot == "domain" else vals.value(slot, names)
            if casing == "name lower" and slot in ("name", "first", "last_only"):
                v = _recase(v, "lower")
            span = (len(text), len(text) + len(v))
            (domain.append(span) if slot == "domain" else labels.append((ENTITY[slot], *span)))
            text += v
            pos = m.end()
        text += template[pos:]
        if casing in ("lower", "upper"):
            text = _recase(text, casing)
        out.append(Sample(text, labels, domain, casing))
    return out


WORD = re.compile(r"\w+")


def leaked(kind: str, value: str, scrubbed: str) -> bool:
    """The review's rule: a name leaks when any word of 4+ letters of it survives; other values when whole."""
    if kind == "PERSON":
        return any(w in scrubbed for w in WORD.findall(value) if len(w) >= 4 and w.isalpha())
    return value in scrubbed


def partly_leaked(value: str, scrubbed: str) -> bool:
    """Any word of 4+ characters of the value survives (a house number, a postcode, half a name)."""
    return any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", scrubbed) for w in WORD.findall(value) if len(w) >= 4)


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@dataclass
class Score:
    per_type: dict[str, dict[str, int]] = field(default_factory=dict)
    values: int = 0
    leaked: int = 0
    partly: int = 0
    domain_words: int = 0
    domain_scrubbed: int = 0
    false_findings: int = 0
    findings: int = 0
    leaks: list[tuple[str, str, str]] = field(default_factory=list)  # (type, value, scrubbed text): examples

    def add(self, sample: Sample, scrubbed_text: str, findings: list[tuple[str, int, int]]) -> None:
        for kind, s, e in sample.labels:
            st = self.per_type.setdefault(kind, {"n": 0, "hit": 0, "leaked": 0, "partly": 0, "found": 0, "true": 0})
            value = sample.text[s:e]
            st["n"] += 1
            st["hit"] += any(k == kind and _overlaps((fs, fe), (s, e)) for k, fs, fe in findings)
            leak, partly = leaked(kind, value, scrubbed_text), partly_leaked(value, scrubbed_text)
            st["leaked"] += leak
            st["partly"] += partly
            self.values += 1
            self.leaked += leak
            self.partly += partly
            if leak and len(self.leaks) < 400:
                self.leaks.append((kind, value, scrubbed_text))
        for k, fs, fe in findings:
            st = self.per_type.setdefault(k, {"n": 0, "hit": 0, "leaked": 0, "partly": 0, "found": 0, "true": 0})
            st["found"] += 1
            true = any(_overlaps((fs, fe), (s, e)) for _, s, e in sample.labels)
            st["true"] += any(kk == k and _overlaps((fs, fe), (s, e)) for kk, s, e in sample.labels)
            self.findings += 1
            self.false_findings += not true
        for ds, de in sample.domain:
            for m in WORD.finditer(sample.text, ds, de):
                self.domain_words += 1
                self.domain_scrubbed += any(_overlaps((fs, fe), m.span()) for _, fs, fe in findings)

    def recall(self, kind: str) -> float:
        st = self.per_type[kind]
        return st["hit"] / st["n"] if st["n"] else float("nan")

    @property
    def leak_rate(self) -> float:
        return self.leaked / self.values if self.values else 0.0

    @property
    def over_redaction(self) -> float:
        return self.domain_scrubbed / self.domain_words if self.domain_words else 0.0
