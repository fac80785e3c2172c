"""bench/train_gpu.py end to end on the shape it has for machines without CUDA: the script itself must not
rot between GPU runs (its figures are only meaningful on a GPU)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_bench_runs_every_variant_and_prints_its_table():
    out = subprocess.run(
        [sys.executable, "bench/train_gpu.py", "--shapes", "tiny", "--steps", "3", "--row", "256"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        line.split()[1]: line.split()
        for line in out.stdout.splitlines()
        if line.startswith("tiny ") and len(line.split()) >= 7
    }
    assert set(rows) == {"naive", "bf16", "nf4"}, out.stdout
    rates = [float(cells[2].replace(",", "")) for cells in rows.values()]
    assert all(math.isfinite(r) and r > 0 for r in rates), rates
    assert rows["naive"][-1] == "1.00x"
    bad = subprocess.run(
        [sys.executable, "bench/train_gpu.py", "--shapes", "llama-70b"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown shape(s) llama-70b" in bad.stderr
