"""Curation on stored chats: candidates, review policies, snapshots and the audit chain."""

import hashlib
import json
import shutil
from datetime import timedelta

import pytest

from curation import audit, curate, review, snapshot
from curation.config import CurationConfig
from infra.db import open_store
from tests.helpers.events import ANSWERS, QUESTIONS, T0, chat, population, rate, store


def test_ratings_and_corrections_become_labelled_samples_and_the_latest_rating_wins(db, put):
    up = chat("ann", "Where is my order?", "It ships tomorrow.")
    down = chat("bob", "Can I return shoes?", "No returns, sorry.")
    unrated = chat("cid", "Do you ship on weekends?", "We ship Monday to Saturday.")
    put([up, rate(up, 1), down, rate(down, -1, "Yes: unworn shoes can be returned within 30 days."), unrated])
    cfg = CurationConfig(max_user_share=1.0)
    report = curate.run(db, cfg)
    rows = db.execute("SELECT user_id, label, source, answer, status FROM samples ORDER BY user_id, source").fetchall()
    assert rows == [
        ("ann", "desirable", "rating", "It ships tomorrow.", "pending"),
        ("bob", "desirable", "correction", "Yes: unworn shoes can be returned within 30 days.", "pending"),
        ("bob", "undesirable", "rating", "No returns, sorry.", "pending"),
    ]
    assert (report.ratings_up, report.ratings_down, report.corrections, report.up_share) == (1, 1, 1, 0.5)
    assert curate.run(db, cfg).new == 0  # a second run adds nothing
    review.decide(db, [curate.sample_id(str(up.event_id), "rating")], "approve", "rita")
    put([rate(up, -1, minutes=5)])  # ann changes her mind: the sample flips and goes back to review
    curate.run(db, cfg)
    assert db.execute("SELECT label, status FROM samples WHERE user_id = 'ann'").fetchall() == [
        ("undesirable", "pending")
    ]
    assert curate.run(db, cfg.model_copy(update={"include_unrated": True})).new == 1


def test_review_policies_and_decisions_are_audited_with_the_reviewer(db, put):
    put(population(users=60))
    auto = curate.run(db, CurationConfig(review_policy="auto"))
    assert auto.auto_approved == auto.kept > 0 and auto.pending == 0
    assert db.execute("SELECT DISTINCT reviewer, policy FROM reviews").fetchall() == [("policy:auto", "auto")]
    entry = [e for e in audit.entries(db) if e["action"] == "approve"][0]
    assert entry["actor"] == "policy:auto" and entry["details"]["policy"] == "auto"

    # A kept sample that waits again (its user re-rated it) or for the first time (a filter dropped it before)
    # is the policy's to decide too: under auto nothing is left pending.
    first = db.execute(
        "SELECT sample_id, chat_event_id FROM samples WHERE keep AND source = 'rating' LIMIT 1"
    ).fetchone()
    db.execute("UPDATE samples SET answer = 'an older answer' WHERE sample_id = ?", [first[0]])  # re-rated
    db.execute(
        "UPDATE samples SET keep = false, reason = 'cap', status = 'pending' WHERE sample_id IN "
        "(SELECT sample_id FROM samples WHERE keep AND sample_id <> ? ORDER BY sample_id LIMIT 3)",
        [first[0]],
    )
    again = curate.run(db, CurationConfig(review_policy="auto"))
    assert again.new == 0 and again.auto_approved >= 4 and again.pending == 0
    assert db.execute("SELECT count(*) FROM samples WHERE keep AND status <> 'approved'").fetchone() == (0,)

    db.execute("DELETE FROM reviews; DELETE FROM samples")
    sampled = curate.run(db, CurationConfig(review_policy="sample", review_sample_share=0.3))
    assert 0 < sampled.pending < sampled.kept and sampled.auto_approved + sampled.pending == sampled.kept

    pending = review.pending(db, 5)
    assert {"sample_id", "prompt", "answer", "rating", "pii", "scores"} <= set(pending[0])
    with pytest.raises(review.ReviewError, match="reason"):
        review.decide(db, [pending[0]["sample_id"]], "reject", "rita")
    with pytest.raises(review.ReviewError, match="unknown"):
        review.decide(db, ["smp-nope"], "approve", "rita")
    review.decide(db, [p["sample_id"] for p in pending[:3]], "approve", "rita", "checked")
    review.decide(db, [pending[3]["sample_id"]], "reject", "rita", "wrong policy")
    assert db.execute(
        "SELECT reviewer, decision, count(*) FROM reviews WHERE reviewer = 'rita' GROUP BY ALL ORDER BY ALL"
    ).fetchall() == [("rita", "approve", 3), ("rita", "reject", 1)]
    assert [e["actor"] for e in audit.entries(db, 2)] == ["rita", "rita"]
    assert audit.verify(db).ok


