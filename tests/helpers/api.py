"""The API app for tests: `create_app` with the parts a test does not care about filled in (no model, no
outbox, one app's topics, fixed 32-byte secrets, everyone on base). A test names only what it exercises."""

from __future__ import annotations

from ingest.contracts import BASE
from serving.app import create_app

SECRET, USER_KEY = b"s" * 32, b"u" * 32


def make_app(cfg, **parts):
    defaults = {
        "generator": None, "tokenizer": None, "outbox": None, "chats_topic": "c", "feedback_topic": "f",
        "secret": SECRET, "user_key": USER_KEY, "route": lambda _user: (BASE, None), "variants": lambda: [BASE],
    }  # fmt: skip
    return create_app(cfg, **{**defaults, **parts})
