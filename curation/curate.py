"""From rated chats to samples: candidates, filters with persisted scores, and the review policy.

Every run recomputes every candidate (dedup and the per-user cap are properties of the whole set) and
upserts `samples` by a stable id, so running it twice changes nothing and a reviewer's decisions stay put
unless the sample itself changed (a user re-rated, a correction arrived).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

import hashlib
import json
import logging
from dataclasses import dataclass, field

import pyarrow as pa

from curation import audit, filters
from curation.config import CurationConfig

log = logging.getLogger("flywheel.curation")

# Each chat with the latest feedback of its (response, user); users who were forgotten stay out even when
# their events arrive late (the view `remembered_chats` holds that rule, migration 0005).
CANDIDATES = """
SELECT c.event_id::VARCHAR, c.response_id, c.user_id, c.messages, c.response, l.rating, l.correction,
       (SELECT count(*) FROM snapshots s WHERE s.created_at < c.created_at) AS batch
FROM remembered_chats c
{join} JOIN latest_feedback l ON l.response_id = c.response_id AND l.user_id = c.user_id
ORDER BY c.created_at, c.event_id
"""


@dataclass
class Sample:
    sample_id: str
    chat_event_id: str
    response_id: str
    user_id: str
    label: str
    source: str  # rating | correction | unrated
    prompt: list[dict[str, Any]]
    answer: str
    scores: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    batch: int = 0  # how many snapshots were taken before the chat: the chats of one night share it


@dataclass
class Report:
    candidates: int = 0
    ratings_up: int = 0
    ratings_down: int = 0
    corrections: int = 0
    samples: int = 0
    new: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    kept: int = 0
    users: int = 0
    per_user_cap: int = 0
    auto_approved: int = 0
    pending: int = 0

    @property
    def up_share(self) -> float | None:
        rated = self.ratings_up + self.ratings_down
        return self.ratings_up / rated if rated else None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "up_share": self.up_share}


def sample_id(chat_event_id: str, source: str) -> str:
    return "smp-" + hashlib.sha256(f"{chat_event_id}:{source}".encode()).hexdigest()[:20]


def candidates(con: DuckDBPyConnection, cfg: CurationConfig) -> tuple[list[Sample], Report]:
    report = Report()
    rows = con.execute(CANDIDATES.format(join="LEFT" if cfg.include_unrated else "")).fetchall()
    out = []
    for event_id, response_id, user, messages, response, rating, correction, batch in rows:
        report.candidates += 1
        made = []  # (source, label, answer)
        if rating == 1:
            report.ratings_up += 1
            made.append(("rating", "desirable", response))
        elif rating == -1:
            report.ratings_down += 1
            made.append(("rating", "undesirable", response))
        elif cfg.include_unrated:
            made.append(("unrated", "desirable", response))
        if correction:
            report.corrections += 1
            made.append(("correction", "desirable", correction))
        # prompt: messages, STRUCT(role, content)[], as a list of dicts
        out += [
            Sample(
                sample_id(event_id, source), event_id, response_id, user, label, source, messages, answer, batch=batch
            )
            for source, label, answer in made
        ]
    return out, report


def _last_user(prompt: list[dict[str, Any]]) -> str:
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def _drop(s: Sample, why: str) -> None:
    """The first filter that drops a sample names the reason."""
    if s.reason is None:
        s.reason = why


def _lengths(samples: list[Sample], prompts_full: list[str], last_user: list[str], cfg: CurationConfig) -> None:
    for s, full, last in zip(samples, prompts_full, last_user):
        s.scores["prompt_chars"], s.scores["answer_chars"] = len(full), len(s.answer)
        if len(last.strip()) < cfg.min_prompt_chars:
            _drop(s, f"length: prompt under {cfg.min_prompt_chars} characters")
        elif len(full) > cfg.max_prompt_chars:
            _drop(s, f"length: prompt over {cfg.max_prompt_chars} characters")
        elif len(s.answer.strip()) < cfg.min_answer_chars:
            _drop(s, f"length: answer under {cfg.min_answer_chars} characters")
        elif len(s.answer) > cfg.max_answer_chars:
            _drop(s, f"length: answer over {cfg.max_answer_chars} characters")


def _content(samples: list[Sample], prompts_full: list[str], last_user: list[str], cfg: CurationConfig) -> None:
    """Language, PII left after scrubbing, and answers that are mostly placeholders."""
    if cfg.languages:
        texts = [f"{p}\n{s.answer}" for s, p in zip(samples, last_user)]
        for s, (lang, confidence) in zip(samples, filters.languages(texts, cfg.languages)):
            s.scores["language"], s.scores["language_confidence"] = lang, confidence
            if lang is not None and lang not in cfg.languages:
                _drop(s, f"language: {lang}, not one of {','.join(cfg.languages)}")
    seen: dict[str, list[str]] = {}
    for s, full in zip(samples, prompts_full):
        text = f"{full}\n{s.answer}"
        found = seen.get(text)
        if found is None:
            found = seen[text] = filters.leftover_pii(text)
        s.scores["leftover_pii"] = found
        if found:
            _drop(s, "pii: " + ",".join(found) + " left after scrubbing")
    for s in samples:
        share = round(filters.placeholder_share(s.answer), 4)
        s.scores["placeholder_share"] = share
        if share > cfg.max_placeholder_share:
            _drop(s, f"placeholder: {share:.0%} of the answer is placeholders")


CROWD = "contested: {up} users who asked alike questions rated the corrected answer up, {down} down"
HELD = "contested: % rated the corrected answer up%"  # the crowd's verdicts (SQL LIKE): they stay


def _contested(samples: list[Sample], last_user: list[str], cfg: CurationConfig, held: dict[str, str]) -> None:
    """Corrections that most users who asked alike questions the same night contradict, and the thumbs-down
    they came with: coordinated accounts pushing a false answer (`filters.contested`). Every rating is a
    vote, whatever else drops its sample. A verdict stays (`held`: the crowd's verdicts of earlier runs): when
    the customers who outvoted a correction are forgotten, the correction has not become true. And a text
    most of whose senders were outvoted is contested wherever it is sent (`filters.outvoted_texts`): the same
    accounts correcting base's varied answers after a forget have no crowd served the same answer."""
    rated = [i for i, s in enumerate(samples) if s.source == "rating"]
    corrections = {s.chat_event_id: i for i, s in enumerate(samples) if s.source == "correction"}
    found = filters.contested(
        [last_user[i] for i in rated],
        [samples[i].answer for i in rated],
        [1 if samples[i].label == "desirable" else -1 for i in rated],
        [samples[i].chat_event_id in corrections for i in rated],
        [samples[i].user_id for i in rated],
        [samples[i].batch for i in rated],
        cfg.contest_similarity,
    )
    for k, (up, down) in found.items():
        rating = samples[rated[k]]
        why = CROWD.format(up=up, down=down)
        _drop(rating, why)
        _drop(samples[corrections[rating.chat_event_id]], why)
    for s in samples:
        if s.sample_id in held:
            _drop(s, held[s.sample_id])
    fixes = list(corrections.values())
    outvoted = filters.outvoted_texts(
        [samples[i].answer for i in fixes],
        [samples[i].user_id for i in fixes],
        [(samples[i].reason or "").startswith("contested:") for i in fixes],  # so far: the crowd's verdicts
    )
    ratings = {s.chat_event_id: s for s in samples if s.source == "rating"}
    for i in fixes:
        if verdict := outvoted.get(filters.answer_key(samples[i].answer)):
            why = f"contested: the crowd outvoted {verdict[0]} of the {verdict[1]} users who sent this correction"
            _drop(samples[i], why)
            if (thumb := ratings.get(samples[i].chat_event_id)) is not None and thumb.label == "undesirable":
                _drop(thumb, why)


def _superseded(samples: list[Sample], cfg: CurationConfig) -> None:
    """Newer feedback wins: what users now reject stops being taught (samples are oldest first)."""
    alive = [i for i, s in enumerate(samples) if s.reason is None]
    found = filters.superseded(
        [samples[i].answer for i in alive],
        [samples[i].label for i in alive],
        [samples[i].source for i in alive],
        cfg.near_duplicate_threshold,
        cfg.supersede_newest,
        cfg.revision_similarity,
    )
    for k, why in found.items():
        _drop(samples[alive[k]], why)


def _duplicates(samples: list[Sample], prompts_full: list[str], cfg: CurationConfig) -> None:
    alive = [i for i, s in enumerate(samples) if s.reason is None]
    dup_of = filters.near_duplicates(
        [prompts_full[i] for i in alive],
        [samples[i].answer for i in alive],
        [samples[i].label for i in alive],
        cfg.near_duplicate_threshold,
    )
    for k, j in enumerate(dup_of):
        s = samples[alive[k]]
        s.scores["duplicate_of"] = None if j is None else samples[alive[j]].sample_id
        if j is not None:
            _drop(s, "duplicate: of " + samples[alive[j]].sample_id)


def apply_filters(samples: list[Sample], cfg: CurationConfig, held: dict[str, str] | None = None) -> int:
    """Set scores and, for dropped samples, the first reason as "filter: detail" (filters in the order
    below); returns the per-user cap. `held`: sample id -> reason of the samples an earlier run contested."""
    prompts_full = ["\n".join(m.get("content", "") for m in s.prompt) for s in samples]
    last_user = [_last_user(s.prompt) for s in samples]
    _lengths(samples, prompts_full, last_user, cfg)
    _content(samples, prompts_full, last_user, cfg)
    _contested(samples, last_user, cfg, held or {})
    _superseded(samples, cfg)
    _duplicates(samples, prompts_full, cfg)
    alive = [i for i, s in enumerate(samples) if s.reason is None]
    order = filters.cap_order([samples[i].source for i in alive], [samples[i].sample_id for i in alive], cfg.seed)
    cap, kept = filters.user_cap([samples[i].user_id for i in alive], cfg.max_user_share, order)
    for k, i in enumerate(alive):
        if k not in kept:
            _drop(samples[i], f"user_cap: over {cap} samples per user ({cfg.max_user_share:.1%} of the kept)")
    alive = [i for i, s in enumerate(samples) if s.reason is None]
    order = filters.cap_order([samples[i].source for i in alive], [samples[i].sample_id for i in alive], cfg.seed)
    per_answer, kept = filters.answer_cap([samples[i].answer for i in alive], cfg.max_answer_share, order)
    for k, i in enumerate(alive):
        if k not in kept:
            _drop(
                samples[i],
                f"answer_cap: over {per_answer} samples of this answer text ({cfg.max_answer_share:.1%} of the kept)",
            )
    return cap


def superseded_ids(con: DuckDBPyConnection) -> list[str]:
    """Samples the last run dropped as superseded (users now reject their answer) or contested (users contradict
    the correction): what replay leaves out."""
    rows = con.execute(
        "SELECT sample_id FROM samples WHERE reason LIKE 'superseded:%' OR reason LIKE 'contested:%' ORDER BY sample_id"
    ).fetchall()
    return [r[0] for r in rows]


def needs_review(sample_id_: str, cfg: CurationConfig) -> bool:
    if cfg.review_policy == "required":
        return True
    if cfg.review_policy == "auto":
        return False
    return filters.unit(f"{cfg.seed}:review:{sample_id_}") < cfg.review_sample_share


# samples.prompt and chats.messages: STRUCT(role VARCHAR, content VARCHAR)[] (migration 0006).
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SAMPLE_COLUMNS = (
    "sample_id",
    "chat_event_id",
    "response_id",
    "user_id",
    "label",
    "prompt",
    "answer",
    "source",
    "scores",
    "keep",
    "reason",
)


def _table(samples: list[Sample]) -> pa.Table:
    return pa.table(
        {
            "sample_id": [s.sample_id for s in samples],
            "chat_event_id": [s.chat_event_id for s in samples],
            "response_id": [s.response_id for s in samples],
            "user_id": [s.user_id for s in samples],
            "label": [s.label for s in samples],
            "prompt": [s.prompt for s in samples],
            "answer": [s.answer for s in samples],
            "source": [s.source for s in samples],
            "scores": [json.dumps(s.scores, sort_keys=True) for s in samples],
            "keep": [s.reason is None for s in samples],
            "reason": [s.reason for s in samples],
        },
        schema=pa.schema([(c, {"keep": pa.bool_(), "prompt": MESSAGES}.get(c, pa.string())) for c in SAMPLE_COLUMNS]),
    )


def _auto_approve(con: DuckDBPyConnection, sample_ids: list[str], cfg: CurationConfig) -> None:
    """What the review policy approves without a reviewer, with its reviews and one audit entry."""
    reviewer = f"policy:{cfg.review_policy}"
    con.register("_auto", pa.table({"sample_id": sample_ids}))
    con.execute("UPDATE samples SET status = 'approved' WHERE sample_id IN (SELECT sample_id FROM _auto)")
    con.execute(
        "INSERT INTO reviews (sample_id, decision, reason, reviewer, policy) "
        f"SELECT sample_id, 'approve', 'review policy {cfg.review_policy}', ?, ? FROM _auto",
        [reviewer, cfg.review_policy],
    )
    con.unregister("_auto")
    audit.append(
        con,
        reviewer,
        "approve",
        f"{len(sample_ids)} samples",
        {
            "policy": cfg.review_policy,
            "count": len(sample_ids),
            "sample_ids_sha256": hashlib.sha256("\n".join(sample_ids).encode()).hexdigest(),
        },
    )


def run(con: DuckDBPyConnection, cfg: CurationConfig, actor: str = "system") -> Report:
    """Recompute candidates and filters, upsert samples, apply the review policy to the kept ones that wait;
    one transaction, one audit entry."""
    samples, report = candidates(con, cfg)
    held = dict(con.execute("SELECT sample_id, reason FROM samples WHERE reason LIKE ?", [HELD]).fetchall())
    report.per_user_cap = apply_filters(samples, cfg, held) if samples else 0
    report.samples = len(samples)
    for s in samples:
        if s.reason:
            kind = s.reason.split(":")[0]
            report.dropped[kind] = report.dropped.get(kind, 0) + 1
    kept = [s for s in samples if s.reason is None]
    report.kept, report.users = len(kept), len({s.user_id for s in kept})
    table = _table(samples)
    cols = ", ".join(SAMPLE_COLUMNS)
    con.execute("BEGIN TRANSACTION")
    try:
        existing = {r[0] for r in con.execute("SELECT sample_id FROM samples").fetchall()}
        con.register("_samples", table)
        # A sample whose label or answer changed goes back to review; otherwise its status stays.
        con.execute(f"""
            INSERT INTO samples ({cols}) SELECT {cols} FROM _samples
            ON CONFLICT (sample_id) DO UPDATE SET
                status = CASE WHEN samples.label <> excluded.label OR samples.answer <> excluded.answer
                              THEN 'pending' ELSE samples.status END,
                label = excluded.label, answer = excluded.answer, prompt = excluded.prompt,
                scores = excluded.scores, keep = excluded.keep, reason = excluded.reason
        """)
        con.unregister("_samples")
        report.new = sum(1 for s in samples if s.sample_id not in existing)
        # The policy decides every kept sample that waits: new ones, ones that changed (re-rated), and ones a
        # filter dropped before and keeps now (a cap that grew, a supersession undone by newer thumbs-up).
        waiting = con.execute("SELECT sample_id FROM samples WHERE keep AND status = 'pending'").fetchall()
        auto = sorted(sid for (sid,) in waiting if not needs_review(sid, cfg))
        if auto:
            _auto_approve(con, auto, cfg)
        report.auto_approved = len(auto)
        [(report.pending,)] = con.execute("SELECT count(*) FROM samples WHERE status = 'pending' AND keep").fetchall()
        audit.append(con, actor, "curate", None, report.as_dict())
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    log.info(
        "curated %d candidates into %d samples (%d kept, %d new, %d auto-approved)",
        report.candidates,
        report.samples,
        report.kept,
        report.new,
        report.auto_approved,
    )
    return report
