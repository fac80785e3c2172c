"""Experiments on stored traffic: ramp, promote, roll back on a guardrail, SRM or taint; serving's routing
follows; the dashboard shows why (in headless Chromium)."""

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from abtest.assignment import assign
from abtest.config import AbtestConfig
from infra import ab as ab_
from infra.config import Config
from retrain import registry
from tests.helpers.events import chat, rate, store

CFG = AbtestConfig(ramp=[0.2, 0.5], min_users_per_arm=20, min_duration_s=0)


@pytest.fixture
def two_adapters(db, tmp_path):
    for version, status in (("v0001", "live"), ("v0002", "candidate")):
        (tmp_path / version).mkdir()
        registry.register(
            db,
            version,
            status=status,
            parent=None,
            base_model="b",
            base_hash=None,
            snapshot_id=None,
            path=str(tmp_path / version),
            metrics={},
        )
    return Config(data_dir=tmp_path, abtest=CFG)


def traffic(
    db,
    scrub,
    exp,
    users: range,
    up: dict,
    latency: dict | None = None,
    force: str | None = None,
    seed=0,
    blank: str | None = None,
):
    """One rated answer per user, served by the variant the assignment gives them (or `force`)."""
    rng = random.Random(seed)
    events = []
    split = [(exp.challenger, exp.share), (exp.incumbent, 1 - exp.share)]
    for u in users:
        user = f"user-{u:04d}"
        variant = force or assign(user, exp.salt, split)
        c = chat(user, f"Question {u}?", " " if variant == blank else f"Answer from {variant}.")
        c = c.model_copy(
            update={
                "variant": variant,
                "experiment_id": exp.experiment_id,
                "latency_ms": (latency or {}).get(variant, 100.0),
                "created_at": datetime.now(UTC),
            }
        )
        events += [c, rate(c, 1 if rng.random() < up[variant] else -1)]
    store(db, events, scrub)


def test_a_challenger_behind_stays_at_the_canary_share_until_the_test_decides(db, two_adapters, scrub_pool):
    """Guardrails hold and the difference is not significant, but the challenger is behind (it learned a false
    policy on one topic in nine): it must not reach more users. Ahead, the same sample ramps."""
    from abtest import experiment as ab

    cfg = two_adapters
    ab_.tick(cfg, db)
    exp = ab.get(db)
    traffic(db, scrub_pool.scrub, exp, range(150), {"v0001": 0.9, "v0002": 0.8})
    said = ab_.tick(cfg, db)
    assert ": continue: held at 20%: the challenger is behind" in said[-1], said
    assert ab.get(db).share == 0.2 and routing(cfg)["split"] == [["v0002", 0.2], ["v0001", 0.8]]
    traffic(db, scrub_pool.scrub, exp, range(150, 600), {"v0001": 0.8, "v0002": 0.95}, seed=1)
    said = ab_.tick(cfg, db)
    assert "ramp: guardrails hold and the challenger is not behind" in said[-1], said
    assert ab.get(db).share == 0.5


def routing(cfg):
    return json.loads((cfg.data_dir / "routing.json").read_text())


def test_a_better_challenger_ramps_up_then_is_promoted_and_serving_follows(db, two_adapters, scrub_pool):
    cfg = two_adapters
    said = ab_.tick(cfg, db)
    from abtest import experiment as ab

    exp = ab.get(db)
    assert said[0].startswith("started exp-0001-v0002") and exp.share == 0.2
    assert routing(cfg)["split"] == [["v0002", 0.2], ["v0001", 0.8]] and registry.get(db, "v0002")["status"] == "canary"
    traffic(db, scrub_pool.scrub, exp, range(200), {"v0001": 0.3, "v0002": 0.9})
    said = ab_.tick(cfg, db)
    assert "ramp" in said[-1] and routing(cfg)["split"] == [["v0002", 0.5], ["v0001", 0.5]]
    exp = ab.get(db)
    traffic(db, scrub_pool.scrub, exp, range(200, 400), {"v0001": 0.3, "v0002": 0.9}, seed=1)
    said = ab_.tick(cfg, db)
    assert ": promote: better" in said[-1], said
    assert registry.live(db)["version"] == "v0002" and registry.get(db, "v0001")["status"] == "retired"
    assert routing(cfg) == {
        "experiment_id": None,
        "salt": "flywheel",
        "split": [["v0002", 1.0]],
        "adapters": {"v0002": str(cfg.data_dir / "v0002")},
    }
    history = ab.decisions(db, exp.experiment_id)
    assert [d["decision"] for d in history] == ["continue", "ramp", "promote"]
    numbers = history[-1]["numbers"]
    assert numbers["arms"]["challenger"]["up_rate"] > numbers["arms"]["incumbent"]["up_rate"]
    assert numbers["msprt"] >= 20 and numbers["srm_p"] > 0.001
    assert registry.live_at(db, datetime.now(UTC) + timedelta(seconds=1)) == "v0002"