def test_audit_chain_detects_an_edited_or_removed_entry(db):
    for i in range(5):
        audit.append(db, "rita", "approve", f"smp-{i}", {"sample_ids": [f"smp-{i}"]})
    assert audit.verify(db).ok and audit.verify(db).entries == 5
    db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    verdict = audit.verify(db)
    assert (verdict.ok, verdict.broken_at) == (False, 3)
    db.execute("UPDATE audit_log SET actor = 'rita' WHERE seq = 3")
    assert audit.verify(db).ok
    db.execute("DELETE FROM audit_log WHERE seq = 2")
    assert audit.verify(db).broken_at == 2


def test_the_audit_log_only_grows_through_curation_review_snapshots_and_forget(db, put, tmp_path):
    """Every path that writes near the log (curate, decide, snapshot, forget, curate again) leaves each earlier
    entry as it was, appends its own, and the hash chain still verifies."""
    from curation.forget import forget
    from retrain import registry

    put(population(users=30))
    cfg = CurationConfig(review_policy="required", max_user_share=1.0)
    curate.run(db, cfg, actor="t")
    before = db.execute("SELECT * FROM audit_log ORDER BY seq").fetchall()
    pending = review.pending_ids(db)
    review.decide(db, pending[:6], "approve", "rita")
    review.decide(db, pending[6:8], "reject", "rita", "wrong policy")
    snapshot.build(db, cfg, tmp_path / "snapshots", actor="t")
    forget(db, "user-000", "dpo", taint=registry.taint_trained_on)
    curate.run(db, cfg, actor="t")
    after = db.execute("SELECT * FROM audit_log ORDER BY seq").fetchall()
    assert after[: len(before)] == before
    assert [r[3] for r in after[len(before) :]] == ["approve", "reject", "snapshot", "forget", "curate"]
    assert audit.verify(db).ok
    assert "user-000" not in str(after)  # entries never hold a user id: forgetting must not need to edit them


def test_snapshots_are_user_disjoint_capped_deterministic_and_load_with_datasets(db, put, tmp_path, scrub_pool):
    events = population(users=80)
    loud = [
        chat("loud", f"{q} (loud {k})", f"{a} loud {k}", minutes=k)
        for k in range(40)
        for q, a in [(QUESTIONS[k % 6], ANSWERS[k % 6])]
    ]
    events += [e for c in loud for e in (c, rate(c, 1))]
    put(events)
    cfg = CurationConfig(review_policy="auto", eval_share=0.2, seed=7)
    curate.run(db, cfg)
    snap = snapshot.build(db, cfg, tmp_path / "snapshots")
    import datasets

    # cache_dir: datasets would otherwise leave an Arrow copy in ~/.cache, out of forget's reach
    data = datasets.load_dataset("parquet", data_files=snap.data_files(), cache_dir=str(tmp_path / "hf-cache"))
    train, evals = data["train"], data["eval"]
    assert len(train) == snap.manifest["counts"]["train"] > 0 and len(evals) == snap.manifest["counts"]["eval"] > 0
    assert not set(list(train["user_key"])) & set(list(evals["user_key"]))
    row = train[0]
    assert row["prompt"][-1]["role"] == "user" and row["completion"][0]["role"] == "assistant"
    assert isinstance(row["label"], bool)
    users = list(train["user_key"]) + list(evals["user_key"])
    assert max(users.count(u) for u in set(users)) <= 0.02 * len(users)
    assert users.count(snapshot.user_key("loud")) == snap.manifest["per_user_cap"]
    assert snapshot.build(db, cfg, tmp_path / "snapshots").created is False

    # Same data and seed in another database: the same files, hash and id.
    other = open_store(tmp_path / "other.duckdb")
    try:
        store(other, events, scrub_pool.scrub)
        curate.run(other, cfg)
        again = snapshot.build(other, cfg, tmp_path / "elsewhere")
    finally:
        other.close()
    assert (again.snapshot_id, again.content_hash) == (snap.snapshot_id, snap.content_hash)
    for name in ("train.parquet", "eval.parquet"):
        assert (
            hashlib.sha256((again.path / name).read_bytes()).digest()
            == hashlib.sha256((snap.path / name).read_bytes()).digest()
        )
    manifest = json.loads((snap.path / "manifest.json").read_text())
    assert {"snapshot_id", "content_hash", "sample_ids", "filter_stats", "config", "seed"} <= set(manifest)
    assert snapshot.build(db, cfg.model_copy(update={"seed": 8}), tmp_path / "s8").snapshot_id != snap.snapshot_id
    shutil.rmtree(tmp_path / "s8")


