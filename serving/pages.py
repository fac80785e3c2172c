"""Browser pages and the admin API: the compliance reviewer's `/review` page, the ML lead's `/ab`
dashboard, `POST /v1/admin/...`.

Serving does not import curation: `add_review_routes` receives a backend object (wired in `infra`) with
pending(), counts(), filter_stats(), audit(), decide() and forget(). Reviewers sign in with their admin
key (config `serving.admin_keys`: name -> SHA-256 of the key); the page keeps a signed, HttpOnly,
SameSite=Strict cookie, and every decision is recorded under the reviewer's name. All text from chats is
HTML-escaped by Jinja's autoescape.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from typing import Protocol
from urllib.parse import parse_qs, quote

from fastapi import Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving import ids, openapi

COOKIE = "flywheel_reviewer"
SESSION_S = 8 * 3600


class ReviewBackend(Protocol):
    def pending(self, limit: int) -> list[dict]: ...
    def counts(self) -> dict[str, int]: ...
    def filter_stats(self) -> dict[str, int]: ...
    def audit(self, limit: int) -> list[dict]: ...
    def decide(self, sample_ids: list[str], decision: str, reviewer: str, reason: str | None) -> int: ...
    def forget(self, app_id: str, user_id: str, actor: str) -> dict: ...
    def ab(self) -> dict: ...


class BadDecision(ValueError):
    """Raised by a backend for a decision that cannot be recorded; its message is shown to the user, and
    `status` is the API's answer (404 for unknown samples, else 400)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# A reason with something besides blanks: ECMA-262's \s, plus what Python's str.isspace adds (\x1c-\x1f, \x85),
# so this schema and curation.review.BLANK call the same reasons empty (Schemathesis found "\x1d\x1d").
REASON_PATTERN = "[^\\s\\u001c-\\u001f\\u0085]"


class DecisionRequest(BaseModel):
    # A rejection needs a reason (curation.review checks it; the schema says so for clients).
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "if": {"properties": {"decision": {"const": "reject"}}},
        "then": {"required": ["reason"], "properties": {"reason": {"type": "string", "pattern": REASON_PATTERN}}}})
    sample_ids: list[str] = Field(min_length=1, max_length=10_000)
    decision: str = Field(pattern="^(approve|reject)$")
    reason: str | None = Field(None, max_length=2_000)


class ForgetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    app: str = Field(min_length=1, max_length=128, description="The app (a name in serving.api_keys) that sent "
                     "the user's requests: a user is (app, user), and two apps' ids never mix.")
    user: str = Field(min_length=1, max_length=128, description="The user id, exactly as the app sent it.")


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


def _html(content: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(content, status, headers=SECURITY_HEADERS)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, 303, headers=SECURITY_HEADERS)


