"""Importing Presidio without torch: presidio_analyzer imports transformers and torch at import time when
they are installed (for its transformers NLP engine and device detection), 10 s and 600 MB per scrub
worker for nothing we use. Every module that imports presidio does it inside `without_torch()`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def without_torch() -> Iterator[None]:
    """Hide torch and transformers while presidio imports; they import normally afterwards (serving needs
    them). A module already imported stays as it is."""
    hidden = [m for m in ("torch", "transformers") if m not in sys.modules]
    for m in hidden:
        sys.modules[m] = None  # type: ignore[assignment]  # makes `import m` raise ImportError, which presidio and thinc handle
    try:
        yield
    finally:
        for m in hidden:
            sys.modules.pop(m, None)