def test_a_guardrail_breach_rolls_back(db, two_adapters, scrub_pool):
    from abtest import experiment as ab

    cfg = two_adapters
    ab_.tick(cfg, db)
    traffic(
        db,
        scrub_pool.scrub,
        ab.get(db),
        range(300),
        {"v0001": 0.5, "v0002": 0.6},
        latency={"v0001": 100.0, "v0002": 900.0},
    )
    said = ab_.tick(cfg, db)
    assert "rollback: guardrail breached: p95 latency" in said[-1]
    assert registry.get(db, "v0002")["status"] == "rolled_back" and registry.live(db)["version"] == "v0001"
    assert routing(cfg)["split"] == [["v0001", 1.0]]


def test_blank_answers_breach_their_guardrail(db, two_adapters, scrub_pool):
    from abtest import experiment as ab

    cfg = two_adapters
    ab_.tick(cfg, db)
    traffic(db, scrub_pool.scrub, ab.get(db), range(300), {"v0001": 0.5, "v0002": 0.6}, blank="v0002")
    said = ab_.tick(cfg, db)
    assert "rollback: guardrail breached: empty answers" in said[-1]
    assert routing(cfg)["split"] == [["v0001", 1.0]]


def test_a_sample_ratio_mismatch_blocks_every_decision(db, two_adapters, scrub_pool):
    from abtest import experiment as ab

    cfg = two_adapters
    ab_.tick(cfg, db)
    exp = ab.get(db)
    traffic(db, scrub_pool.scrub, exp, range(150), {"v0001": 0.3, "v0002": 0.9}, force="v0002")  # broken router
    traffic(db, scrub_pool.scrub, exp, range(150, 300), {"v0001": 0.3, "v0002": 0.9}, force="v0001")
    said = ab_.tick(cfg, db)
    assert "rollback: sample-ratio mismatch" in said[-1]
    assert registry.live(db)["version"] == "v0001"


def test_a_tainted_challenger_is_never_promoted(db, two_adapters, scrub_pool):
    from abtest import experiment as ab

    cfg = two_adapters
    ab_.tick(cfg, db)
    db.execute("UPDATE adapters SET tainted = true WHERE version = 'v0002'")
    traffic(db, scrub_pool.scrub, ab.get(db), range(300), {"v0001": 0.1, "v0002": 0.99})
    said = ab_.tick(cfg, db)
    assert "rollback: v0002 is tainted" in said[-1] and registry.live(db)["version"] == "v0001"
    assert ab_.tick(cfg, db) == []  # and no new experiment starts for it


