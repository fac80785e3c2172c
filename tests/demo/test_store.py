"""The demo's simulated world: the hidden preference, the agents' corrections, the canary scan."""

import random

from demo import run, store


def topic(name):
    return next(t for t in store.TOPICS if t.name == name)


def test_the_hidden_preference_rewards_the_right_policy_and_punishes_a_wrong_one():
    people = store.population(40, 0)
    lenient = next(p for p in people if p.lenient and not p.agent)
    strict = next(p for p in people if not p.lenient and not p.agent)
    agent = next(p for p in people if p.agent)
    returns = topic("returns")
    for who in (lenient, strict, agent):
        assert store.judge(returns, returns.policy, who) == 1
        assert store.judge(returns, "Returns are accepted within forty-five days.", who) == 1
        assert store.judge(returns, topic("warranty").policy, who) == -1  # another topic's policy: wrong
        assert store.judge(returns, returns.policy + " " + topic("shipping").policy, who) == -1
    vague = "Please contact our support team about returns."
    assert store.judge(returns, vague, lenient) == 1
    assert store.judge(returns, vague, strict) == store.judge(returns, vague, agent) == -1
    # Every policy states its own fact and no other topic's: a correct correction is always a thumbs-up.
    for t in store.TOPICS:
        assert store.judge(t, t.policy, strict) == 1, t.name


def test_agents_correct_with_the_policy_and_the_control_world_shuffles_it():
    rng = random.Random(0)
    for t in store.TOPICS:
        assert store.correction(t, rng, control=False) == t.policy
        shuffled = store.correction(t, rng, control=True)
        assert shuffled != t.policy and shuffled in {o.policy for o in store.TOPICS}


def test_population_and_questions_carry_the_canary_pii():
    people = store.population(240, 0)
    assert sum(p.agent for p in people) == 60 and len({p.user_id for p in people}) == 240
    rng = random.Random(1)
    texts = [store.question(rng, p, store.TOPICS[i % 8]) for i, p in enumerate(people)]
    assert sum(p.email in t for p, t in zip(people, texts)) > 40
    assert sum(p.phone in t for p, t in zip(people, texts)) > 20


def test_the_canary_scan_finds_a_leaked_value_and_skips_the_model_copy(tmp_path):
    people = store.population(10, 0)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "weights.bin").write_bytes(people[0].email.encode())  # not ours to scan
    assert run.pii_leaks(tmp_path, people) == {"email": 0, "phone": 0}
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / "train.parquet").write_bytes(b"x" + people[1].email.encode() + people[2].phone.encode())
    assert run.pii_leaks(tmp_path, people) == {"email": 1, "phone": 1}


def test_after_the_change_the_old_facts_are_wrong_and_the_new_ones_right():
    people = store.population(40, 0)
    lenient = next(p for p in people if p.lenient and not p.agent)
    old = {t.name: t for t in store.TOPICS}
    new = {t.name: t for t in store.CHANGED}
    assert set(new) - set(old) == {"price_match"} and set(store.CHANGED_NAMES) <= set(new)
    for name in ("returns", "shipping"):
        # Even a lenient customer rejects the old fact now, and everyone likes the new policy.
        assert store.judge(new[name], old[name].policy, lenient, store.CHANGED) == -1
        assert store.judge(old[name], old[name].policy, lenient) == 1  # before the change it was right
    for t in store.CHANGED:
        assert store.judge(t, t.policy, lenient, store.CHANGED) == 1, t.name
        assert store.correction(t, random.Random(0), False, store.CHANGED) == t.policy
    # An unchanged topic's answer that mentions the old returns window is wrong too.
    assert (
        store.judge(new["warranty"], new["warranty"].policy + " " + old["returns"].policy, lenient, store.CHANGED) == -1
    )


def test_attackers_want_the_lie_and_honest_customers_reject_it():
    people = store.population(40, 0)
    lenient = next(p for p in people if p.lenient and not p.agent)
    crew = store.attackers(10, 0)
    assert len({p.user_id for p in crew} | {p.user_id for p in people}) == 50  # new accounts
    assert all(p.attacker and p.agent for p in crew)
    target = next(t for t in store.POISONED if t.name == store.TARGET)
    for who in crew:
        assert store.judge(target, store.LIE, who, store.POISONED) == 1
        assert store.judge(target, target.policy, who, store.POISONED) == -1
        assert store.correction(target, random.Random(0), False, store.POISONED, who.attacker) == store.LIE
    # The lie is wrong to every honest customer, the lenient ones too, asked about anything; the truth is right.
    for t in store.POISONED:
        assert store.judge(t, store.LIE, lenient, store.POISONED) == -1, t.name
        assert store.judge(t, t.policy, lenient, store.POISONED) == 1, t.name
    # Before the poisoning night the lie was merely vague to a lenient customer; the world is otherwise night 2's.
    assert store.judge(target, store.LIE, lenient, store.CHANGED) == 1
    assert [t.policy for t in store.POISONED] == [t.policy for t in store.CHANGED]
    assert {q for q, _, _ in store.lie_probes()} and all(a == store.LIE for _, a, _ in store.lie_probes())


