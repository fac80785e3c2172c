"""What the browser pages show: the compliance reviewer's `/review` page and the ML lead's `/ab` dashboard,
rendered from the templates in `serving/templates/` (Jinja, autoescaped: all chat text is HTML-escaped),
with the security headers every page answer carries. The routes are in `serving/routes/pages.py`."""

from __future__ import annotations

import math
from pathlib import Path

from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader

# Every page answer: no framing (clickjacking), no scripts at all, forms post only here, nothing cached or
# sent on as a referrer (the pages show chat text).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium send Origin: null, which same_origin refuses
}
TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True)
W, H = 720, 240
COLORS = {"incumbent": "#1f77b4", "challenger": "#ff7f0e"}


class BadDecision(ValueError):
    """Raised by a backend for a decision that cannot be recorded; its message is shown to the user, and
    `status` is the API's answer (404 for unknown samples, else 400)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def page(template: str, status: int = 200, **values) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(**values), status, headers=SECURITY_HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, 303, headers=SECURITY_HEADERS)


def pct(x) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def summary(details: dict) -> str:
    """An audit entry's details in one short line (sample ids counted, not listed)."""
    parts = [f"{k}={v}" for k, v in details.items() if k not in ("sample_ids", "deleted") and not isinstance(v, dict)]
    if "sample_ids" in details:
        parts.append(f"{len(details['sample_ids'])} samples")
    return ", ".join(parts)[:300]


def _arm_series(decisions: list[dict], role: str, x, y) -> dict:
    pts, lo, hi = [], [], []
    for i, d in enumerate(decisions):
        a = d["numbers"].get("arms", {}).get(role)
        if a and a.get("up_rate") is not None:
            pts.append((x(i), y(a["up_rate"])))
            lo.append((x(i), y(max(0.0, a["ci"][0] if a["ci"][0] is not None else a["up_rate"]))))
            hi.append((x(i), y(min(1.0, a["ci"][1] if a["ci"][1] is not None else a["up_rate"]))))
    variant = decisions[-1]["numbers"]["arms"][role]["variant"] if decisions else role
    return {
        "role": role,
        "color": COLORS[role],
        "variant": variant,
        "line": " ".join(f"{a},{b}" for a, b in pts),
        "dots": pts,
        "band": " ".join(f"{a},{b}" for a, b in hi + lo[::-1]),
    }


def chart(decisions: list[dict]) -> dict:
    """Coordinates for the two SVG charts, from the numbers stored with every evaluation."""
    n = max(1, len(decisions) - 1)

    def x(i: int) -> float:
        return round(40 + (W - 60) * (i / n if len(decisions) > 1 else 0.5), 1)

    def y(rate: float, height: int = H) -> float:
        return round(10 + (height - 20) * (1 - rate), 1)

    arms = [_arm_series(decisions, role, x, y) for role in ("incumbent", "challenger")]
    threshold = decisions[0]["numbers"]["threshold"] if decisions else 20
    top = max([d["numbers"].get("msprt") or 0 for d in decisions] + [threshold * 2 if decisions else 40])
    scale = math.log1p(top)

    def ys(v: float) -> float:
        return round(10 + (H // 2 - 20) * (1 - math.log1p(max(0.0, v)) / scale), 1)

    statistic = " ".join(f"{x(i)},{ys(d['numbers'].get('msprt') or 0)}" for i, d in enumerate(decisions))
    return {
        "arms": arms,
        "statistic": statistic,
        "threshold_y": ys(threshold),
        "yticks": [(y(v), f"{v:.0%}") for v in (0, 0.25, 0.5, 0.75, 1.0)],
    }


MARKS = {
    "promote": "#2a7",
    "rollback": "#c33",
    "skipped": "#999",
    "rejected": "#e90",
    "failed": "#c33",
    "forget": "#84c",
}


def days_chart(days: list[dict]) -> dict:
    """Coordinates for the history chart: the live thumbs-up rate per day with its interval, and a mark per
    promotion, rollback and forget that tainted adapters (during the day) and per night that skipped or rejected
    (at the day's end). The labels during the day take turns in three rows, so that neighbours do not overlap."""
    n = max(1, len(days) - 1)

    def x(i: float) -> float:
        return round(40 + (W - 60) * (i / n if len(days) > 1 else 0.5), 1)

    def y(rate: float) -> float:
        return round(10 + (H - 20) * (1 - rate), 1)

    known = [(i, d) for i, d in enumerate(days) if d["up_rate"] is not None]
    marks = []
    row = 0
    for i, d in enumerate(days):
        events = [(e["decision"], f"{e['decision']} {e['experiment']}") for e in d["decisions"]]
        if d["tainted"]:
            events.append(("forget", f"forget: {', '.join(d['tainted'])} tainted"))
        for kind, label in events:
            marks.append({"x": x(i), "y": 22 + 12 * (row % 3), "kind": kind, "color": MARKS[kind], "label": label})
            row += 1
        night = d["night"]
        if night and night["status"] != "candidate":
            marks.append(
                {
                    "x": x(i + 0.5),
                    "y": H - 16,
                    "kind": night["status"],
                    "color": MARKS[night["status"]],
                    "label": f"night {d['day']}: {night['status']}",
                }
            )
    for m in marks:  # a label near the right edge is written leftwards, so that it is not cut off
        right = m["x"] > W * 0.6
        m["tx"], m["anchor"] = (m["x"] - 3, "end") if right else (m["x"] + 3, "start")
    return {
        "line": " ".join(f"{x(i)},{y(d['up_rate'])}" for i, d in known),
        "dots": [(x(i), y(d["up_rate"]), d["day"]) for i, d in known],
        "band": " ".join(
            [f"{x(i)},{y(d['ci'][1])}" for i, d in known if d["ci"]]
            + [f"{x(i)},{y(d['ci'][0])}" for i, d in reversed(known) if d["ci"]]
        ),
        "marks": marks,
        "yticks": [(y(v), f"{v:.0%}") for v in (0, 0.25, 0.5, 0.75, 1.0)],
    }
