"""Filters over candidate samples. Each returns a score per sample and a reason when it drops one.

Pure functions on lists of strings, vectorised where it matters: curation of 100,000 chats must take
seconds, so the expensive ones (language, near-duplicates) work on unique texts only.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]{1,40}>")

# The second PII scan: context-free patterns, no score threshold. Ingest's Presidio pass weighs context
# and drops low-score matches; what survives it and still looks like PII here is excluded from training.
_LEFTOVER = {
    "EMAIL_ADDRESS": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "PHONE_NUMBER": re.compile(r"(?<!\w)(?:\+?\d[\d ().-]{7,}\d)(?!\w)"),
    "US_SSN": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "IBAN_CODE": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
    "IP_ADDRESS": re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
    "CREDIT_CARD": re.compile(r"\b(?:\d[ -]?){13,19}\b"),
}


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def leftover_pii(text: str) -> list[str]:
    """Entity types that still look present in scrubbed text (placeholders themselves do not count)."""
    found = []
    for kind, pattern in _LEFTOVER.items():
        for m in pattern.finditer(text):
            value = m.group(0)
            digits = re.sub(r"\D", "", value)
            if kind == "PHONE_NUMBER" and len(digits) < 9:
                continue
            if kind == "CREDIT_CARD" and not _luhn(digits):
                continue
            found.append(kind)
            break
    return found


def placeholder_share(text: str) -> float:
    """Share of the non-space characters of `text` that are <PII> placeholders (1.0 for empty text)."""
    solid = len(re.sub(r"\s", "", text))
    if solid == 0:
        return 1.0
    return sum(len(m.group(0)) for m in PLACEHOLDER.finditer(text)) / solid


_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "tr", "ru", "zh", "ja", "ko", "ar")


def languages(texts: list[str], allowed: list[str]) -> list[tuple[str | None, float | None]]:
    """(ISO code, confidence) per text; (None, None) when the text is too short to tell."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    codes = sorted(set(_LANGUAGES) | set(allowed))
    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in codes]
    detector = LanguageDetectorBuilder.from_languages(*langs).with_low_accuracy_mode().build()
    unique = list(dict.fromkeys(texts))
    letters = [sum(ch.isalpha() for ch in PLACEHOLDER.sub("", t)) for t in unique]
    probe = [t for t, n in zip(unique, letters) if n >= 12]
    found = dict(zip(probe, detector.compute_language_confidence_values_in_parallel(probe)))
    out: dict[str, tuple[str | None, float | None]] = {}
    for text in unique:
        values = found.get(text)
        if not values:
            out[text] = (None, None)
            continue
        best = values[0]
        out[text] = (best.language.iso_code_639_1.name.lower(), round(best.value, 4))
    return [out[t] for t in texts]


def _shingles(text: str, tag: str) -> list[bytes]:
    words = _words(text)
    if len(words) < 3:
        return [f"{tag}{' '.join(words)}".encode()]
    return [f"{tag}{words[i]} {words[i + 1]} {words[i + 2]}".encode() for i in range(len(words) - 2)]


