"""Experiments on live traffic: start, evaluate, decide (promote / roll back / continue), apply.

The numbers come from what ingest stored: every chat names its variant and experiment, every rating its
response. A decision is appended to `decisions` with the numbers behind it. Applying one changes the
registry; `routing` gives the live split as an `abtest.routing.Routing`, which the control process publishes
as `routing.json` (atomically) and serving follows without restart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, SupportsFloat

import numpy as np

from abtest import stats
from abtest.config import AbtestConfig
from abtest.routing import Routing

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

MIN_WINDOW_ANSWERS = 20  # incumbent answers in a window for its p95 to be a yardstick

RATED = """
SELECT c.variant, c.user_id, c.latency_ms, length(trim(c.response)) = 0, l.rating, c.created_at >= ? AS in_stage,
  epoch(c.created_at), c.completion_tokens
FROM chats c LEFT JOIN latest_feedback l ON l.response_id = c.response_id AND l.user_id = c.user_id
WHERE c.experiment_id = ?
"""


@dataclass
class Experiment:
    experiment_id: str
    incumbent: str
    challenger: str
    salt: str
    share: float
    stage: int
    status: str
    started_at: datetime
    stage_started_at: datetime


@dataclass
class Evaluation:
    decision: str  # promote | rollback | continue | ramp
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


EXPERIMENTS = (
    "SELECT experiment_id, incumbent, challenger, salt, challenger_share, stage, status, started_at, "
    "coalesce(stage_started_at, started_at) FROM experiments WHERE {where} ORDER BY started_at DESC"
)


def get(con: DuckDBPyConnection, experiment_id: str | None = None) -> Experiment | None:
    """The named experiment, or the running one."""
    where, args = ("experiment_id = ?", [experiment_id]) if experiment_id else ("status = 'running'", [])
    row = con.execute(EXPERIMENTS.format(where=where) + " LIMIT 1", args).fetchone()
    return None if row is None else Experiment(*row)


def routing(exp: Experiment | None, live: str, paths: dict[str, str]) -> Routing:
    """The live split for serving: the running experiment's two arms, or the live version alone."""
    if exp is None or exp.status != "running":
        return Routing.live(live, paths)
    return Routing.experiment(exp.experiment_id, exp.salt, exp.challenger, exp.incumbent, exp.share, paths)


def start(
    con: DuckDBPyConnection, incumbent: str, challenger: str, cfg: AbtestConfig, now: datetime | None = None
) -> Experiment:
    now = now or datetime.now(UTC)
    if get(con) is not None:
        raise ValueError("an experiment is already running: decide it first")
    [(n,)] = con.execute("SELECT count(*) + 1 FROM experiments").fetchall()
    exp_id = f"exp-{n:04d}-{challenger}"
    con.execute(
        "INSERT INTO experiments (experiment_id, incumbent, challenger, salt, challenger_share, status, started_at, "
        "stage, stage_started_at) VALUES (?, ?, ?, ?, ?, 'running', ?, 0, ?)",
        [exp_id, incumbent, challenger, exp_id, cfg.ramp[0], now, now],
    )
    started = get(con, exp_id)
    assert started is not None  # inserted just above
    return started


def _arm(
    mine: list[tuple[Any, ...]], variant: str, cfg: AbtestConfig
) -> tuple[dict[str, Any], tuple[float, int, float]]:
    """One arm's numbers from its rows of RATED, and (mean of per-user up-rates, users, their sum of squared
    deviations)."""
    rated = [r for r in mine if r[4] is not None]
    ups = np.array([1.0 if r[4] == 1 else 0.0 for r in rated])
    rates = stats.user_rates(np.array([r[1] for r in rated], dtype=str), ups)
    mean, var = stats.mean_var(rates)
    radius = float(stats.confidence_radius(var, cfg.tau, cfg.alpha)) if len(rates) else None
    return {
        "variant": variant,
        "chats": len(mine),
        "stage_users": len({r[1] for r in mine if r[5]}),
        "users": len(rates),
        "ratings": len(rated),
        "ups": int(ups.sum()),
        "up_rate": _num(mean),
        "ci": [_num(max(0.0, mean - radius)), _num(min(1.0, mean + radius))] if radius is not None else [None, None],
        "rating_rate": _num(len(rated) / len(mine)) if mine else None,
        "p95_latency_ms": _num(stats.p95(np.array([r[2] for r in mine if r[2] is not None]))),
        "empty_rate": _num(sum(1 for r in mine if r[3]) / len(mine)) if mine else None,
    }, (mean, len(rates), float(np.sum((rates - mean) ** 2)) if len(rates) else 0.0)


