"""The browser pages: `/review` (sign in with an admin key, then approve or reject samples) and `/ab` (the
A/B dashboard). The session is a signed, HttpOnly, SameSite=Strict cookie (`serving.deps.Sessions`); a
form posted from another origin is refused, and every decision is recorded under the reviewer's name."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from serving import ids
from serving.deps import COOKIE, SESSION_S, Ctx, Reviewer
from serving.middleware import client_address
from serving.pages import BadDecision, H, W, chart, days_chart, page, pct, redirect, summary

router = APIRouter(include_in_schema=False)
TARGETS = ("/review", "/ab")  # where signing in may lead (never an address a link chose)


def same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or origin.split("://", 1)[-1] == request.headers.get("host")


def _told(message: str):
    return redirect("/review?message=" + quote(message))


@router.get("/review", response_class=HTMLResponse)
def review_page(ctx: Ctx, reviewer: Reviewer, message: str | None = None):
    if reviewer is None:
        return page("login.html", message=message)
    b = ctx.backend()
    audit = [{**e, "summary": summary(e["details"])} for e in b.audit(20)]
    return page(
        "review.html",
        reviewer=reviewer,
        message=message,
        pending=b.pending(50),
        counts=b.counts(),
        stats=b.filter_stats(),
        audit=audit,
    )


@router.get("/ab", response_class=HTMLResponse)
def ab_page(ctx: Ctx, reviewer: Reviewer):
    """The A/B dashboard: why each version went live or was rolled back."""
    if reviewer is None:
        return page("login.html", message=None, next="/ab")
    view = ctx.backend().ab()
    for e in view["experiments"]:
        e["chart"] = chart(e["decisions"])
        e["latest"] = e["decisions"][-1] if e["decisions"] else None
    return page("ab.html", reviewer=reviewer, pct=pct, W=W, H=H, days_chart=days_chart(view["days"]), **view)


@router.post("/review/login")
def review_login(
    request: Request, ctx: Ctx, key: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/review"
):
    target = next if next in TARGETS else "/review"
    address = client_address(request.scope)
    if ctx.throttle.blocked(address):
        return page("login.html", 429, message="Too many wrong keys: try again later.", next=target)
    name = ids.app_for_key(key, ctx.cfg.admin_keys)
    if name is None:
        ctx.throttle.failed(address)
    if name is None or not same_origin(request):
        return page("login.html", 401, message="Unknown reviewer key.", next=target)
    response = redirect(target)
    response.set_cookie(
        COOKIE,
        ctx.sessions.issue(name),
        max_age=SESSION_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/review/logout")
def review_logout(request: Request):
    response = _told("Signed out.")
    response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/review/decide")
async def review_decide(
    request: Request,
    ctx: Ctx,
    reviewer: Reviewer,
    reason: Annotated[str, Form()] = "",
    one: Annotated[str, Form()] = "",
    decision: Annotated[str, Form()] = "",
    sample_id: Annotated[list[str] | None, Form()] = None,
):
    if reviewer is None or not same_origin(request):
        return _told("Sign in first.")
    if one:  # the Approve/Reject button of one row: "approve SAMPLE_ID"
        decision, _, sample = one.partition(" ")
        sample_id = [sample]
    if not sample_id:
        return _told("Select samples first.")
    try:
        n = await run_in_threadpool(ctx.backend().decide, sample_id, decision, reviewer, reason.strip() or None)
    except BadDecision as e:
        return _told(f"Not recorded: {e}.")
    return _told(f"{'Approved' if decision == 'approve' else 'Rejected'} {n} sample{'s' * (n != 1)}.")