def near_duplicates(
    prompts: list[str], answers: list[str], groups: list[str], threshold: float, num_perm: int = 64
) -> list[int | None]:
    """For each item, the index of the earlier item it duplicates (None when it is the first of its kind).

    Items are duplicates when they are in the same group (the label) and the word 3-grams of prompt and
    answer together (tagged by field, so a prompt never matches an answer) have an estimated Jaccard
    similarity >= threshold: MinHash signatures, LSH to find candidates, the signatures to confirm.
    Exact duplicates are found by hash first, so MinHash runs on distinct texts only.
    """
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    first_exact: dict[bytes, int] = {}
    of: list[int | None] = [None] * len(prompts)
    distinct = []
    for i, (p, a, g) in enumerate(zip(prompts, answers, groups)):
        key = hashlib.blake2b(f"{g}\0{p}\0{a}".encode(), digest_size=16).digest()
        if key in first_exact:
            of[i] = first_exact[key]
        else:
            first_exact[key] = i
            distinct.append(i)
    if threshold >= 1.0 or len(distinct) < 2:
        return of

    proto = MinHash(num_perm=num_perm, seed=1)  # permutations computed once, shared by all
    by_group: dict[str, MinHashLSH] = defaultdict(lambda: MinHashLSH(threshold=threshold, num_perm=num_perm))
    signatures: dict[int, np.ndarray] = {}
    for i in distinct:
        m = MinHash(num_perm=num_perm, seed=1, permutations=proto.permutations, scheme=proto.scheme)
        m.update_batch(_shingles(prompts[i], "p:") + _shingles(answers[i], "a:"))
        lsh = by_group[groups[i]]
        found = sorted(lsh.query(m))
        if found:
            similar = (np.stack([signatures[j] for j in found]) == m.hashvalues).mean(axis=1) >= threshold
            if similar.any():
                of[i] = found[int(similar.argmax())]
                continue
        lsh.insert(i, m, check_duplication=False)
        signatures[i] = m.hashvalues
    return of


def superseded(
    answers: list[str], labels: list[str], sources: list[str], threshold: float, newest: int, revision: float
) -> dict[int, str]:
    """Desirable samples that newer feedback contradicts: {index: why}. Samples come oldest first.

    - Rejected: answers that the near-duplicate test calls one (`threshold`) are one text; a text whose
      `newest` latest labels hold more undesirable than desirable ones is rejected, and its desirable
      samples (earlier thumbs-up, a correction that said it) are superseded. A text wrongly rejected now
      and then (asked the wrong question) keeps a desirable majority.
    - Revised: a correction that rewrites an earlier desirable answer (similar at `revision` or more, but
      not the same text: a policy whose number changed) supersedes it, even if nobody was served it since."""
    of = near_duplicates([""] * len(answers), answers, ["answer"] * len(answers), threshold)
    texts: dict[int, list[int]] = defaultdict(list)
    for i in range(len(of)):
        root = i
        while (up := of[root]) is not None:  # an exact copy points at its first, which may be a near-duplicate
            root = up
        texts[root].append(i)
    out = {}
    for members in texts.values():
        recent = [labels[i] for i in members[-newest:]]
        down = recent.count("undesirable")
        if down > len(recent) - down:
            why = f"superseded: {down} of the newest {len(recent)} labels of this answer are thumbs-down"
            out.update({i: why for i in members if labels[i] == "desirable"})
    last_correction = {}  # text -> the index of its latest correction
    for r, members in texts.items():
        if found := [i for i in members if sources[i] == "correction"]:
            last_correction[r] = found[-1]
    holding: dict[bytes, set[int]] = defaultdict(set)  # word 3-gram -> the texts that state it
    for r in texts:
        for g in set(_shingles(answers[r], "a:")):
            holding[g].add(r)
    for r, c, similar in _revisions(answers, list(texts), set(last_correction), threshold, revision):
        later = last_correction[c]
        why = f"superseded: revised by a later correction ({similar:.0%} alike)"
        out.update({i: why for i in texts[r] if labels[i] == "desirable" and i < later and i not in out})
        # What the revision took out ("within 45 days" when 45 became 30) is wrong in any wording: earlier
        # desirable texts that state at least two of its removed 3-grams go too.
        gone = set(_words(answers[r])) - set(_words(answers[c]))
        stale = [g for g in set(_shingles(answers[r], "a:")) - set(_shingles(answers[c], "a:")) if _has(g, gone)]
        hits: Counter[int] = Counter(t for g in stale for t in holding[g] if t not in (r, c))
        why = f"superseded: states what a later correction revised ({_quote(answers[r], gone)})"
        for t, n in hits.items():
            if n >= min(2, len(stale)):
                out.update({i: why for i in texts[t] if labels[i] == "desirable" and i < later and i not in out})
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|<[A-Z_]+>", text.lower())


def _has(shingle: bytes, words: set[str]) -> bool:
    return any(w in words for w in shingle.decode()[2:].split())