_ENV = Environment(autoescape=True)
_STYLE = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.4em;vertical-align:top;text-align:left}th{background:#f4f4f4}
.msg{padding:.6em;background:#fff3cd;border:1px solid #e0c36c}.pii{color:#a33}.muted{color:#777}
pre{white-space:pre-wrap;margin:0;font:13px ui-monospace,monospace}.counts span{margin-right:1.5em}
"""
LOGIN = _ENV.from_string("""<!doctype html><html><head><meta charset="utf-8"><title>Flywheel review: sign in</title>
<style>{{ style }}</style></head><body><h1>Flywheel review</h1>
{% if message %}<p class="msg" id="message">{{ message }}</p>{% endif %}
<form method="post" action="/review/login"><input type="hidden" name="next" value="{{ next or '/review' }}">
<label>Reviewer key <input type="password" name="key" id="key" autocomplete="current-password"></label> <button type="submit" id="sign-in">Sign in</button></form>
</body></html>""")
PAGE = _ENV.from_string("""<!doctype html><html><head><meta charset="utf-8"><title>Flywheel review</title>
<style>{{ style }}</style></head><body>
<h1>Flywheel review</h1><p>Signed in as <b id="reviewer">{{ reviewer }}</b>.
Every decision is written to the audit log under this name.</p>
<form method="post" action="/review/logout"><button type="submit" id="sign-out">Sign out</button></form>
{% if message %}<p class="msg" id="message">{{ message }}</p>{% endif %}
<p class="counts" id="counts">{% for k, v in counts.items() %}<span>{{ k }}: <b>{{ v }}</b></span>{% endfor %}</p>
<h2>Pending samples ({{ pending|length }} shown)</h2>
{% if pending %}
<form method="post" action="/review/decide" id="queue">
<p><label>Reason <input name="reason" size="50" placeholder="required to reject"></label>
<button type="submit" name="decision" value="approve" id="approve-selected">Approve selected</button>
<button type="submit" name="decision" value="reject" id="reject-selected">Reject selected</button></p>
<table><tr><th></th><th>sample</th><th>rating</th><th>label</th><th>prompt (scrubbed)</th><th>answer (scrubbed)</th>
<th>PII found</th><th>filter scores</th><th></th></tr>
{% for s in pending %}<tr id="row-{{ s.sample_id }}">
<td><input type="checkbox" name="sample_id" value="{{ s.sample_id }}"></td>
<td><code>{{ s.sample_id }}</code><br><span class="muted">{{ s.source }}</span></td>
<td>{{ {1: "👍 up", -1: "👎 down"}.get(s.rating, "-") }}</td><td>{{ s.label }}</td>
<td><pre>{% for m in s.prompt %}{{ m.role }}: {{ m.content }}
{% endfor %}</pre></td><td><pre class="answer">{{ s.answer }}</pre></td>
<td class="pii">{{ s.pii|join(", ") or "none" }}</td>
<td class="muted">{% for k, v in s.scores.items() if v not in (None, []) %}{{ k }}={{ v }}<br>{% endfor %}</td>
<td><button type="submit" name="one" value="approve {{ s.sample_id }}" class="approve">Approve</button>
<button type="submit" name="one" value="reject {{ s.sample_id }}" class="reject">Reject</button></td></tr>
{% endfor %}</table></form>
{% else %}<p id="empty">Nothing waits for review.</p>{% endif %}
<h2>Filter statistics</h2><table id="filters"><tr><th>filter (first that dropped a sample)</th><th>samples</th></tr>
{% for k, v in stats.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>Audit trail (latest {{ audit|length }})</h2><table id="audit"><tr><th>#</th><th>when (UTC)</th><th>who</th>
<th>action</th><th>subject</th><th>details</th></tr>
{% for e in audit %}<tr><td>{{ e.seq }}</td><td>{{ e.logged_at }}</td><td>{{ e.actor }}</td><td>{{ e.action }}</td>
<td>{{ e.subject or "" }}</td><td class="muted">{{ e.summary }}</td></tr>{% endfor %}</table>
</body></html>""")


DASHBOARD = _ENV.from_string("""<!doctype html><html><head><meta charset="utf-8"><title>Flywheel A/B</title>
<style>{{ style }} svg{background:#fafafa;border:1px solid #ddd}.ok{color:#2a7}.bad{color:#c33;font-weight:bold}</style>
</head><body><h1>Flywheel A/B experiments</h1>
<p>Live now: <b id="live">{{ live }}</b>. Signed in as {{ reviewer }}.</p>
{% for e in experiments %}<section class="experiment" id="{{ e.experiment_id }}">
<h2>{{ e.experiment_id }}: {{ e.challenger }} vs {{ e.incumbent }} <span class="muted">({{ e.status }},
challenger share {{ "%.0f"|format(e.share * 100) }}%)</span></h2>
{% if e.latest %}{% set n = e.latest.numbers %}
<table class="arms"><tr><th>arm</th><th>variant</th><th>users</th><th>ratings</th><th>thumbs-up rate</th>
<th>confidence interval ({{ "%.0f"|format((1 - n.alpha) * 100) }}%, always valid)</th><th>p95 latency</th><th>rated</th></tr>
{% for role, a in n.arms.items() %}<tr><td>{{ role }}</td><td>{{ a.variant }}</td><td>{{ a.users }}</td>
<td>{{ a.ratings }}</td><td>{{ pct(a.up_rate) }}</td><td>{{ pct(a.ci[0]) }} – {{ pct(a.ci[1]) }}</td>
<td>{{ "-" if a.p95_latency_ms is none else "%.0f ms"|format(a.p95_latency_ms) }}</td><td>{{ pct(a.rating_rate) }}</td></tr>
{% endfor %}</table>
<p>Difference {{ "-" if n.difference is none else "%+.1f points"|format(n.difference * 100) }};
mSPRT statistic {{ "%.3g"|format(n.msprt) }} against threshold {{ "%g"|format(n.threshold) }}
(always-valid p = {{ "%.3g"|format(n.p_value) }});
SRM p = <span class="{{ 'bad' if n.srm_p < srm_threshold else 'ok' }}">{{ "%.3g"|format(n.srm_p) }}</span>.
Guardrails: {% for g in n.guardrails %}<span class="{{ 'ok' if g.ok else 'bad' }}">{{ g.name }}
{{ "holds" if g.ok else "BREACHED" }}</span>{{ ", " if not loop.last }}{% else %}not enough data{% endfor %}.</p>
<p><b>Latest decision: {{ e.latest.decision }}</b> — {{ e.latest.reason }}</p>{% endif %}
<h3>Thumbs-up rate over time, with confidence intervals</h3>
<svg class="chart rates" width="{{ W }}" height="{{ H }}" viewBox="0 0 {{ W }} {{ H }}" role="img">
{% for y, label in e.chart.yticks %}<line x1="40" x2="{{ W - 10 }}" y1="{{ y }}" y2="{{ y }}" stroke="#eee"/>
<text x="4" y="{{ y + 4 }}" font-size="11">{{ label }}</text>{% endfor %}
{% for arm in e.chart.arms %}<polygon class="band" points="{{ arm.band }}" fill="{{ arm.color }}" fill-opacity="0.15"/>
<polyline class="series" data-arm="{{ arm.role }}" points="{{ arm.line }}" fill="none" stroke="{{ arm.color }}" stroke-width="2"/>
{% for x, y in arm.dots %}<circle cx="{{ x }}" cy="{{ y }}" r="3" fill="{{ arm.color }}"/>{% endfor %}
<text x="{{ W - 120 }}" y="{{ 16 + loop.index0 * 14 }}" font-size="12" fill="{{ arm.color }}">{{ arm.role }} ({{ arm.variant }})</text>
{% endfor %}</svg>
<h3>Test statistic against its threshold</h3>
<svg class="chart statistic" width="{{ W }}" height="{{ H // 2 }}" viewBox="0 0 {{ W }} {{ H // 2 }}" role="img">
<line class="threshold" x1="40" x2="{{ W - 10 }}" y1="{{ e.chart.threshold_y }}" y2="{{ e.chart.threshold_y }}"
 stroke="#c33" stroke-dasharray="4 3"/><text x="{{ W - 150 }}" y="{{ e.chart.threshold_y - 4 }}" font-size="11"
 fill="#c33">threshold 1/alpha</text>
<polyline class="series" points="{{ e.chart.statistic }}" fill="none" stroke="#333" stroke-width="2"/></svg>
<h3>Decisions</h3><table class="decisions"><tr><th>when (UTC)</th><th>decision</th><th>why</th></tr>
{% for d in e.decisions|reverse %}<tr><td>{{ d.at }}</td><td>{{ d.decision }}</td><td>{{ d.reason }}</td></tr>{% endfor %}
</table></section>{% else %}<p id="none">No experiments yet: one starts when retraining registers a candidate.</p>{% endfor %}
<h2>Which version was live when</h2><table id="history"><tr><th>when (UTC)</th><th>version</th><th>status</th><th>why</th></tr>
{% for h in history|reverse %}<tr><td>{{ h[0] }}</td><td>{{ h[1] }}</td><td>{{ h[2] }}</td><td>{{ h[3] }}</td></tr>{% endfor %}
</table></body></html>""")
W, H = 720, 240
COLORS = {"incumbent": "#1f77b4", "challenger": "#ff7f0e"}


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _chart(decisions: list[dict]) -> dict:
    """Coordinates for the two SVG charts, from the numbers stored with every evaluation."""
    n = max(1, len(decisions) - 1)

    def x(i: int) -> float:
        return round(40 + (W - 60) * (i / n if len(decisions) > 1 else 0.5), 1)

    def y(rate: float, height: int = H) -> float:
        return round(10 + (height - 20) * (1 - rate), 1)

    arms = []
    for role in ("incumbent", "challenger"):
        pts, lo, hi = [], [], []
        for i, d in enumerate(decisions):
            a = d["numbers"].get("arms", {}).get(role)
            if a and a.get("up_rate") is not None:
                pts.append((x(i), y(a["up_rate"])))
                lo.append((x(i), y(max(0.0, a["ci"][0] if a["ci"][0] is not None else a["up_rate"]))))
                hi.append((x(i), y(min(1.0, a["ci"][1] if a["ci"][1] is not None else a["up_rate"]))))
        arms.append({"role": role, "color": COLORS[role], "variant": (decisions[-1]["numbers"]["arms"][role]["variant"]
                                                                      if decisions else role),
                     "line": " ".join(f"{a},{b}" for a, b in pts), "dots": pts,
                     "band": " ".join(f"{a},{b}" for a, b in hi + lo[::-1])})
    top = max([d["numbers"].get("msprt") or 0 for d in decisions] + [decisions[0]["numbers"]["threshold"] * 2
                                                                      if decisions else 40])
    scale = math.log1p(top)

    def ys(v: float) -> float:
        return round(10 + (H // 2 - 20) * (1 - math.log1p(max(0.0, v)) / scale), 1)

    statistic = " ".join(f"{x(i)},{ys(d['numbers'].get('msprt') or 0)}" for i, d in enumerate(decisions))
    threshold = decisions[0]["numbers"]["threshold"] if decisions else 20
    return {"arms": arms, "statistic": statistic, "threshold_y": ys(threshold),
            "yticks": [(y(v), f"{v:.0%}") for v in (0, 0.25, 0.5, 0.75, 1.0)]}


def parse_body(model: type[BaseModel], raw: bytes, api_error):
    """The JSON body as `model`, or a 400 whose message names the field: 'rating: Field required'."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise api_error(400, first_error(e.errors())) from None


def first_error(errors: list[dict]) -> str:
    """The first validation error as one line that names the field (FastAPI's 'body' prefix left out)."""
    first = errors[0]
    return f"{'.'.join(str(p) for p in first['loc'] if p != 'body') or 'body'}: {first['msg']}"


def _summary(details: dict) -> str:
    parts = [f"{k}={v}" for k, v in details.items() if k not in ("sample_ids", "deleted") and not isinstance(v, dict)]
    if "sample_ids" in details:
        parts.append(f"{len(details['sample_ids'])} samples")
    return ", ".join(parts)[:300]


def add_review_routes(app: FastAPI, backend: ReviewBackend | None, admin_keys: dict[str, str], secret: bytes,
                      api_error, *, throttle: ids.GuessThrottle) -> None:
    """`/review` (browser) and `/v1/admin/reviews`, `/v1/admin/forget` (Bearer admin key). Wrong keys count
    in `throttle` (shared with the API's keys) per client address."""
    key = hmac.new(secret, b"review-session", hashlib.sha256).digest()

    def signature(name: str, expires: str) -> str:
        # Signed together with the reviewer's key hash: a removed or changed key ends their sessions.
        return hmac.new(key, f"{name}|{expires}|{admin_keys.get(name, '')}".encode(), hashlib.sha256).hexdigest()

    def session(name: str) -> str:
        expires = str(int(time.time()) + SESSION_S)
        return f"{name}|{expires}|{signature(name, expires)}"

    def reviewer_of(request: Request) -> str | None:
        parts = (request.cookies.get(COOKIE) or "").split("|")
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) < time.time() or parts[0] not in admin_keys:
            return None
        return parts[0] if hmac.compare_digest(signature(parts[0], parts[1]), parts[2]) else None

    def admin(request: Request) -> str:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise api_error(401, "missing admin key: send Authorization: Bearer <key>")
        address = request.client.host if request.client else "unknown"
        if throttle.blocked(address):
            raise api_error(429, "too many wrong keys from this address: try again later", headers={"Retry-After": "2"})
        name = ids.app_for_key(header[7:].strip(), admin_keys)
        if name is None:
            throttle.failed(address)
            raise api_error(401, "invalid admin key")
        return name

    def need_backend():
        if backend is None:
            raise api_error(503, "review needs the database: run `flywheel up` (not `flywheel serve`)")
        return backend

    async def form(request: Request) -> dict[str, list[str]]:
        return parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        return origin is None or origin.split("://", 1)[-1] == request.headers.get("host")

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def review_page(request: Request, message: str | None = None):
        reviewer = reviewer_of(request)
        if reviewer is None:
            return _html(LOGIN.render(style=_STYLE, message=message))
        b = need_backend()
        audit = [{**e, "summary": _summary(e["details"])} for e in b.audit(20)]
        return _html(PAGE.render(style=_STYLE, reviewer=reviewer, message=message, pending=b.pending(50),
                                        counts=b.counts(), stats=b.filter_stats(), audit=audit))

    @app.get("/ab", response_class=HTMLResponse, include_in_schema=False)
    def ab_page(request: Request):
        """The A/B dashboard: why each version went live or was rolled back."""
        reviewer = reviewer_of(request)
        if reviewer is None:
            return _html(LOGIN.render(style=_STYLE, message=None, next="/ab"))
        view = need_backend().ab()
        for e in view["experiments"]:
            e["chart"] = _chart(e["decisions"])
            e["latest"] = e["decisions"][-1] if e["decisions"] else None
        return _html(DASHBOARD.render(style=_STYLE, reviewer=reviewer, pct=_pct, W=W, H=H, **view))

    @app.post("/review/login", include_in_schema=False)
    async def review_login(request: Request):
        fields = await form(request)
        target = (fields.get("next") or ["/review"])[0]
        target = target if target in ("/review", "/ab") else "/review"
        address = request.client.host if request.client else "unknown"
        if throttle.blocked(address):
            return _html(LOGIN.render(style=_STYLE, message="Too many wrong keys: try again later.", next=target), 429)
        name = ids.app_for_key(fields.get("key", [""])[0], admin_keys)
        if name is None:
            throttle.failed(address)
        if name is None or not same_origin(request):
            return _html(LOGIN.render(style=_STYLE, message="Unknown reviewer key.", next=target), 401)
        response = _redirect(target)
        response.set_cookie(COOKIE, session(name), max_age=SESSION_S, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.post("/review/logout", include_in_schema=False)
    async def review_logout(request: Request):
        response = _redirect("/review?message=" + quote("Signed out."))
        response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.post("/review/decide", include_in_schema=False)
    async def review_decide(request: Request):
        reviewer = reviewer_of(request)
        if reviewer is None or not same_origin(request):
            return _redirect("/review?message=" + quote("Sign in first."))
        fields = await form(request)
        reason = (fields.get("reason") or [""])[0].strip() or None
        if fields.get("one"):
            decision, _, sample = fields["one"][0].partition(" ")
            sample_ids = [sample]
        else:
            decision, sample_ids = (fields.get("decision") or [""])[0], fields.get("sample_id", [])
        if not sample_ids:
            return _redirect("/review?message=" + quote("Select samples first."))
        try:
            n = await run_in_threadpool(need_backend().decide, sample_ids, decision, reviewer, reason)
        except BadDecision as e:
            return _redirect("/review?message=" + quote(f"Not recorded: {e}."))
        word = "Approved" if decision == "approve" else "Rejected"
        return _redirect("/review?message=" + quote(f"{word} {n} sample{'s' * (n != 1)}."))

    keyed = [Depends(openapi.bearer)]

    @app.post("/v1/admin/reviews", response_model=openapi.Decided, responses=openapi.ERRORS_OR_BUSY, dependencies=keyed,
              openapi_extra=openapi.json_body(DecisionRequest))
    async def admin_reviews(request: Request):
        """Approve or reject samples as the reviewer whose admin key is sent."""
        reviewer = admin(request)
        body = parse_body(DecisionRequest, await request.body(), api_error)
        try:
            n = await run_in_threadpool(need_backend().decide, body.sample_ids, body.decision, reviewer, body.reason)
        except BadDecision as e:
            raise api_error(e.status, str(e)) from None
        return {"decided": n, "decision": body.decision, "reviewer": reviewer}

    @app.post("/v1/admin/forget", response_model=openapi.Forgotten, responses=openapi.ERRORS_OR_BUSY,
              dependencies=keyed, openapi_extra=openapi.json_body(ForgetRequest))
    async def admin_forget(request: Request):
        """Erase a user's data (right to be forgotten); answers what was deleted and what was trained on it."""
        actor = admin(request)
        body = parse_body(ForgetRequest, await request.body(), api_error)
        try:
            return JSONResponse(await run_in_threadpool(need_backend().forget, body.app, body.user, actor))
        except BadDecision as e:
            raise api_error(e.status, str(e)) from None
