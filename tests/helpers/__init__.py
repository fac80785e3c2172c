"""What several test modules share: event builders, configs, broker and browser helpers (fixtures are in
tests/conftest.py)."""