def _quote(text: str, gone: set[str]) -> str:
    """The revised text's removed words, for the reason."""
    return "removed: " + " ".join(w for w in dict.fromkeys(_words(text)) if w in gone)


def _revisions(
    answers: list[str], texts: list[int], corrections: set[int], threshold: float, revision: float
) -> Iterator[tuple[int, int, float]]:
    """(text, correction text, similarity) for each pair of distinct texts whose word 3-grams are alike at
    `revision` or more (exact Jaccard) and below `threshold`. MinHash LSH at a lower threshold finds the
    candidates: at 64 permutations its estimate of a 0.44 similarity falls below 0.4 one time in six, and a
    policy whose number changed ("3 to 5 business days" -> "2 to 4") is 0.44 alike."""
    from datasketch import MinHash, MinHashLSH

    proto = MinHash(num_perm=64, seed=1)
    shingles, signature = {}, {}
    lsh = MinHashLSH(threshold=max(revision - 0.2, 0.05), num_perm=64)
    for r in texts:
        shingles[r] = set(_shingles(answers[r], "a:"))
        m = MinHash(num_perm=64, seed=1, permutations=proto.permutations, scheme=proto.scheme)
        m.update_batch(list(shingles[r]))
        signature[r] = m
        if r in corrections:
            lsh.insert(r, m, check_duplication=False)
    for r in texts:
        for c in lsh.query(signature[r]):
            if c == r:
                continue
            similar = len(shingles[r] & shingles[c]) / len(shingles[r] | shingles[c])
            if revision <= similar < threshold:
                yield r, c, similar


