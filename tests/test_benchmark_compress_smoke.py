"""benchmarks/bench_compress.py runs (--quick) and prints both sides and their ratio for the
quantized models and for speculative decoding, whose tokens must equal plain decoding's.

A smoke test only: timings vary from machine to machine and are never asserted.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark_scripts

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = benchmark_scripts.script("bench_compress")


@pytest.fixture(scope="module")
def quick_run():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_quick_run_exits_0(quick_run):
    assert quick_run.returncode == 0, f"stdout:\n{quick_run.stdout}\nstderr:\n{quick_run.stderr[-3000:]}"


def test_quick_run_prints_both_sides_and_the_ratio(quick_run):
    out = quick_run.stdout
    for name in ("int8 \\(QuantLinear\\)", "int4 g32 \\(QuantLinear\\)", "int8 \\(PyTorch dynamic\\)"):
        for task in ("generate", "forward"):
            row = re.search(rf"^{task}, {name} +(\d+\.\d+) +(\d+\.\d+) +(\d+\.\d+)x$", out, re.M)
            assert row and all(float(row[i]) > 0 for i in (1, 2, 3)), f"no row for {task}, {name} in:\n{out}"
    for k in (2, 4, 8):
        row = re.search(rf"^k={k} +(\d+\.\d+) +(\d+\.\d+) +(\d+\.\d+)x +(\d\.\d\d) +(\S+)$", out, re.M)
        assert row, f"no row for k={k} in:\n{out}"
        assert row[5] == "yes", "speculative greedy decoding must give the plain greedy tokens"


def test_flags_are_checked():
    bench = benchmark_scripts.load("bench_compress")
    args = bench.parse_args(["--quick"])
    assert (args.batch_size, args.new_tokens, args.warmup, args.repeats) == (4, 8, 1, 2)
    for bad in (["--repeats", "0"], ["--threads", "0"], ["--new-tokens", "0"], ["--warmup", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_time_both_alternates():
    bench = benchmark_scripts.load("bench_compress")
    calls = []
    bench.time_both({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
