"""The lock agrees with pyproject.toml, is complete, and is what is installed (scripts/lock.py)."""

import importlib.util
import tomllib
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)

PINS = lock.locked(cuda=False)
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
WANTED = [Requirement(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]]


def satisfied(req: Requirement, pins: dict[str, str]) -> bool:
    name = lock.canonical(req.name)
    return name in pins and req.specifier.contains(Version(lock.public(pins[name])), prereleases=True)


def test_every_dependency_of_pyproject_is_pinned_within_its_range():
    assert WANTED and [str(r) for r in WANTED if not satisfied(r, PINS)] == []
    assert set(lock.DATA_WHEELS) <= PINS.keys()  # the Makefile installed them by hand before the lock


def test_the_lock_is_closed_under_the_requirements_of_what_it_pins():
    """Installed with --no-deps, a missing transitive pin would be a missing package: every requirement of
    every locked package (markers for this machine, extras as requested) is pinned and satisfied."""
    env = default_environment()
    requested: dict[str, set[str]] = {n: set() for n in PINS}
    for r in WANTED:
        requested[lock.canonical(r.name)] |= r.extras
    problems, todo = [], list(PINS)
    while todo:
        name = todo.pop()
        if name in lock.DATA_WHEELS:
            continue
        for r in map(Requirement, metadata.distribution(name).requires or []):
            extras = requested[name] or {""}
            if r.marker and not any(r.marker.evaluate({**env, "extra": e}) for e in extras):
                continue
            if not satisfied(r, PINS):
                problems.append(f"{name} needs {r}, locked: {PINS.get(lock.canonical(r.name))}")
            elif r.extras - requested[lock.canonical(r.name)]:
                requested[lock.canonical(r.name)] |= r.extras
                todo.append(lock.canonical(r.name))
    assert problems == []


def test_the_installed_packages_are_the_lock():
    assert lock.diff(lock.installed(), lock.locked(cuda=lock.has_cuda())) == []


def test_diff_names_what_differs():
    assert lock.diff({"torch": "2.13.0", "extra": "1"}, {"torch": "2.13.0+cpu", "duckdb": "2.0.1"}) == [
        "  missing: duckdb==2.0.1",
        "  not in the lock: extra==1",
    ]
    assert lock.diff({"duckdb": "2.0.0"}, {"duckdb": "2.0.1"}) == ["  duckdb: installed 2.0.0, locked 2.0.1"]


def test_the_cuda_lock_adds_only_what_torch_needs_on_a_gpu():
    cuda = lock.parse((ROOT / "requirements-cuda.lock").read_text())
    assert cuda and not cuda.keys() & PINS.keys()
    assert "triton" in cuda and all(n.startswith(("nvidia-", "cuda-", "triton")) for n in cuda), cuda