def test_the_dashboard_shows_the_chart_and_why_in_chromium(db, two_adapters, scrub_pool, browser):
    from selenium.webdriver.common.by import By

    from abtest import experiment as ab
    from infra.services import ReviewStore
    from serving import ids
    from tests.conftest import pages_app, serve_in_thread
    from tests.helpers.browser import click

    cfg = two_adapters
    ab_.tick(cfg, db)
    for k in range(2):  # a ramp, then a promotion
        traffic(db, scrub_pool.scrub, ab.get(db), range(k * 200, (k + 1) * 200), {"v0001": 0.3, "v0002": 0.9}, seed=k)
        ab_.tick(cfg, db)
    app = pages_app(ReviewStore(db, cfg), {"lead": ids.hash_key("lead-key")})
    with serve_in_thread(app) as url:
        browser.get(url + "/ab")
        browser.find_element(By.ID, "key").send_keys("lead-key")
        click(browser, browser.find_element(By.ID, "sign-in"))
        assert browser.find_element(By.ID, "live").text == "v0002"
        lines = browser.find_elements(By.CSS_SELECTOR, "svg.rates polyline.series")
        assert len(lines) == 2 and all(len(line.get_attribute("points").split()) >= 2 for line in lines)
        assert all(line.size["width"] > 100 for line in lines)  # drawn across the chart, not collapsed
        assert browser.find_element(By.CSS_SELECTOR, "svg.statistic line.threshold")
        decisions = browser.find_element(By.CSS_SELECTOR, "table.decisions").text
        assert "promote" in decisions and "better" in decisions and "ramp" in decisions
        assert "v0002" in browser.find_element(By.ID, "history").text
        browser.save_screenshot(str(cfg.data_dir / "ab.png"))
        # Free text on the dashboard (an operator's reason) is shown as text, never run.
        from tests.helpers.browser import XSS

        registry.set_status(db, "v0001", "retired", f"operator note {XSS}")
        browser.get(url + "/ab")
        assert "operator note <script>document.title" in browser.find_element(By.ID, "history").text
        assert browser.title == "Flywheel A/B"


def test_the_history_across_nights_marks_promotions_and_skips_in_chromium(db, two_adapters, scrub_pool, browser):
    """Day 1 on v0001, a night that makes v0002 a candidate, day 2 an A/B test that promotes it, a night that
    skips, day 3 on v0002 and a forget that taints v0001: the page draws three days and marks the promotion,
    the skip and the forget."""
    from selenium.webdriver.common.by import By

    from abtest import experiment as ab
    from curation import audit
    from infra.services import ReviewStore
    from serving import ids
    from tests.conftest import pages_app, serve_in_thread
    from tests.helpers.browser import click

    cfg = two_adapters
    exp_cfg = two_adapters.model_copy(update={"abtest": CFG.model_copy(update={"auto_start": False})})
    live_only = ab.Experiment("none", "v0001", "v0001", "salt", 0.0, 0, "none", datetime.now(UTC), datetime.now(UTC))
    traffic(db, scrub_pool.scrub, live_only, range(0, 40), {"v0001": 0.3}, force="v0001", seed=7)
    audit.append(db, "retrain", "candidate", "v0002", {"snapshot_id": "snap-1"})
    ab_.tick(cfg, db)
    for k in range(2):
        traffic(db, scrub_pool.scrub, ab.get(db), range(k * 200, (k + 1) * 200), {"v0001": 0.3, "v0002": 0.9}, seed=k)
        ab_.tick(exp_cfg, db)
    assert registry.live(db)["version"] == "v0002"
    audit.append(db, "retrain", "skipped", None, {"reason": "3 new approved samples, fewer than 20"})
    live_only = ab.Experiment("none", "v0002", "v0002", "salt", 0.0, 0, "none", datetime.now(UTC), datetime.now(UTC))
    traffic(db, scrub_pool.scrub, live_only, range(500, 540), {"v0002": 0.9}, force="v0002", seed=8)
    registry.taint(db, ["v0001"], "a user v0001 trained on was forgotten")  # day 3: a forget
    app = pages_app(ReviewStore(db, cfg), {"lead": ids.hash_key("lead-key")})
    with serve_in_thread(app) as url:
        browser.get(url + "/ab")
        browser.find_element(By.ID, "key").send_keys("lead-key")
        click(browser, browser.find_element(By.ID, "sign-in"))
        line = browser.find_element(By.CSS_SELECTOR, "svg.days polyline.series")
        assert len(line.get_attribute("points").split()) == 3 and line.size["width"] > 100
        marks = [m.get_attribute("class") for m in browser.find_elements(By.CSS_SELECTOR, "svg.days g.mark")]
        assert marks == ["mark promote", "mark skipped", "mark forget"]
        chart = browser.find_element(By.CSS_SELECTOR, "svg.days").rect
        for label in browser.find_elements(By.CSS_SELECTOR, "svg.days g.mark text"):  # none cut off at an edge
            box = label.rect
            assert chart["x"] <= box["x"] and box["x"] + box["width"] <= chart["x"] + chart["width"], label.text
        rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "table.days tr")][1:]
        assert len(rows) == 3 and rows[0].startswith("1 v0001") and "candidate v0002" in rows[0]
        assert "promote exp-0001-v0002" in rows[1] and "skipped: 3 new approved samples" in rows[1]
        assert rows[2].startswith("3 v0002") and "forget: v0001 tainted" in rows[2]
        lineage = browser.find_element(By.CSS_SELECTOR, "table.lineage").text
        assert "v0002 base" in lineage and "live" in lineage
        browser.save_screenshot(str(cfg.data_dir / "nights.png"))


