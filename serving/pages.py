"""Browser pages and the admin API: the compliance reviewer's `/review` page, `POST /v1/admin/...`.

Serving does not import curation: `add_review_routes` receives a backend object (wired in `infra`) with
pending(), counts(), filter_stats(), audit(), decide() and forget(). Reviewers sign in with their admin
key (config `serving.admin_keys`: name -> SHA-256 of the key); the page keeps a signed, HttpOnly,
SameSite=Strict cookie, and every decision is recorded under the reviewer's name. All text from chats is
HTML-escaped by Jinja's autoescape.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Protocol
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving import ids

COOKIE = "flywheel_reviewer"
SESSION_S = 8 * 3600


class ReviewBackend(Protocol):
    def pending(self, limit: int) -> list[dict]: ...
    def counts(self) -> dict[str, int]: ...
    def filter_stats(self) -> dict[str, int]: ...
    def audit(self, limit: int) -> list[dict]: ...
    def decide(self, sample_ids: list[str], decision: str, reviewer: str, reason: str | None) -> int: ...
    def forget(self, user_id: str, actor: str) -> dict: ...


class BadDecision(ValueError):
    """Raised by a backend for a decision that cannot be recorded; its message is shown to the user."""


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_ids: list[str] = Field(min_length=1, max_length=10_000)
    decision: str = Field(pattern="^(approve|reject)$")
    reason: str | None = Field(None, max_length=2_000)


class ForgetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=128)


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
<form method="post" action="/review/login"><label>Reviewer key <input type="password" name="key" id="key"
 autocomplete="current-password"></label> <button type="submit" id="sign-in">Sign in</button></form>
</body></html>""")
PAGE = _ENV.from_string("""<!doctype html><html><head><meta charset="utf-8"><title>Flywheel review</title>
<style>{{ style }}</style></head><body>
<h1>Flywheel review</h1><p>Signed in as <b id="reviewer">{{ reviewer }}</b>.
Every decision is written to the audit log under this name.</p>
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


def _summary(details: dict) -> str:
    parts = [f"{k}={v}" for k, v in details.items() if k not in ("sample_ids", "deleted") and not isinstance(v, dict)]
    if "sample_ids" in details:
        parts.append(f"{len(details['sample_ids'])} samples")
    return ", ".join(parts)[:300]


def add_review_routes(app: FastAPI, backend: ReviewBackend | None, admin_keys: dict[str, str], secret: bytes,
                      api_error) -> None:
    """`/review` (browser) and `/v1/admin/reviews`, `/v1/admin/forget` (Bearer admin key)."""
    key = hmac.new(secret, b"review-session", hashlib.sha256).digest()

    def session(name: str) -> str:
        expires = str(int(time.time()) + SESSION_S)
        sig = hmac.new(key, f"{name}|{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{name}|{expires}|{sig}"

    def reviewer_of(request: Request) -> str | None:
        parts = (request.cookies.get(COOKIE) or "").split("|")
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) < time.time():
            return None
        good = hmac.new(key, f"{parts[0]}|{parts[1]}".encode(), hashlib.sha256).hexdigest()
        return parts[0] if hmac.compare_digest(good, parts[2]) and parts[0] in admin_keys else None

    def admin(request: Request) -> str:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise api_error(401, "missing admin key: send Authorization: Bearer <key>", "authentication_error")
        name = ids.app_for_key(header[7:].strip(), admin_keys)
        if name is None:
            raise api_error(401, "invalid admin key", "authentication_error")
        return name

    def need_backend():
        if backend is None:
            raise api_error(503, "review needs the database: run `flywheel up` (not `flywheel serve`)",
                            "server_error")
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
            return HTMLResponse(LOGIN.render(style=_STYLE, message=message))
        b = need_backend()
        audit = [{**e, "summary": _summary(e["details"])} for e in b.audit(20)]
        return HTMLResponse(PAGE.render(style=_STYLE, reviewer=reviewer, message=message, pending=b.pending(50),
                                        counts=b.counts(), stats=b.filter_stats(), audit=audit))

    @app.post("/review/login", include_in_schema=False)
    async def review_login(request: Request):
        name = ids.app_for_key((await form(request)).get("key", [""])[0], admin_keys)
        if name is None or not same_origin(request):
            return HTMLResponse(LOGIN.render(style=_STYLE, message="Unknown reviewer key."), 401)
        response = RedirectResponse("/review", 303)
        response.set_cookie(COOKIE, session(name), max_age=SESSION_S, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.post("/review/decide", include_in_schema=False)
    async def review_decide(request: Request):
        reviewer = reviewer_of(request)
        if reviewer is None or not same_origin(request):
            return RedirectResponse("/review?message=" + quote("Sign in first."), 303)
        fields = await form(request)
        reason = (fields.get("reason") or [""])[0].strip() or None
        if fields.get("one"):
            decision, _, sample = fields["one"][0].partition(" ")
            sample_ids = [sample]
        else:
            decision, sample_ids = (fields.get("decision") or [""])[0], fields.get("sample_id", [])
        if not sample_ids:
            return RedirectResponse("/review?message=" + quote("Select samples first."), 303)
        try:
            n = await run_in_threadpool(need_backend().decide, sample_ids, decision, reviewer, reason)
        except BadDecision as e:
            return RedirectResponse("/review?message=" + quote(f"Not recorded: {e}."), 303)
        word = "Approved" if decision == "approve" else "Rejected"
        return RedirectResponse("/review?message=" + quote(f"{word} {n} sample{'s' * (n != 1)}."), 303)

    @app.post("/v1/admin/reviews")
    async def admin_reviews(request: Request):
        """Approve or reject samples as the reviewer whose admin key is sent."""
        reviewer = admin(request)
        try:
            body = DecisionRequest.model_validate_json(await request.body())
        except ValidationError as e:
            first = e.errors()[0]
            raise api_error(400, f"{'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}") from None
        try:
            n = await run_in_threadpool(need_backend().decide, body.sample_ids, body.decision, reviewer, body.reason)
        except BadDecision as e:
            raise api_error(400, str(e)) from None
        return {"decided": n, "decision": body.decision, "reviewer": reviewer}

    @app.post("/v1/admin/forget")
    async def admin_forget(request: Request):
        """Erase a user's data (right to be forgotten); answers what was deleted and what was trained on it."""
        actor = admin(request)
        try:
            body = ForgetRequest.model_validate_json(await request.body())
        except ValidationError as e:
            first = e.errors()[0]
            raise api_error(400, f"{'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}") from None
        return JSONResponse(await run_in_threadpool(need_backend().forget, body.user, actor))
