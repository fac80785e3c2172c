"""Variant assignment: a hash of user id and experiment salt against the live split.

Sticky (same user, same salt, same split → same variant), stateless, and reproducible from the logs.
"""

from __future__ import annotations

import hashlib


def bucket(user_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by user and salt."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(user_id: str, salt: str, split: list[tuple[str, float]]) -> str:
    """The variant whose share of [0, 1) holds the user's bucket; shares must add up to 1."""
    point, edge = bucket(user_id, salt), 0.0
    for variant, share in split:
        edge += share
        if point < edge:
            return variant
    return split[-1][0]