def test_the_eval_split_always_has_a_desirable_answer_and_users_keep_their_side():
    """The split a 40-user CI run drew: the users under eval_share had only thumbs-down answers, and the offline
    gate had nothing to judge by. Eval now takes the next user in split order that has a desirable answer."""
    cfg = CurationConfig(eval_share=0.25, seed=0)
    users = sorted((f"user-{k}" for k in range(40)), key=lambda u: snapshot.filters.unit(f"0:split:{u}"))
    drawn = [u for u in users if snapshot.in_eval(u, cfg)]
    assert 0 < len(drawn) < len(users) - 1

    def rows(good: set[str]) -> list[tuple]:
        return [
            (f"{u}-{label}", u, label, "rating", [], "an answer")
            for u in users
            for label in ("desirable", "undesirable")
            if label == "undesirable" or u in good
        ]

    # Only users the hash put in train have desirable answers: eval takes the first of them in split order.
    good = set(users[len(drawn) :: 3])
    train, evals = snapshot._split(rows(good), cfg)
    eval_users = {r[1] for r in evals}
    assert eval_users == set(drawn) | {users[len(drawn)]} and users[len(drawn)] in good
    assert not eval_users & {r[1] for r in train} and len(train) + len(evals) == len(rows(good))
    # With a desirable answer among the drawn users, the split is the hash's alone.
    train, evals = snapshot._split(rows(good | {drawn[0]}), cfg)
    assert {r[1] for r in evals} == set(drawn)
    # Nobody has a desirable answer: nothing to add (the gate says so), and train always keeps a user.
    assert {r[1] for r in snapshot._split(rows(set()), cfg)[1]} == set(drawn)
    two = [r for r in rows({users[-1]}) if r[1] in (users[0], users[-1])]
    train, evals = snapshot._split(two, cfg)
    assert {r[1] for r in evals} == {users[0]} and {r[1] for r in train} == {users[-1]}


def test_heavy_users_cannot_take_most_rows_into_eval_and_trained_users_stay_in_train():
    """The split a 40-user CI run drew: a few heavy users (support agents) put 198 of 353 rows in eval. Eval keeps
    the drawn users in split order while they hold at most twice eval_share of the rows; a user an earlier
    run trained on never goes to eval, so nobody moves from train to eval when the rows grow."""
    cfg = CurationConfig(eval_share=0.25, seed=0)
    users = sorted((f"user-{k}" for k in range(40)), key=lambda u: snapshot.filters.unit(f"0:split:{u}"))
    drawn = [u for u in users if snapshot.in_eval(u, cfg)]
    heavy = {drawn[1]: 200}  # an agent with many corrections

    def rows(extra: int = 0) -> list[tuple]:
        return [
            (f"{u}-{k}", u, "desirable", "rating", [], "an answer")
            for u in users
            for k in range(heavy.get(u, 1) + (extra if u not in drawn else 0))
        ]

    before = rows()
    train, evals = snapshot._split(before, cfg)
    assert sum(r[1] in drawn for r in before) > 2 * cfg.eval_share * len(before)  # the hash alone: over the cap
    assert {r[1] for r in evals} == {drawn[0]}  # the heavy user would pass the cap: eval stops before it
    assert len(train) + len(evals) == len(before) and not {r[1] for r in train} & {r[1] for r in evals}
    # The train side grows (more users' rows): the cap would now let the heavy users in, but they were trained on.
    grown = rows(extra=10)
    _, evals = snapshot._split(grown, cfg, frozenset(r[0] for r in train))
    assert {r[1] for r in evals} == {drawn[0]}
    # Nobody trained on yet: the same rows put the drawn users in eval, heavy ones too (under the cap now).
    _, fresh = snapshot._split(grown, cfg)
    assert {r[1] for r in fresh} == set(drawn) and len(fresh) <= 2 * cfg.eval_share * len(grown)


