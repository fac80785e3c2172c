"""What the routes depend on: the service's parts (`Context`, one per app, on `app.state`) and who is
asking. `app_key` (an app's Bearer key) and `admin_key` (a reviewer's) are FastAPI dependencies, so the
same function that refuses a request documents its security scheme in /openapi.json. `reviewer` reads the
review page's signed session cookie. Wrong keys of both kinds count against one throttle per address."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ingest.contracts import Event, encode
from serving import ids, openapi
from serving.config import ServingConfig
from serving.errors import ApiError
from serving.generator import Generator
from serving.limits import RateLimiter, ScrubBudget
from serving.metrics import Metrics
from serving.middleware import client_address
from serving.outbox import GroupCommit, Outbox
from serving.upstream import VllmBackend

COOKIE = "flywheel_reviewer"
SESSION_S = 8 * 3600


class ReviewBackend(Protocol):
    """The review page's and admin API's view of the database (wired in `infra`: serving imports no curation)."""

    def pending(self, limit: int) -> list[dict]: ...
    def counts(self) -> dict[str, int]: ...
    def filter_stats(self) -> dict[str, int]: ...
    def audit(self, limit: int) -> list[dict]: ...
    def decide(self, sample_ids: list[str], decision: str, reviewer: str, reason: str | None) -> int: ...
    def forget(self, app_id: str, user_id: str, actor: str) -> dict: ...
    def ab(self) -> dict: ...
    def command(self, argv: list[str], actor: str) -> dict: ...


class Sessions:
    """The reviewer's cookie: their name and a fingerprint of their key hash, signed and timestamped
    (itsdangerous). A removed or changed key ends that reviewer's sessions; one over SESSION_S is refused."""

    def __init__(self, secret: bytes, admin_keys: dict[str, str]):
        key = hmac.new(secret, b"review-session", hashlib.sha256).digest()
        self.signer, self.admin_keys = URLSafeTimedSerializer(key, salt="review-session"), admin_keys

    def _fingerprint(self, name: str) -> str:
        return hashlib.sha256(self.admin_keys.get(name, "").encode()).hexdigest()[:16]

    def issue(self, name: str) -> str:
        return self.signer.dumps([name, self._fingerprint(name)])

    def reviewer(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            name, fingerprint = self.signer.loads(cookie, max_age=SESSION_S)
        except (BadSignature, ValueError, TypeError):
            return None
        if name not in self.admin_keys or not hmac.compare_digest(fingerprint, self._fingerprint(name)):
            return None
        return name


@dataclass
class Context:
    """Everything the routes use, built once by `create_app`."""

    cfg: ServingConfig
    generator: Generator | None
    tokenizer: Any
    outbox: Outbox | None
    topics: dict[str, str]  # event kind -> Kafka topic
    secret: bytes
    user_key: bytes
    route: Callable[[str], tuple[str, str | None]]
    variants: Callable[[], list[str]]
    ready: Callable[[], bool]
    review: ReviewBackend | None
    forgotten: Callable[[str, float], bool] | None
    metrics: Metrics
    prompt_limit: int
    upstream: VllmBackend | None = None  # serving.backend = vllm: the servers that generate
    throttle: ids.GuessThrottle = field(init=False)
    limiter: RateLimiter = field(init=False)
    scrub: ScrubBudget = field(init=False)
    sessions: Sessions = field(init=False)
    commits: GroupCommit | None = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.throttle = ids.GuessThrottle(cfg.guess_burst, cfg.guess_per_s)
        self.limiter = RateLimiter(cfg.rate_limit_per_s, cfg.rate_burst)
        self.scrub = ScrubBudget(cfg)
        self.sessions = Sessions(self.secret, cfg.admin_keys)
        self.commits = GroupCommit(self.outbox) if self.outbox is not None else None

    async def log(self, event: Event) -> None:
        """Returns once the event is durable (committed to the outbox)."""
        key, value = encode(event)
        if self.commits is None:
            raise ApiError(503, "this server keeps no outbox: it cannot take events")
        await self.commits.put((self.topics[event.kind], key, value))

    def model(self) -> Generator:
        if self.generator is None:
            raise ApiError(503, "this server has no model loaded")
        return self.generator

    def backend(self) -> ReviewBackend:
        if self.review is None:
            raise ApiError(503, "review needs the database: run `flywheel up` (not `flywheel serve`)")
        return self.review


def context(request: Request) -> Context:
    return request.app.state.flywheel


def authenticate(ctx: Context, header: str, address: str) -> str:
    """The app whose key `header` carries (Authorization: Bearer KEY), within its rate limit."""
    cfg = ctx.cfg
    if not header.lower().startswith("bearer "):
        raise ApiError(401, "missing API key: send Authorization: Bearer <key>")
    if ctx.throttle.blocked(address):
        raise ApiError(
            429,
            "too many wrong keys from this address: try again later (serving.guess_per_s)",
            headers={"Retry-After": str(math.ceil(1 / cfg.guess_per_s))},
        )
    app_id = ids.app_for_key(header[7:].strip(), cfg.api_keys)
    if app_id is None:
        ctx.throttle.failed(address)
        raise ApiError(401, "invalid API key")
    if not ctx.limiter.allow(app_id):
        raise ApiError(429, f"rate limit of {cfg.rate_limit_per_s:g} requests/s exceeded", headers={"Retry-After": "1"})
    return app_id


Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(openapi.bearer)]


def app_key(request: Request, _documented: Bearer) -> str:
    """Dependency: the app of the request's API key (serving.api_keys)."""
    return authenticate(context(request), request.headers.get("authorization", ""), client_address(request.scope))


def admin_key(request: Request, _documented: Bearer) -> str:
    """Dependency: the reviewer whose admin key (serving.admin_keys) the request carries."""
    ctx, header = context(request), request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise ApiError(401, "missing admin key: send Authorization: Bearer <key>")
    address = client_address(request.scope)
    if ctx.throttle.blocked(address):
        raise ApiError(429, "too many wrong keys from this address: try again later", headers={"Retry-After": "2"})
    name = ids.app_for_key(header[7:].strip(), ctx.cfg.admin_keys)
    if name is None:
        ctx.throttle.failed(address)
        raise ApiError(401, "invalid admin key")
    return name


def reviewer(request: Request) -> str | None:
    """The signed-in reviewer of a page request, or None (the page then shows the sign-in form)."""
    return context(request).sessions.reviewer(request.cookies.get(COOKIE))


App = Annotated[str, Depends(app_key)]
Admin = Annotated[str, Depends(admin_key)]
Reviewer = Annotated[str | None, Depends(reviewer)]
Ctx = Annotated[Context, Depends(context)]
