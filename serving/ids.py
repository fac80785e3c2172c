"""Self-verifying response ids, user pseudonyms and hashed API keys.

A response id carries app, user, variant, experiment and time, signed with an HMAC: feedback is checked
without a lookup (forged or damaged → 404, issued to another app → 403).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass

PREFIX = "chatcmpl-fw1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class ResponseClaims:
    app_id: str
    user_id: str
    variant: str
    experiment_id: str | None
    issued_at: float
    choices: int = 1  # the answer's n: feedback may rate choice 0 .. choices-1


def issue(secret: bytes, claims: ResponseClaims) -> str:
    payload = _b64(
        json.dumps(
            [
                claims.app_id,
                claims.user_id,
                claims.variant,
                claims.experiment_id,
                round(claims.issued_at, 3),
                secrets.token_hex(4),
                *([claims.choices] if claims.choices > 1 else []),
            ],
            separators=(",", ":"),
        ).encode()
    )
    sig = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:18])
    return f"{PREFIX}.{payload}.{sig}"


def verify(secret: bytes, response_id: str) -> ResponseClaims | None:
    """The claims of a genuine id, or None for anything forged, damaged or foreign."""
    try:
        prefix, payload, sig = response_id.split(".")
        expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:18])
        if prefix != PREFIX or not hmac.compare_digest(sig, expected):
            return None
        app, user, variant, experiment, issued, _nonce, *choices = json.loads(_unb64(payload))
        return ResponseClaims(app, user, variant, experiment, float(issued), int(choices[0]) if choices else 1)
    except (ValueError, TypeError):
        return None


def choice_id(response_id: str, choice: int) -> str:
    """The id a choice's chat log is stored under: the response id itself for choice 0 (and for every answer
    with n = 1), `<id>:<choice>` for the others; feedback on that choice is stored under the same id."""
    return response_id if choice == 0 else f"{response_id}:{choice}"


def pseudonym(key: bytes, app_id: str, user_id: str) -> str:
    """The user id stored past the API: a keyed HMAC of (app, user), so the id an app sent (an email address,
    say) never reaches Kafka, DuckDB, snapshots or response ids, and two apps' "bob" are two users."""
    digest = hmac.new(key, json.dumps([app_id, user_id]).encode(), hashlib.sha256).digest()
    return "u-" + _b64(digest[:18])


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def app_for_key(key: str, key_hashes: dict[str, str]) -> str | None:
    """The app whose stored hash matches the presented key (compared in constant time)."""
    presented = hash_key(key)
    found = None
    for app, stored in key_hashes.items():
        if hmac.compare_digest(presented, stored):
            found = app
    return found


class GuessThrottle:
    """Wrong keys per client address: each failure spends a token of a bucket (`burst`, refilled at `per_s`);
    an empty bucket answers 429 to that address for every key, the right one included, so guessing runs at
    `per_s` at most. Behind a proxy every client shares its address: put the limit there instead."""

    MAX_ADDRESSES = 100_000  # buckets kept; full ones are dropped first

    def __init__(self, burst: int, per_s: float):
        self.burst, self.per_s, self._buckets, self._lock = burst, per_s, {}, threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, last = self._buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.per_s)

    def blocked(self, address: str) -> bool:
        with self._lock:
            return self._tokens(address, time.monotonic()) < 1

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._buckets[address] = (self._tokens(address, now) - 1, now)
            if len(self._buckets) > self.MAX_ADDRESSES:
                self._buckets = {a: b for a, b in self._buckets.items() if self._tokens(a, now) < self.burst}
