"""What one app may ask of the service: requests per second, text to scrub per second, prompt tokens, and
the bytes a chat may hold so that its log event fits the contract. Each refusal names its setting."""

from __future__ import annotations

import time

from ingest import contracts
from serving.config import ServingConfig
from serving.errors import ApiError

# What the chat log event may hold for the messages: the contract's event size less room for the longest
# answer (MAX_FIELD_CHARS characters of up to 4 UTF-8 bytes) and the ids. Larger chats were answered 200 and
# then dead-lettered by ingest.
MAX_CHAT_BYTES = contracts.MAX_EVENT_BYTES - 4 * contracts.MAX_FIELD_CHARS - 8 * 1024


class RateLimiter:
    """A token bucket per app: `rate` per second, up to `burst` at once (a request may cost several)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, cost: float = 1) -> bool:
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < cost:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - cost, now)
        return True


class ScrubBudget:
    """Text that ingest must scrub: no single text that would stall it (400), no more per request than the
    burst (413), no more per second per key than its share (429)."""

    def __init__(self, cfg: ServingConfig):
        self.cfg, self.bucket = cfg, RateLimiter(cfg.scrub_cost_per_s, cfg.scrub_cost_burst)

    def charge(self, app_id: str, texts: list[str | None]) -> None:
        costs = [contracts.scrub_cost(t) for t in texts]
        if max(costs, default=0) > contracts.MAX_TEXT_COST:
            raise ApiError(
                400,
                f"a text costs {max(costs)} to scrub (characters + {contracts.DIGIT_COST} per digit): "
                f"at most {contracts.MAX_TEXT_COST}",
            )
        total = sum(costs)
        if total > self.cfg.scrub_cost_burst:
            raise ApiError(
                413,
                f"this request's text costs {total} to scrub: at most {self.cfg.scrub_cost_burst} "
                "(serving.scrub_cost_burst)",
            )
        if not self.bucket.allow(app_id, total):
            raise ApiError(
                429,
                f"text to scrub over this key's {self.cfg.scrub_cost_per_s:g}/s (serving.scrub_cost_per_s)",
                headers={"Retry-After": "1"},
            )


def prompt_tokens_limit(cfg: ServingConfig, context: int | None) -> int:
    """serving.max_prompt_tokens, checked against the model's context (prompt + answer must fit)."""
    if context is None:
        return cfg.max_prompt_tokens or 1 << 62
    room = context - cfg.max_tokens
    if room < 1:
        raise ValueError(
            f"serving.max_tokens={cfg.max_tokens} leaves no room for a prompt in the model's {context}-token context"
        )
    if cfg.max_prompt_tokens is not None and cfg.max_prompt_tokens > room:
        raise ValueError(
            f"serving.max_prompt_tokens={cfg.max_prompt_tokens}: at most {room} (the model's "
            f"{context}-token context minus serving.max_tokens={cfg.max_tokens})"
        )
    return cfg.max_prompt_tokens or room