def _difference(numbers: dict[str, Any], estimate: dict[str, Any], cfg: AbtestConfig) -> tuple[float | None, float]:
    """The challenger's lead and the mSPRT statistic (written into `numbers` too)."""
    if not (numbers["arms"]["incumbent"]["users"] and numbers["arms"]["challenger"]["users"]):
        numbers.update(difference=None, difference_ci=None, msprt=0.0, p_value=1.0)
        return None, 0.0
    (m_i, n_i, ss_i), (m_c, n_c, ss_c) = estimate["incumbent"], estimate["challenger"]
    diff, var = m_c - m_i, float(stats.pooled_var(n_i, ss_i, n_c, ss_c))
    lam = float(stats.msprt(diff, var, cfg.tau))
    radius = float(stats.confidence_radius(var, cfg.tau, cfg.alpha))
    numbers.update(
        difference=_num(diff),
        difference_ci=[_num(diff - radius), _num(diff + radius)],
        msprt=_num(lam),
        p_value=_num(min(1.0, 1 / lam)) if lam > 0 else 1.0,
    )
    return diff, lam


def evaluate(
    con: DuckDBPyConnection, exp: Experiment, cfg: AbtestConfig, *, tainted: bool = False, now: datetime | None = None
) -> Evaluation:
    """The decision the numbers support now (nothing is changed here)."""
    now = now or datetime.now(UTC)
    rows = con.execute(RATED, [exp.stage_started_at, exp.experiment_id]).fetchall()
    numbers: dict[str, Any] = {
        "at": now.isoformat(timespec="seconds"),
        "share": exp.share,
        "stage": exp.stage,
        "alpha": cfg.alpha,
        "threshold": 1 / cfg.alpha,
        "arms": {},
    }
    estimate: dict[str, tuple[float, int, float]] = {}
    for variant, role in {exp.incumbent: "incumbent", exp.challenger: "challenger"}.items():
        numbers["arms"][role], estimate[role] = _arm([r for r in rows if r[0] == variant], variant, cfg)
    inc, ch = numbers["arms"]["incumbent"], numbers["arms"]["challenger"]
    diff, lam = _difference(numbers, estimate, cfg)
    srm = stats.srm_p([inc["stage_users"], ch["stage_users"]], [1 - exp.share, exp.share])
    numbers["srm_p"] = _num(srm)
    numbers["guardrails"] = _guardrails(inc, ch, _slow_answers(rows, exp.challenger, cfg), cfg)
    elapsed = (now - exp.started_at).total_seconds()
    numbers["elapsed_s"] = round(elapsed)
    return _decide(exp, cfg, numbers, tainted=tainted, diff=diff, lam=lam, srm=srm, elapsed=elapsed)


