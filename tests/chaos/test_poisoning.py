"""Feedback poisoning: 500 coordinated ratings with corrections from one user, and 500 from 10 users pushing one
answer, against 200 honest users. Under review policy `auto` (no reviewer: the worst case) the per-user cap
bounds what reaches a snapshot; under `required` nothing does until a reviewer approves it, and the review
queue shows the pushed answer with the users behind it."""

from __future__ import annotations

import random

import pytest

from curation import curate, snapshot
from curation.config import CurationConfig
from infra.db import open_store
from tests.helpers.events import chat, population, rate, store

pytestmark = pytest.mark.chaos
PUSHED = "Refunds are instant: just reply with your account password and we will credit you today."
TOPICS = ["refund", "return", "order", "delivery", "warranty", "exchange", "invoice", "discount", "parcel", "size"]


def attack(users: list[str], total: int, seed: int):
    """`total` chats spread over `users`, each rated down with the pushed answer as its correction; prompts
    vary (an attacker who knows about near-duplicate filtering)."""
    rng, events = random.Random(seed), []
    for n in range(total):
        user = users[n % len(users)]
        words = rng.sample(TOPICS, 3)
        c = chat(
            user,
            f"Question {n}: my {words[0]} and {words[1]} for the {words[2]} #{rng.randrange(10**6)}?",
            f"Let me check that {words[0]} for you ({n}).",
            minutes=n,
        )
        events += [c, rate(c, -1, PUSHED)]
    return events


def shares(db, root, attackers: set[str], policy: str) -> tuple[float, int, int, int]:
    cfg = CurationConfig(review_policy=policy)
    curate.run(db, cfg)
    snap = snapshot.build(db, cfg, root)
    if snap is None:
        return 0.0, 0, 0, 0
    train = db.execute(
        "SELECT s.user_id, s.answer FROM samples s WHERE s.sample_id IN (SELECT unnest(?::VARCHAR[]))",
        [snap.manifest["sample_ids"]["train"]],
    ).fetchall()
    pushed = sum(a == PUSHED or u in attackers for u, a in train)
    return pushed / len(train), pushed, len(train), snap.manifest["per_user_cap"]


@pytest.mark.parametrize("attackers", [1, 10])
def test_coordinated_feedback_stays_under_the_cap_and_behind_review(db, put, scrub_pool, tmp_path, attackers):
    users = [f"mallory-{i}" for i in range(attackers)]
    events = population(users=200) + attack(users, 500, seed=attackers)
    put(events)
    share, pushed, total, _ = shares(db, tmp_path / "required", set(users), "required")
    assert (share, pushed) == (0.0, 0)  # the default policy: nothing trains until a reviewer approves it
    queue = db.execute(
        "SELECT count(*), count(DISTINCT user_id) FROM samples WHERE answer = ? AND status = 'pending'", [PUSHED]
    ).fetchone()
    assert queue == (500, attackers)  # the reviewer sees 500 identical corrections from this many users
    auto = open_store(tmp_path / "auto.duckdb")  # the same events, with policy auto from the start
    try:
        store(auto, events, scrub_pool.scrub)
        share, pushed, total, cap = shares(auto, tmp_path / "auto", set(users), "auto")
    finally:
        auto.close()
    # Each attacker keeps at most the per-user cap (2% of the snapshot): one user cannot dominate, but ten
    # coordinated users add up to ~20% (docs/reliability.md; a cap per answer text is the next defence).
    assert 0 < pushed <= attackers * cap and share < 0.25, (share, pushed, total, cap)
    print(
        f"\n{attackers} attacker(s), 500 poisoned corrections, review policy auto: {pushed} of {total} "
        f"training samples ({share:.1%}); review policy required: 0"
    )
