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


def issue(secret: bytes, claims: ResponseClaims) -> str:
    payload = _b64(json.dumps([claims.app_id, claims.user_id, claims.variant, claims.experiment_id,
                               round(claims.issued_at, 3), secrets.token_hex(4)], separators=(",", ":")).encode())
    sig = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:18])
    return f"{PREFIX}.{payload}.{sig}"


def verify(secret: bytes, response_id: str) -> ResponseClaims | None:
    """The claims of a genuine id, or None for anything forged, damaged or foreign."""
    try:
        prefix, payload, sig = response_id.split(".")
        expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:18])
        if prefix != PREFIX or not hmac.compare_digest(sig, expected):
            return None
        app, user, variant, experiment, issued, _nonce = json.loads(_unb64(payload))
        return ResponseClaims(app, user, variant, experiment, float(issued))
    except (ValueError, TypeError):
        return None


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