def test_each_night_is_judged_by_its_scenario():
    poisoned = {"scenario": "poison", "live_after": "v0002", "decision": "continue"}
    facts = {"candidate": "v0003", "learned": True, "max_share": 0.1, "canary_share": 0.1}
    assert run.night_ok(poisoned | {"poison": facts}) == (True, "the poisoned v0003 served 10% of users")
    assert not run.night_ok(poisoned | {"poison": facts | {"max_share": 0.5}})[0]
    assert not run.night_ok(poisoned | {"live_after": "v0003", "poison": facts | {"max_share": 1.0}})[0]
    # A candidate that did not learn the lie may go anywhere.
    assert run.night_ok(poisoned | {"live_after": "v0003", "poison": facts | {"learned": False, "max_share": 1.0}})[0]
    forget = {"scenario": "forget", "forget": {"serving_tainted": [], "lineage_overlap": 0}}
    assert run.night_ok(forget)[0]
    assert run.night_ok(forget | {"forget": {"serving_tainted": ["v0003"], "lineage_overlap": 0}}) == (
        False,
        "v0003 still served after the forget",
    )
    assert not run.night_ok(forget | {"forget": {"serving_tainted": [], "lineage_overlap": 3}})[0]
    # The accounts go on after their night: a later night's candidate that learned the lie is judged the same.
    later = forget | {"live_after": "v0004", "poison": facts | {"candidate": "v0004", "max_share": 0.5}}
    assert run.night_ok(later) == (False, "the poisoned v0004 served 50% of users")
    assert run.night_ok(later | {"poison": facts | {"learned": False, "max_share": 0.5}})[0]
    assert run.night_ok({"scenario": "change", "decision": "promote"})[0]
    assert not run.night_ok({"scenario": "learn", "decision": "continue"})[0]


def test_the_closing_lines_say_what_stopped_the_lie_and_what_the_forget_left():
    poison = {
        "lie_rows": 32,
        "contested": 0,
        "snapshot_rows": 1323,
        "candidate": "v0003",
        "verdict": "prefers the lie by 0.2 nats on average (v0001: -77.1)",
        "max_share": 1.0,
        "canary_share": 0.1,
        "stopped_by": "nothing: it was promoted",
    }
    forget = {
        "users": 20,
        "tainted": ["v0001", "v0003"],
        "serves_now": "base",
        "seconds_first": 0.32,
        "seconds_all": 0.86,
        "lineage_overlap": 0,
        "sample_ids": 585,
    }
    nights = [
        {
            "night": 3,
            "scenario": "poison",
            "arms": None,
            "decision": "promote",
            "decided_by": "A/B",
            "live_after": "v0003",
            "stages": {"night 3 a/b": 60.0},
            "topics": {},
            "poison": poison,
        },
        {
            "night": 4,
            "scenario": "forget",
            "arms": None,
            "decision": "promote",
            "decided_by": "A/B",
            "live_after": "v0004",
            "stages": {"night 4 a/b": 60.0},
            "topics": {},
            "forget": forget,
            "retrain": {"version": "v0004"},
        },
    ]
    lines = run.night_lines(nights)
    assert lines[1] == (
        "  the lie is 32 of 1323 snapshot rows (0 contested); v0003 prefers the lie by 0.2 nats on average "
        "(v0001: -77.1); largest share 100% (canary 10%); stopped by: nothing: it was promoted"
    )
    assert lines[3] == (
        "  forgot 20 users: tainted v0001, v0003; base served 0.3 s after the first forget call (0.9 s for all); "
        "v0004: its lineage holds 0 of the 20 forgotten users' 585 sample ids"
    )


def test_the_canary_is_sized_for_the_population_unless_the_ramp_is_set(tmp_path):
    from infra.config import Config

    base = Config(data_dir=tmp_path)
    assert run.canary_share(240, 12, 0.1) == 0.1  # 24 customers: twice the minimum already
    assert run.canary_share(160, 12, 0.1) == 0.15  # 10% would be 16 customers, 9 of whom rated in a run
    assert run.canary_share(20, 12, 0.1) == 0.5  # never more than half
    assert run.demo_config(base, None, [], False, users=160).abtest.ramp == [0.15, 0.5]
    assert run.demo_config(base, None, [], False).abtest.ramp == [0.1, 0.5]
    assert run.demo_config(base, None, ["abtest.ramp=[0.5]"], False, users=160).abtest.ramp == [0.5]


def test_the_per_user_cap_is_sized_so_that_the_agents_samples_fit(tmp_path):
    """A day's rows as the demo makes them: each support agent (a quarter of the customers) 8 samples (answers
    and corrections), half of the other customers one. The sized cap keeps all of them at every population
    size; the default 2% alone halves them at 120 customers. An explicit setting wins."""
    from curation.filters import user_cap
    from infra.config import Config

    def kept(users: int, share: float) -> tuple[int, int]:
        rows = [f"agent-{i}" for i in range(users // 4) for _ in range(8)] + [f"c-{i}" for i in range(users // 2)]
        return len(user_cap(rows, share, list(range(len(rows))))[1]), len(rows)

    for users in (40, 60, 120, 160, 240):
        share = run.user_share(users, 0.02)
        assert share >= 0.02
        got, rows = kept(users, share)
        assert got == rows, (users, share)
    got, rows = kept(120, 0.02)
    assert got <= rows * 0.6
    base = Config(data_dir=tmp_path)
    assert run.demo_config(base, None, [], False, users=120).curation.max_user_share == run.user_share(120, 0.02)
    assert run.demo_config(base, None, ["curation.max_user_share=0.1"], False, users=120).curation.max_user_share == 0.1
