"""Names in any case: a gazetteer of given names and surnames, and a case-normalised view for the NER.

spaCy's small English model finds names by their capital letters: on chat text ("thx priya", "HI ITS JANE
VŨ") it missed half of them (bench/pii_quality.py). Two remedies, both independent of case:

- `gazetteer()` and `name_spans`: the given names and surnames of every Latin-script locale of Faker (86 locales; the
  romanised Chinese and Japanese lists too), 39,817 words. A run of two or more name words is a name
  in any case; one name word alone is a name unless it is also a common English word (by wordfreq: "grace",
  "page", "brown"), and even then after a cue ("thx", "its", "agent", "regards,"). A rare word next to a
  name word is taken with it ("priya raghunathan"). Stop words are never name words ("will", "may").
- `truecase`: the text the NER reads, same length and offsets: in a text typed in one case, name words and
  rare words get a capital, everything else goes to lower case, so the NER sees what it was trained on.

`HOLD_OUT` (for bench/pii_quality.py only) leaves a hashed share of name words out of the gazetteer, to
measure recall on names it never held.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import re
from functools import lru_cache

HOLD_OUT = 0.0  # share of name words left out of the gazetteer (bench only)
# A name word this common in English is a name only next to another name word or after a cue (zipf 4.5:
# "grace", "rose", "mark", "page" are above it; "jennifer" 4.2, "dean" 4.4 are below).
COMMON_ZIPF = 4.5
# A word rarer than this is probably a name (or a brand, or a typo) when it sits beside a name word.
RARE_ZIPF = 3.0
# A word rarer than this beside a name word, or after a strong cue, is taken as part of the name ("joyce" 3.6,
# "pierre" 3.5; "ordered" 4.3 and "here" are not).
UNKNOWN_ZIPF = 3.7
# An unknown word after a weak cue ("can guiying pick it up") must be this rare.
RARE_CUED_ZIPF = 2.5
# Chat words that are rare in wordfreq's English but never names.
CHAT_WORDS = frozenset("pls plz thx thanx ty u ur r ya yep nope ok okay asap btw fyi lol omg hiya cheers".split())
# A name word alone, without a cue, is taken in lower case only when it is this rare in English.
RARE_NAME_ZIPF = 3.5
CUE_BEFORE = frozenset(
    "its it's im i'm iam this name named thx thanks thank ty cheers regards agent wife husband son daughter "
    "mr mrs ms miss dr dear hi hey hello sincerely best from signed called ask mum mom dad brother sister "
    "colleague friend partner customer holder recipient".split()
)
# Two-word cues whose last word is too common to be a cue alone: "this is ewa", "my name is", "i am".
CUE_PAIRS = frozenset({("this", "is"), ("name", "is"), ("it", "is"), ("i", "am"), ("names", "are"), ("here", "is")})
# Weaker cues: a name word after these is a name unless it is also a common English word ("for john", "can
# hector pick it up", but not "for grace").
WEAK_CUE_BEFORE = frozenset("for can ask tell call let with and to from by if or".split())
# Brands every online store meets, which the NER takes for people ("We accept Visa, Mastercard and Klarna"
# became three <PERSON>s): a name finding made only of these words is dropped. A store adds its own with
# `ingest.pii.allow_words`.
COMMERCE_WORDS = frozenset(
    "visa mastercard maestro amex american express discover diners jcb unionpay paypal klarna afterpay affirm "
    "clearpay sezzle venmo zelle stripe square apple google samsung pay wallet alipay wechat ideal sofort "
    "giropay bancontact dhl ups usps fedex royal mail parcelforce hermes evri dpd gls yodel tnt aramex "
    "purolator canada post poste colissimo chronopost postnl bpost correos australia auspost amazon prime "
    "ebay etsy shopify zalando asos walmart target costco ikea aliexpress temu shein".split()
)
WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['’-](?=[^\W\d_]))*")
# A word standing alone: letters inside a token ("3Du9" in a base64 id, "anna5") are not a name.
TOKEN = re.compile(r"(?<!\w)[^\W\d_](?:[^\W\d_]|['’-](?=[^\W\d_]))*(?!\w)")
LATIN = re.compile(r"[A-Za-zÀ-ɏḀ-ỿ'’ -]+")


def only_allowed(span: str, allowed: frozenset[str]) -> bool:
    """Every word of the span is an allowed word (compared in lower case)."""
    words = [w.lower() for w in WORD.findall(span)]
    return bool(words) and all(w in allowed for w in words)


def held_out(word: str) -> bool:
    """True for the hashed HOLD_OUT share of words (all words of a multi-word value)."""
    words = [w.lower() for w in WORD.findall(word)]
    return bool(words) and all(_hash_share(w) < HOLD_OUT for w in words)


def _hash_share(word: str) -> float:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big") / 2**32


@lru_cache(maxsize=1)
def gazetteer() -> tuple[frozenset[str], frozenset[str]]:
    """(given names, surnames), lower case, from Faker's person providers."""
    import faker.providers.person as person

    given: set[str] = set()
    family: set[str] = set()
    for mod in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{mod.name}").Provider
        for attr, into in (
            ("first_names", given),
            ("first_names_male", given),
            ("first_names_female", given),
            ("first_romanized_names", given),
            ("last_names", family),
            ("last_romanized_names", family),
        ):
            names = getattr(provider, attr, ())
            for name in names if isinstance(names, (tuple, list, dict)) else ():
                if isinstance(name, str) and LATIN.fullmatch(name):
                    into.update(w.lower() for w in WORD.findall(name) if len(w) >= 2)
    stop = _stop()
    keep = (lambda w: w not in stop and _hash_share(w) >= HOLD_OUT) if HOLD_OUT else (lambda w: w not in stop)
    return frozenset(filter(keep, given)), frozenset(filter(keep, family))


