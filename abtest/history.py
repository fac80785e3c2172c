"""The dashboard's history across nights: the thumbs-up rate of what served live, one point per day, with the
night's retrain, the day's promotions and rollbacks, and the adapters a forget tainted marked.

A "day" is the time between two nightly runs (whatever the clock says: the demo's nights are minutes apart),
so a run, skipped or not, closes a day. Live answers are those not given by a running experiment's
challenger. Plain values in, plain values out; `infra.services` reads the rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from abtest import stats


def days(
    runs: list[tuple[float, str, str | None, str | None]],
    rated: list[tuple[float, str, str, int]],
    decisions: list[tuple[float, str, str, str]],
    *,
    taints: list[tuple[float, str]] | None = None,
    tau: float,
    alpha: float,
) -> list[dict[str, Any]]:
    """One record per day, oldest first.

    runs: (time, status, version, reason) of each nightly run (candidate, rejected, failed, skipped);
    rated: (time, user, variant, 1 up / 0 down) of each rated live answer;
    decisions: (time, decision, experiment, reason) of each promotion or rollback;
    taints: (time, version) of each adapter a forget flagged as trained on a forgotten user's data."""
    taints = taints or []
    edges = [-math.inf, *(r[0] for r in runs), math.inf]
    out = []
    for k in range(len(edges) - 1):
        lo, hi = edges[k], edges[k + 1]
        mine = [r for r in rated if lo <= r[0] < hi]
        rates = stats.user_rates(np.array([r[1] for r in mine], dtype=str), np.array([float(r[3]) for r in mine]))
        mean, var = stats.mean_var(rates)
        radius = float(stats.confidence_radius(var, tau, alpha)) if len(rates) else None
        out.append(
            {
                "day": k + 1,
                "variants": sorted({r[2] for r in mine}),
                "users": len(rates),
                "ratings": len(mine),
                "up_rate": round(mean, 4) if len(rates) else None,
                "ci": [round(max(0.0, mean - radius), 4), round(min(1.0, mean + radius), 4)] if radius else None,
                "decisions": [
                    {"decision": d[1], "experiment": d[2], "reason": d[3]} for d in decisions if lo <= d[0] < hi
                ],
                "tainted": sorted({t[1] for t in taints if lo <= t[0] < hi}),
                "night": dict(zip(("status", "version", "reason"), runs[k][1:])) if k < len(runs) else None,
            }
        )
    return out
