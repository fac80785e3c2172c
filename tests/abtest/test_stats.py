"""Validity of the always-valid test by simulation (vectorised: thousands of experiments in seconds)."""

import math

import numpy as np

from abtest import stats

ALPHA, TAU, BATCH = 0.05, 0.05, 100


def simulate(n_exp: int, users_per_arm: int, lift: float, seed: int) -> np.ndarray:
    """Whether each simulated experiment promoted the challenger, looking after every batch of users.

    Users are heterogeneous (their own up-rate ~ Beta around the arm's rate) and rate 1 + Poisson(1)
    answers each; the statistic uses per-user rates, as the service does."""
    rng = np.random.default_rng(seed)

    def arm(p: float) -> np.ndarray:
        k = 1 + rng.poisson(1.0, size=(n_exp, users_per_arm))
        return rng.binomial(k, rng.beta(p * 8, (1 - p) * 8, size=(n_exp, users_per_arm))) / k

    inc, ch = arm(0.5), arm(0.5 + lift)
    looks = np.arange(BATCH, users_per_arm + 1, BATCH)

    def prefix(x):
        s, s2 = np.cumsum(x, axis=1)[:, looks - 1], np.cumsum(x * x, axis=1)[:, looks - 1]
        mean = s / looks
        return mean, np.maximum((s2 - looks * mean * mean) / (looks - 1), 1e-4) / looks

    (mi, vi), (mc, vc) = prefix(inc), prefix(ch)
    diff, lam = mc - mi, stats.msprt(mc - mi, vi + vc, TAU)
    promote, rollback = (lam >= 1 / ALPHA) & (diff > 0), (lam >= 1 / ALPHA) & (diff < 0)
    first_promote = np.where(promote.any(1), promote.argmax(1), 10**9)
    first_rollback = np.where(rollback.any(1), rollback.argmax(1), 10**9)
    return first_promote < first_rollback


def test_a_a_false_promotions_stay_under_alpha_with_peeking_after_every_batch():
    promoted = simulate(2000, 3000, 0.0, seed=1)
    rate = promoted.mean()
    mc_error = math.sqrt(rate * (1 - rate) / len(promoted))
    print(f"A/A: {rate:.4f} false promotions over 2000 experiments, 30 looks each (Monte Carlo error {mc_error:.4f})")
    assert rate + 2 * mc_error <= ALPHA


def test_power_a_five_point_lift_is_promoted_within_2000_users_per_arm():
    promoted = simulate(1000, 2000, 0.05, seed=2)
    print(f"power: {promoted.mean():.3f} of +5-point experiments promoted within 2,000 users per arm")
    assert promoted.mean() >= 0.8


def test_per_user_aggregation_keeps_one_loud_user_from_counting_many_times():
    users = np.array(["loud"] * 500 + [f"u{i}" for i in range(50)])
    ups = np.array([1.0] * 500 + [0.0] * 50)
    rates = stats.user_rates(users, ups)
    assert len(rates) == 51 and abs(rates.mean() - 1 / 51) < 1e-9  # not 500/550


def test_sample_ratio_mismatch_is_caught_and_a_fair_split_is_not():
    assert stats.srm_p([1000, 1000], [0.5, 0.5]) > 0.9
    assert stats.srm_p([1100, 900], [0.5, 0.5]) < 0.001
    assert stats.srm_p([905, 95], [0.9, 0.1]) > 0.05
    rng = np.random.default_rng(3)
    fair = [stats.srm_p([int(n), 2000 - int(n)], [0.5, 0.5]) for n in rng.binomial(2000, 0.5, size=2000)]
    assert np.mean(np.array(fair) < 0.001) < 0.005  # the check itself rarely cries wolf


def test_confidence_sequence_covers_the_truth_at_every_look():
    rng = np.random.default_rng(4)
    x = rng.binomial(1, 0.3, size=(2000, 2000)).astype(float)
    looks = np.arange(50, 2001, 50)
    mean = np.cumsum(x, axis=1)[:, looks - 1] / looks
    var = np.maximum(mean * (1 - mean), 1e-4) / looks
    radius = stats.confidence_radius(var, 0.05, ALPHA)
    missed = (np.abs(mean - 0.3) > radius).any(axis=1).mean()
    assert missed <= ALPHA