def test_a_snapshot_that_cannot_meet_the_cap_says_why(db, put, tmp_path):
    put(population(users=10))
    cfg = CurationConfig(review_policy="auto", max_user_share=1.0)
    curate.run(db, cfg)
    with pytest.raises(ValueError, match="per-user cap"):
        snapshot.build(db, cfg.model_copy(update={"max_user_share": 0.02}), tmp_path)


def test_newer_feedback_supersedes_the_old_answer_and_replay_leaves_it_out(db, put, tmp_path):
    """The store changes its return policy: answers stating the old one were rated up and corrected to
    before; now every customer rejects them and agents correct them to the new one. The old answer's
    desirable samples stop being taught: dropped from the snapshot, and left out of replay."""
    from retrain import recipe

    old = "You can return any item within 45 days for a full refund, and the return label is free."
    new = "You can return any item within 30 days for a full refund, and the return label is free."
    events, night1 = [], []
    for i in range(6):  # night 1: the old answer, liked or given as the correction
        c = chat(f"early{i}", f"Can I still return my boots, order {i}?", old if i < 3 else "I am not sure.", minutes=i)
        events += [c, rate(c, 1) if i < 3 else rate(c, -1, old)]
        night1.append(c)
    for i in range(6):  # night 2: the old answer is rejected, agents send the new one
        c = chat(f"late{i}", f"What is your return window for jackets, order {i}?", old, minutes=1000 + i)
        events += [c, rate(c, -1, new if i % 2 else None)]
    put(events)
    cfg = CurationConfig(review_policy="auto", max_user_share=1.0, max_answer_share=1.0, eval_share=0)
    report = curate.run(db, cfg)
    assert report.dropped.get("superseded") == 6  # 3 thumbs-up + 3 corrections of the old answer
    rows = db.execute("SELECT answer, label, keep FROM samples WHERE source = 'correction' ORDER BY answer").fetchall()
    assert rows == [(new, "desirable", True)] * 3 + [(old, "desirable", False)] * 3
    snap = snapshot.build(db, cfg, tmp_path / "snapshots")
    trained = [(r["label"], r["completion"][0]["content"]) for r in recipe.load_rows(snap.path, "train")]
    assert (True, old) not in trained and (True, new) in trained and (False, old) in trained
    # Replay from an earlier snapshot that still held the old answer as desirable leaves it out.
    earlier = [{"sample_id": sid} for sid in curate.superseded_ids(db)] + [{"sample_id": "smp-other"}]
    mixed = recipe.with_replay([{"sample_id": "x"}] * 4, [earlier], 0.5, 0, frozenset(curate.superseded_ids(db)))
    assert [r["sample_id"] for r in mixed[4:]] == ["smp-other"]