def unit(key: str) -> float:
    """A number in [0, 1) fixed by `key`: seeded, stateless choices (review sampling, eval users)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def cap_order(sources: list[str], ids: list[str], seed: int) -> list[int]:
    """Which samples the per-user cap keeps first: corrections, then a seeded shuffle."""
    return sorted(
        range(len(ids)),
        key=lambda i: (sources[i] != "correction", hashlib.sha256(f"{seed}:{ids[i]}".encode()).digest()),
    )


def user_cap(users: list[str], share: float, order: list[int]) -> tuple[int, set[int]]:
    """The most samples per user so that no user is more than `share` of what is kept, and the indices
    kept (each user's first ones in `order`). 0 when no cap can hold (fewer than 1/share users)."""
    return share_cap(users, share, order)


def answer_key(answer: str) -> str:
    """What counts as the same answer text for the per-answer cap: case and whitespace do not matter."""
    return " ".join(answer.lower().split())


def question_matrix(questions: list[str]) -> csr_matrix:
    """TF-IDF rows of the questions' words (placeholders left out; sublinear term counts; unit length), as a
    sparse matrix: words that every question has ("order", "email", "thanks") weigh nothing, a topic's most."""
    import numpy as np
    from scipy.sparse import csr_matrix

    docs = [Counter(re.findall(r"[^\W\d_]+", PLACEHOLDER.sub(" ", q).lower())) for q in questions]
    vocab: dict[str, int] = {}
    cols = [[vocab.setdefault(w, len(vocab)) for w in d] for d in docs]
    df = np.zeros(len(vocab))
    for c in cols:
        df[c] += 1
    idf = np.log(len(docs) / np.maximum(df, 1))
    indptr = np.cumsum([0] + [len(c) for c in cols])
    indices = np.fromiter((j for c in cols for j in c), dtype=np.int64, count=int(indptr[-1]))
    tf = np.fromiter((1 + math.log(n) for d in docs for n in d.values()), dtype=float, count=int(indptr[-1]))
    m = csr_matrix((tf * idf[indices], indices, indptr), shape=(len(docs), len(vocab)))
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return csr_matrix(m.multiply(1 / norms[:, None]))


def contested(
    questions: list[str],
    answers: list[str],
    ratings: list[int],
    corrected: list[bool],
    users: list[str],
    batches: list[int],
    similarity: float,
) -> dict[int, tuple[int, int]]:
    """Corrections the crowd contradicts: {row: (users who rated the answer up, users who rated it down)}.

    A row is one rated chat. A correction says its chat's answer was wrong; it is contested when, in its
    batch (the chats between two snapshots: one night's), more of the users who asked an alike question
    (`question_matrix` cosine >= `similarity`) and were given the same answer text (`answer_key`) rated it
    up than down, the corrector counting as down. Coordinated accounts correcting a true answer toward a
    false one are outvoted by the customers who, the same night, asked the same and liked it. When the
    world changes, the old answer's ratings turn down with it (a change late in a night, after most of its
    likes, is learned from the next night's corrections); a true answer given to another topic's question
    is not compared with that topic's ratings."""
    import numpy as np

    vectors = question_matrix(questions)
    uid = np.unique(np.asarray(users, dtype=object), return_inverse=True)[1]
    rating = np.asarray(ratings)
    same: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i, (answer, batch) in enumerate(zip(answers, batches)):
        same[(batch, answer_key(answer))].append(i)
    out = {}
    for members in same.values():
        fixes = [i for i in members if corrected[i]]
        group = np.asarray(members)
        for start in range(0, len(fixes), 256):  # bounded memory: 256 corrections x the group at a time
            chunk = fixes[start : start + 256]
            similar = (vectors[chunk] @ vectors[group].T).toarray() >= similarity - 1e-9
            for i, alike in zip(chunk, similar):
                liked = np.unique(uid[group[alike & (rating[group] > 0)]])
                up = liked.size - int(uid[i] in liked)
                down = np.unique(np.append(uid[group[alike & (rating[group] < 0)]], uid[i])).size
                if up > down:
                    out[i] = (up, down)
    return out


def outvoted_texts(texts: list[str], users: list[str], outvoted: list[bool]) -> dict[str, tuple[int, int]]:
    """Correction texts most of whose senders the crowd outvoted: {`answer_key`: (senders outvoted, senders)}.

    One row per correction. A sender counts as outvoted when any of their corrections of the text was (now or
    on an earlier night). The contest needs a crowd that was served the corrected answer; when there is none
    (base serves varied answers after a forget) the same accounts' same text is still known. A text most of
    whose senders were never outvoted (a new policy, some of whose first corrections met the old answer's
    likes) is not."""
    senders: dict[str, set[str]] = defaultdict(set)
    bad: dict[str, set[str]] = defaultdict(set)
    for text, user, flag in zip(texts, users, outvoted):
        key = answer_key(text)
        senders[key].add(user)
        if flag:
            bad[key].add(user)
    return {k: (len(bad[k]), len(senders[k])) for k in bad if 2 * len(bad[k]) > len(senders[k])}


def answer_cap(answers: list[str], share: float, order: list[int]) -> tuple[int, set[int]]:
    """The most samples per answer text (`answer_key`) so that no text is more than `share` of what is kept,
    but at least one each: what coordinated accounts pushing one answer can place, whatever their number."""
    return share_cap([answer_key(a) for a in answers], share, order, at_least=1)


def share_cap(keys: list[str], share: float, order: list[int], at_least: int = 0) -> tuple[int, set[int]]:
    """The largest k (and at least `at_least`) so that k samples of one key are at most `share` of what is
    kept, and the indices kept: each key's first k in `order`."""
    counts: dict[str, int] = defaultdict(int)
    for u in keys:
        counts[u] += 1
    sizes = sorted(counts.values())

    def fits(k: int) -> bool:  # k <= share * sum(min(c, k))
        return k <= share * sum(min(c, k) for c in sizes) + 1e-9

    lo, hi = 0, max(sizes, default=0)
    while lo < hi:  # fits() is monotone: the largest k that fits
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    lo = max(lo, at_least)
    taken: dict[str, int] = defaultdict(int)
    kept = set()
    for i in order:
        if taken[keys[i]] < lo:
            taken[keys[i]] += 1
            kept.add(i)
    return lo, kept
