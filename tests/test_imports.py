"""The CLI and the non-training stages must not pay for torch at import."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["infra.cli", "ingest", "curation", "abtest", "infra.config", "infra.db"])
def test_import_leaves_torch_out(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
