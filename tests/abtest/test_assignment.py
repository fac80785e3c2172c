from collections import Counter

from abtest.assignment import assign, bucket


def test_sticky_and_salted():
    split = [("base", 0.9), ("v0002", 0.1)]
    assert all(assign(f"u{i}", "exp-1", split) == assign(f"u{i}", "exp-1", split) for i in range(100))
    assert [bucket(f"u{i}", "a") for i in range(50)] != [bucket(f"u{i}", "b") for i in range(50)]


def test_shares_are_respected():
    counts = Counter(assign(f"user-{i}", "exp-7", [("base", 0.9), ("v0002", 0.1)]) for i in range(20_000))
    assert abs(counts["v0002"] / 20_000 - 0.1) < 0.01  # 4.7 standard errors


def test_ramping_up_only_moves_users_toward_the_challenger():
    small = {u: assign(u, "s", [("v2", 0.1), ("base", 0.9)]) for u in (f"u{i}" for i in range(2000))}
    large = {u: assign(u, "s", [("v2", 0.5), ("base", 0.5)]) for u in small}
    assert all(large[u] == "v2" for u, v in small.items() if v == "v2")