def _decide(
    exp: Experiment,
    cfg: AbtestConfig,
    numbers: dict[str, Any],
    *,
    tainted: bool,
    diff: float | None,
    lam: float,
    srm: float,
    elapsed: float,
) -> Evaluation:
    """The first rule that applies, safest first: taint, SRM, guardrails, worse, ramp, better, timeout."""
    inc, ch, guardrails = numbers["arms"]["incumbent"], numbers["arms"]["challenger"], numbers["guardrails"]
    if tainted:
        return Evaluation("rollback", f"{exp.challenger} is tainted (trained on a forgotten user's data)", numbers)
    if inc["stage_users"] + ch["stage_users"] >= 100 and srm < cfg.srm_p:
        return Evaluation(
            "rollback",
            f"sample-ratio mismatch (p={srm:.2g} < {cfg.srm_p:g}): assignment is broken, no decision can be trusted",
            numbers,
        )
    enough = min(inc["users"], ch["users"]) >= cfg.min_users_per_arm and elapsed >= cfg.min_duration_s
    breached = [g for g in guardrails if not g["ok"]]
    if enough and breached:
        return Evaluation("rollback", "guardrail breached: " + "; ".join(g["why"] for g in breached), numbers)
    if enough and lam >= 1 / cfg.alpha and diff is not None and diff < 0:
        return Evaluation(
            "rollback",
            f"worse: up-rate {ch['up_rate']:.3f} vs {inc['up_rate']:.3f} (mSPRT {lam:.3g} >= {1 / cfg.alpha:g})",
            numbers,
        )
    # Ramp only a challenger that is not behind so far: one that learned something false from a few accounts
    # loses a slice of its answers, too few to be significantly worse on a canary's users, and must not
    # reach more users while the test makes up its mind.
    if enough and exp.stage + 1 < len(cfg.ramp) and diff is not None and diff >= 0:
        return Evaluation(
            "ramp",
            f"guardrails hold and the challenger is not behind ({diff:+.3f}) with "
            f"{min(inc['users'], ch['users'])} users per arm: challenger share {exp.share:.0%} -> "
            f"{cfg.ramp[exp.stage + 1]:.0%}",
            numbers,
        )
    if enough and lam >= 1 / cfg.alpha and diff is not None and diff > 0:
        return Evaluation(
            "promote",
            f"better: up-rate {ch['up_rate']:.3f} vs {inc['up_rate']:.3f}, difference "
            f"{diff:+.3f} (mSPRT {lam:.3g} >= {1 / cfg.alpha:g}), guardrails hold",
            numbers,
        )
    if elapsed >= cfg.max_duration_s:
        return Evaluation("rollback", f"inconclusive after {elapsed / 86400:.1f} days: keep the incumbent", numbers)
    if not enough:
        return Evaluation(
            "continue",
            f"collecting: {inc['users']}/{ch['users']} rating users per arm (need "
            f"{cfg.min_users_per_arm}), {elapsed / 60:.0f} of {cfg.min_duration_s / 60:.0f} "
            "minutes",
            numbers,
        )
    if exp.stage + 1 < len(cfg.ramp):  # enough, and no ramp: the challenger is behind
        return Evaluation(
            "continue",
            f"held at {exp.share:.0%}: the challenger is behind ({diff:+.3f}), not significantly (mSPRT {lam:.3g} "
            f"< {1 / cfg.alpha:g})",
            numbers,
        )
    return Evaluation("continue", f"no significant difference yet (mSPRT {lam:.3g} < {1 / cfg.alpha:g})", numbers)


