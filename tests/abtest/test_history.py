"""The history across nights: days end at the nightly runs; live answers only; marks where they happened."""

from abtest import history


def test_days_end_at_nightly_runs_and_carry_their_marks():
    runs = [(100.0, "candidate", "v0001", None), (200.0, "skipped", None, "3 new approved samples, fewer than 20")]
    rated = [(10.0 + i, f"u{i}", "base", int(i % 4 == 0)) for i in range(8)]  # day 1: base, 25% up
    rated += [(150.0 + i, f"u{i}", "v0001", int(i % 4 != 0)) for i in range(8)]  # day 2: v0001, 75% up
    rated += [(250.0, "u1", "v0001", 1)]  # day 3, after the skipped night
    decisions = [(160.0, "promote", "exp-0001-v0001", "better")]
    taints = [(260.0, "v0001"), (260.0, "v0001"), (261.0, "base-never")]  # day 3: a forget
    days = history.days(runs, rated, decisions, taints=taints, tau=0.05, alpha=0.05)
    assert [d["day"] for d in days] == [1, 2, 3]
    assert [d["up_rate"] for d in days] == [0.25, 0.75, 1.0] and [d["users"] for d in days] == [8, 8, 1]
    assert days[0]["variants"] == ["base"] and days[1]["variants"] == ["v0001"]
    assert days[0]["ci"][0] <= 0.25 <= days[0]["ci"][1]
    assert days[0]["night"] == {"status": "candidate", "version": "v0001", "reason": None}
    assert days[1]["decisions"] == [{"decision": "promote", "experiment": "exp-0001-v0001", "reason": "better"}]
    assert days[1]["night"]["status"] == "skipped" and days[2]["night"] is None
    assert [d["tainted"] for d in days] == [[], [], ["base-never", "v0001"]]
    assert history.days([], [], [], tau=0.05, alpha=0.05) == [
        {
            "day": 1,
            "variants": [],
            "users": 0,
            "ratings": 0,
            "up_rate": None,
            "ci": None,
            "decisions": [],
            "tainted": [],
            "night": None,
        }
    ]


def test_a_mark_near_the_right_edge_is_labelled_leftwards():
    from serving.pages import W, days_chart

    day = {"up_rate": 0.5, "ci": [0.4, 0.6], "night": None, "tainted": []}
    days = [
        {**day, "day": 1, "decisions": [{"decision": "promote", "experiment": "exp-0001-v0001"}]},
        {**day, "day": 2, "decisions": []},
        {**day, "day": 3, "decisions": [{"decision": "rollback", "experiment": "exp-0002-v0002"}]},
    ]
    first, last = days_chart(days)["marks"]
    assert first["anchor"] == "start" and first["tx"] > first["x"]
    assert last["anchor"] == "end" and last["tx"] < last["x"] and last["x"] > W * 0.9


def test_labels_of_neighbouring_days_take_turns_in_three_rows_and_a_forget_is_marked():
    from serving.pages import days_chart

    day = {"up_rate": 0.5, "ci": [0.4, 0.6], "night": None, "tainted": []}
    days = [
        {**day, "day": 1, "decisions": []},
        {**day, "day": 2, "decisions": [{"decision": "promote", "experiment": "exp-0001-v0001"}]},
        {**day, "day": 3, "decisions": [{"decision": "rollback", "experiment": "exp-0002-v0002"}]},
        {**day, "day": 4, "decisions": [{"decision": "promote", "experiment": "exp-0003-v0003"}]},
        {**day, "day": 5, "decisions": [], "tainted": ["v0001", "v0003"]},
    ]
    marks = days_chart(days)["marks"]
    assert [m["kind"] for m in marks] == ["promote", "rollback", "promote", "forget"]
    assert [m["y"] for m in marks] == [22, 34, 46, 22]  # day 5's label is three days from day 2's
    assert marks[-1]["label"] == "forget: v0001, v0003 tainted"
