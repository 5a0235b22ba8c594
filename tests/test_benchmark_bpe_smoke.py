"""benchmarks/bench_bpe.py runs and prints its ratios (a smoke test; no timing is asserted)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_bpe_quick_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_bpe.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^training .* ratio +\d+\.\d+x", proc.stdout, re.M), proc.stdout
    assert re.search(r"^encoding .* ratio +\d+\.\d+x", proc.stdout, re.M), proc.stdout
