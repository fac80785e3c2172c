"""Shared fixtures: a temp data dir, DuckDB with the production schema, one bundled broker per run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker
from infra.config import KafkaConfig
from infra.db import open_store

ROOT = Path(__file__).resolve().parents[1]
# Nothing may reach a hub at run time, in tests least of all.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path


@pytest.fixture
def db(tmp_path: Path):
    con = open_store(tmp_path / "flywheel.duckdb")
    yield con
    con.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One bundled Tansu broker for the whole test run, on a free loopback port."""
    with EmbeddedBroker(KafkaConfig(), tmp_path_factory.mktemp("broker")) as b:
        yield b


def flywheel(*args: str, env: dict | None = None, timeout: float = 60, cwd: Path | None = None):
    """Run the real console entry point in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or ROOT,
    )