def _slow_answers(rows: list[tuple[Any, ...]], challenger: str, cfg: AbtestConfig) -> tuple[int, int, float, str]:
    """The latency guardrail's evidence: (challenger answers slower than latency_margin over the incumbent's
    p95 of the same time window, challenger answers in windows with enough incumbent answers to tell, the
    binomial p-value of that many if at most 5% were, the unit). Both arms share the batches of one server, so
    load moves both: a bare p95 of a small arm that happened to land in a busy minute breached in the 2-night
    demo (13 s vs 21 s; that minute the incumbent's own p95 was 19 s). Time is per answer token when every
    answer says how many it had: an answer twice as long takes about twice as long, and a challenger that
    learned a longer policy text breached on whole answers in the 4-night demo (15 of 115 over 1.25x)."""
    timed = [r for r in rows if r[2] is not None]
    per_token = bool(timed) and all(r[7] for r in timed)
    windows: dict[int, tuple[list[float], list[float]]] = {}
    for r in timed:
        inc, ch = windows.setdefault(int(r[6] // cfg.latency_window_s), ([], []))
        (ch if r[0] == challenger else inc).append(float(r[2]) / (r[7] if per_token else 1))
    slow = n = 0
    for inc, ch in windows.values():
        if len(inc) >= MIN_WINDOW_ANSWERS and ch:
            limit = stats.p95(np.array(inc)) * (1 + cfg.latency_margin)
            slow, n = slow + sum(x > limit for x in ch), n + len(ch)
    return slow, n, stats.binomial_sf(slow, n, 0.05), "per answer token" if per_token else "per answer"


def _guardrails(
    inc: dict[str, Any], ch: dict[str, Any], latency: tuple[int, int, float, str], cfg: AbtestConfig
) -> list[dict[str, Any]]:
    out = []
    a, b = inc["p95_latency_ms"], ch["p95_latency_ms"]
    if a is not None and b is not None:
        slow, n, p, unit = latency
        out.append(
            {
                "name": "p95 latency",
                "ok": not (n and p < cfg.alpha),
                "incumbent": a,
                "challenger": b,
                "why": f"p95 latency: {slow} of {n} challenger answers took over {1 + cfg.latency_margin:g}x the "
                f"incumbent's p95 time {unit} of the same {cfg.latency_window_s:g} s (5% expected at most; binomial "
                f"p={p:.2g} < {cfg.alpha:g})",
            }
        )
    a, b = inc["rating_rate"], ch["rating_rate"]
    if a is not None and b is not None:
        hi = b - a + _share_radius(a, inc["chats"], b, ch["chats"], cfg)
        out.append(
            {
                "name": "rating rate",
                "ok": hi >= -cfg.rating_rate_margin,
                "incumbent": a,
                "challenger": b,
                "why": f"rating rate {b:.1%} < {a:.1%} - {cfg.rating_rate_margin:.0%} (the difference's interval "
                f"ends at {hi:+.1%})",
            }
        )
    a, b = inc["empty_rate"], ch["empty_rate"]
    if a is not None and b is not None:
        lo = b - a - _share_radius(a, inc["chats"], b, ch["chats"], cfg)
        out.append(
            {
                "name": "empty answers",
                "ok": lo <= cfg.empty_answer_margin,
                "incumbent": a,
                "challenger": b,
                "why": f"empty answers {b:.1%} > {a:.1%} + {cfg.empty_answer_margin:.0%} (the difference's "
                f"interval starts at {lo:+.1%})",
            }
        )
    return out


def _share_radius(a: float, n_a: int, b: float, n_b: int, cfg: AbtestConfig) -> float:
    """Half-width of the always-valid interval of a difference of two shares of answers. A share guardrail
    breaches only when that interval lies beyond its margin: on a few dozen answers per arm, who happened to
    land in which arm (support agents rate every answer, customers 85%) moved the rating rate by 12 points,
    and a bare comparison rolled back good challengers."""
    var = max(a * (1 - a), 1e-4) / max(n_a, 1) + max(b * (1 - b), 1e-4) / max(n_b, 1)
    return float(stats.confidence_radius(var, cfg.tau, cfg.alpha))


def _num(x: SupportsFloat | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), 6)


def apply(
    con: DuckDBPyConnection, exp: Experiment, ev: Evaluation, cfg: AbtestConfig, now: datetime | None = None
) -> str | None:
    """Record the decision and change the experiment; returns the new live version when it ended."""
    now = now or datetime.now(UTC)
    con.execute(
        "INSERT INTO decisions (experiment_id, decided_at, decision, reason, numbers) VALUES (?, ?, ?, ?, ?)",
        [exp.experiment_id, now, ev.decision, ev.reason, json.dumps(ev.numbers)],
    )
    if ev.decision == "ramp":
        con.execute(
            "UPDATE experiments SET stage = stage + 1, challenger_share = ?, stage_started_at = ? "
            "WHERE experiment_id = ?",
            [cfg.ramp[exp.stage + 1], now, exp.experiment_id],
        )
        return None
    if ev.decision in ("promote", "rollback"):
        status = "promoted" if ev.decision == "promote" else "rolled_back"
        con.execute(
            "UPDATE experiments SET status = ?, ended_at = ? WHERE experiment_id = ?", [status, now, exp.experiment_id]
        )
        return exp.challenger if ev.decision == "promote" else exp.incumbent
    return None


def decisions(con: DuckDBPyConnection, experiment_id: str) -> list[dict[str, Any]]:
    rows = con.execute(
        "SELECT strftime(decided_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S'), decision, reason, numbers "
        "FROM decisions WHERE experiment_id = ? ORDER BY decided_at",
        [experiment_id],
    ).fetchall()
    return [{"at": r[0], "decision": r[1], "reason": r[2], "numbers": json.loads(r[3])} for r in rows]


def experiments(con: DuckDBPyConnection) -> list[Experiment]:
    """Every experiment, newest first."""
    return [Experiment(*row) for row in con.execute(EXPERIMENTS.format(where="true")).fetchall()]