def test_coordinated_corrections_that_customers_contradict_are_contested_and_never_trained(db, put, tmp_path):
    """Night 1 customers like the true cancellation policy; the next day they still do, while three new
    accounts thumbs-down it to the same questions and correct it to a lie. The lie and those thumbs-down
    stay out of the snapshot (contested) and out of replay; the customers' likes are trained."""
    from retrain import recipe

    truth = "You can cancel an order within 2 hours of placing it, from your account page."
    lie = "You can cancel any order at any time, even after it has shipped, for a full refund."
    asked = [
        "Can I cancel my order for a tent?",
        "How late can I cancel an order?",
        "What is your cancellation policy?",
    ]
    other = [
        ("Do you ship to Canada?", "We ship to 14 countries, Canada included."),
        ("Can I pay with PayPal?", "Yes."),
    ]
    days: list[list] = [[], []]
    for day, events in enumerate(days):
        for i in range(12):
            c = chat(f"cust{day}-{i}", f"{asked[i % 3]} Order NW-{day}{i:04d}.", truth, minutes=day * 1440 + i)
            events += [c, rate(c, 1)]
        for i, (q, a) in enumerate(other * 3):
            c = chat(f"other{day}-{i}", q, a, minutes=day * 1440 + 100 + i)
            events += [c, rate(c, 1)]
    attack = [
        chat(f"new-account-{i}", f"{asked[i % 3]} Order NW-9{i:04d}.", truth, minutes=1440 + 50 + i) for i in range(3)
    ]
    cfg = CurationConfig(review_policy="auto", max_user_share=1.0, max_answer_share=1.0, eval_share=0)
    put(days[0])
    curate.run(db, cfg)
    snapshot.build(db, cfg, tmp_path / "night1")  # the night between the two days, at its time
    db.execute("UPDATE snapshots SET created_at = ?", [T0 + timedelta(minutes=720)])
    put(days[1] + [e for c in attack for e in (c, rate(c, -1, lie))])

    report = curate.run(db, cfg)
    assert report.dropped.get("contested") == 6  # each account's correction and its thumbs-down
    reasons = db.execute("SELECT DISTINCT reason FROM samples WHERE user_id LIKE 'new-account-%'").fetchall()
    assert reasons == [("contested: 4 users who asked alike questions rated the corrected answer up, 1 down",)]
    snap = snapshot.build(db, cfg, tmp_path / "night2")
    trained = [(r["label"], r["completion"][0]["content"]) for r in recipe.load_rows(snap.path, "train")]
    assert (True, lie) not in trained and (False, truth) not in trained and (True, truth) in trained
    contested = db.execute("SELECT sample_id FROM samples WHERE reason LIKE 'contested:%'").fetchall()
    assert {sid for (sid,) in contested} <= set(curate.superseded_ids(db))  # replay leaves them out too

    # The verdict stays when the customers who outvoted the accounts are gone (forgotten, say).
    db.execute("DELETE FROM feedback WHERE user_id LIKE 'cust1-%'")
    assert curate.run(db, cfg).dropped.get("contested") == 6
    # Base serves again (the forget tainted the adapters): its answers vary, so nobody else was served them.
    # The accounts correct them to the lie, agents to the truth. Most of the lie's senders were outvoted: the
    # lie is contested without a crowd; the truth, never outvoted, is kept.
    varied = ["We can help with that.", "Please write to us about it.", "Orders can sometimes be changed."]
    day3 = []
    for i in range(3):
        x = chat(f"new-account-{i}", f"{asked[i]} Order NW-8{i:04d}.", varied[i], minutes=2 * 1440 + i)
        agent = chat(f"agent-{i}", f"{asked[i]} Order NW-7{i:04d}.", varied[i], minutes=2 * 1440 + 10 + i)
        day3 += [x, rate(x, -1, lie), agent, rate(agent, -1, truth)]
    put(day3)
    assert curate.run(db, cfg).dropped.get("contested") == 12
    reasons = dict(
        db.execute(
            "SELECT user_id || ' ' || source, reason FROM samples WHERE chat_event_id::VARCHAR IN (SELECT unnest(?))",
            [[str(c.event_id) for c in day3[::2]]],
        ).fetchall()
    )
    outvoted = "contested: the crowd outvoted 3 of the 3 users who sent this correction"
    assert {k: v for k, v in reasons.items() if k.startswith("new-account")} == {
        f"new-account-{i} {source}": outvoted for i in range(3) for source in ("correction", "rating")
    }
    assert not [k for k, v in reasons.items() if k.startswith("agent") and (v or "").startswith("contested")]
    assert reasons["agent-0 correction"] is None  # kept (the others are near-duplicates of it)
    samples, _ = curate.candidates(db, cfg)  # judged afresh, nobody is left to outvote them
    curate.apply_filters(samples, cfg)
    assert not [s for s in samples if (s.reason or "").startswith("contested")]
