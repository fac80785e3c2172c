"""The CLI and the non-training stages must not pay for torch at import: every module of `ingest`,
`curation`, `abtest` and the CLI's command modules is imported (not only the packages' `__init__`), in a
fresh interpreter, and none may bring torch or transformers with it."""

import subprocess
import sys

LIGHT = ["ingest", "curation", "abtest", "infra.commands"]
ALSO = ["infra.cli", "infra.config", "infra.db", "infra.ab", "infra.schedule", "retrain.registry", "retrain.plan"]
CHECK = f"""
import importlib, pkgutil, sys
names = {ALSO!r}
for package in {LIGHT!r}:
    names += [m.name for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")]
heavy = []
for name in names:
    before = set(sys.modules)
    importlib.import_module(name)
    heavy += [f"{{name}} imports {{m}}" for m in ("torch", "transformers") if m in sys.modules and m not in before]
print(len(names))
print("\\n".join(heavy))
"""


def test_no_light_module_imports_torch():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout.split("\n")
    assert int(out[0]) > 30  # every module was found, not only the packages
    assert [line for line in out[1:] if line] == []