def timed_answers(exp, plan, rng) -> list:
    """Rated answers of an experiment: (variant, when, latency range in ms, how many, tokens each) per row."""
    events, u = [], 0
    for variant, at, (lo, hi), n, tokens in plan:
        for _ in range(n):
            c = chat(f"user-{u:04d}", f"Question {u}?", f"Answer from {variant}.").model_copy(
                update={
                    "variant": variant,
                    "experiment_id": exp.experiment_id,
                    "latency_ms": rng.uniform(lo, hi),
                    "completion_tokens": tokens,
                    "created_at": at,
                }
            )
            events += [c, rate(c, 1)]
            u += 1
    return events


@pytest.mark.parametrize(("challenger_busy", "breached"), [((18_000, 22_000), False), ((30_000, 34_000), True)])
def test_latency_is_compared_within_the_same_minute(db, two_adapters, scrub_pool, challenger_busy, breached):
    """A busy minute slows both arms (they share the server's batches). A small challenger arm with more of
    its answers in that minute has the larger overall p95 (21 s against 12 s, over the 25% margin): that is
    not the challenger's doing. Slower than the incumbent within the same minute is."""
    from abtest import experiment as ab

    cfg = two_adapters
    ab_.tick(cfg, db)
    exp, rng, now = ab.get(db), random.Random(2), datetime.now(UTC)
    quiet, busy = now - timedelta(seconds=70), now - timedelta(seconds=5)  # two different minutes
    plan = [
        (exp.incumbent, quiet, (8_000, 12_000), 380, None),
        (exp.incumbent, busy, (18_000, 22_000), 20, None),
        (exp.challenger, quiet, (8_000, 12_000), 10, None),
        (exp.challenger, busy, challenger_busy, 20, None),
    ]
    store(db, timed_answers(exp, plan, rng), scrub_pool.scrub)

    numbers = ab.evaluate(db, exp, cfg.abtest).numbers
    arms = numbers["arms"]
    assert arms["challenger"]["p95_latency_ms"] > 1.25 * arms["incumbent"]["p95_latency_ms"]  # the bare p95s
    latency = next(g for g in numbers["guardrails"] if g["name"] == "p95 latency")
    assert latency["ok"] is not breached, latency["why"]
    if breached:
        assert latency["why"].startswith("p95 latency: 20 of 30 challenger answers took over 1.25x")


@pytest.mark.parametrize(
    ("tokens", "known", "breached"),
    [(40, True, False), (20, True, True), (40, False, True)],
    ids=["longer-answers", "slower-per-token", "tokens-unknown"],
)
def test_latency_is_compared_per_answer_token_when_every_answer_says_its_tokens(
    db, two_adapters, scrub_pool, tokens, known, breached
):
    """The incumbent answers in 20 tokens and 2 s; the challenger takes 4 s. In 40 tokens that is the same
    speed (a longer policy text), in 20 it is slower. When an answer does not say its tokens (a log from
    before they were recorded), whole answers are compared, and the longer ones breach."""
    from abtest import experiment as ab

    cfg = two_adapters
    ab_.tick(cfg, db)
    exp, rng, at = ab.get(db), random.Random(3), datetime.now(UTC) - timedelta(seconds=5)
    plan = [(exp.incumbent, at, (1_800, 2_200), 100, 20), (exp.challenger, at, (3_600, 4_400), 30, tokens)]
    events = timed_answers(exp, plan, rng)
    if not known:  # one incumbent answer from before tokens were logged
        events[0] = events[0].model_copy(update={"completion_tokens": None})
    store(db, events, scrub_pool.scrub)

    latency = next(g for g in ab.evaluate(db, exp, cfg.abtest).numbers["guardrails"] if g["name"] == "p95 latency")
    assert latency["ok"] is not breached, latency["why"]
    assert ("per answer token" in latency["why"]) is known