@lru_cache(maxsize=200_000)
def zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")


def one_case(text: str) -> bool:
    """The text was typed without case: no letters in upper case, or (nearly) none in lower case."""
    upper = sum(c.isupper() for c in text)
    lower = sum(c.islower() for c in text)
    return upper == 0 or lower <= upper // 10


def truecase(text: str) -> str:
    """The text with name-like words capitalised, for the NER; same length, so offsets carry over."""
    if not one_case(text):
        return text
    out = list(text.lower())
    if len(out) != len(text):  # lower() changed the length (rare Unicode): keep the original
        return text
    for start, end, _ in name_spans(text):
        for m in WORD.finditer(text, start, end):
            out[m.start()] = out[m.start()].upper()
    for m in TOKEN.finditer(text):
        if zipf(m.group().lower()) < RARE_ZIPF:
            out[m.start()] = out[m.start()].upper()
    return "".join(out)


# truecase (for spaCy's pipe, up to 256 texts ahead) and NameRecognizer ask for the same text.
@lru_cache(maxsize=1024)
def name_spans(text: str) -> tuple[tuple[int, int, float], ...]:
    """(start, end, score) of names the gazetteer finds, in any case."""
    given, family = gazetteer()
    words = [(m.start(), m.end(), m.group().lower()) for m in TOKEN.finditer(text)]
    cased = not one_case(text)
    spans: list[tuple[int, int, float]] = []
    i = 0
    while i < len(words):
        s, e, w = words[i]
        if w not in given and w not in family:
            cued = _cue_before(text, words, i)
            if (cued == "strong" and _unknown(w)) or (cued == "weak" and zipf(w) < RARE_CUED_ZIPF and w not in _stop()):
                j = i  # an unknown word after a cue ("thx othmar", "can guiying pick it up"), and its neighbours
                while (
                    j + 1 < len(words)
                    and j < i + 2
                    and _adjacent(text, words[j][1], words[j + 1][0])
                    and (_unknown(words[j + 1][2]) or words[j + 1][2] in given or words[j + 1][2] in family)
                ):
                    j += 1
                spans.append((s, words[j][1], 0.5))
                i = j + 1
            else:
                i += 1
            continue
        j = i  # extend over following name words, one space or hyphen apart
        while (
            j + 1 < len(words)
            and _adjacent(text, words[j][1], words[j + 1][0])
            and (words[j + 1][2] in given or words[j + 1][2] in family)
        ):
            j += 1
        run = words[i : j + 1]
        common = [zipf(x[2]) >= COMMON_ZIPF for x in run]
        if len(run) == 1 and not _single_name(text, words, i, common[0], w in given, cased):
            i = j + 1
            continue
        start, end = run[0][0], run[-1][1]
        # An unknown word right beside the run is taken with it: a surname or given name not in the lists.
        if j + 1 < len(words) and _adjacent(text, end, words[j + 1][0]) and _unknown(words[j + 1][2]):
            end, j = words[j + 1][1], j + 1
        if i > 0 and _adjacent(text, words[i - 1][1], start) and _unknown(words[i - 1][2]):
            start = words[i - 1][0]
        score = 0.85 if len(run) > 1 else 0.6 if not all(common) else 0.5
        spans.append((start, end, score))
        i = j + 1
    return tuple(spans)


def _cue_before(text: str, words: list[tuple[int, int, str]], i: int) -> str:
    """ "strong" or "weak" when the word before words[i] is a cue, else ""."""
    if i == 0:
        return ""
    before = words[i - 1]
    pair = i > 1 and (words[i - 2][2], before[2]) in CUE_PAIRS and _adjacent(text, words[i - 2][1], before[0], gap=" ")
    if (before[2] in CUE_BEFORE or pair) and _adjacent(text, before[1], words[i][0], gap=" ,:"):
        return "strong"
    if before[2] in WEAK_CUE_BEFORE and _adjacent(text, before[1], words[i][0], gap=" (,"):
        return "weak"
    return ""


@lru_cache(maxsize=1)
def _stop() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(w.lower() for w in STOP_WORDS) | CHAT_WORDS


def _unknown(word: str) -> bool:
    """Not a word an English chat uses much: an unknown name, most likely, beside a name or after a cue."""
    return zipf(word) < UNKNOWN_ZIPF and word not in _stop()


def _single_name(text: str, words: list[tuple[int, int, str]], i: int, common: bool, given: bool, cased: bool) -> bool:
    """One name word alone: a name after a cue (a weak cue will do for a given name that is also a common word:
    "for john", not "your orders page"); else only when rare in English or capitalised in cased text."""
    s, e, w = words[i]
    cued = _cue_before(text, words, i)
    if cued == "strong":
        return True
    if len(text) - e <= 3 and not text[e:].strip(" .!?") and text[max(0, s - 3) : s].rstrip().endswith(","):
        return True  # a signature at the end: "..., priya"
    if cued == "weak":
        return given or not common
    if common:
        return False
    return zipf(w) < RARE_NAME_ZIPF or (cased and text[s].isupper() and text[s + 1 : e].islower())


def _adjacent(text: str, end: int, start: int, gap: str = " -") -> bool:
    between = text[end:start]
    return 0 < len(between) <= 2 and all(c in gap for c in between)
