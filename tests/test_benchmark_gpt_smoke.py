"""benchmarks/bench_gpt.py runs (--quick) and prints both sides and their ratio.

A smoke test only: timings vary from machine to machine and are never asserted.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark_scripts

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = benchmark_scripts.script("bench_gpt")


@pytest.fixture(scope="module")
def quick_run():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_quick_run_exits_0(quick_run):
    assert quick_run.returncode == 0, f"stdout:\n{quick_run.stdout}\nstderr:\n{quick_run.stderr[-3000:]}"


def test_quick_run_prints_both_sides_and_the_ratio(quick_run):
    out = quick_run.stdout
    for side in ("course_lib GPT", "transformers GPT2LMHeadModel"):
        row = re.search(rf"^{side} +([\d,]+) +([\d.]+)$", out, re.M)
        assert row, f"no row for {side} in:\n{out}"
        assert float(row[1].replace(",", "")) > 0 and float(row[2]) > 0, row[0]
    ratio = re.search(r"^ratio course_lib / transformers \(tokens/s\): (\d+\.\d+)x \(target >= 1\.0x: (met|NOT met)\)",
                      out, re.M)
    assert ratio and float(ratio[1]) > 0, out


def test_quick_run_states_its_setting(quick_run):
    out = quick_run.stdout
    assert re.search(r"^torch \S+, transformers \S+", out, re.M), out
    assert "threads 1," in out, out
    assert re.search(r"^transformers attention implementation: \w+ \(its default\)$", out, re.M), out
    assert re.search(r"max \|logits difference\| \d\.\de[-+]\d+", out), out
    assert "TFLOP/s" not in out and "MFU" not in out, "FLOP figures are for --device cuda only"


def test_flops_per_token_by_hand():
    bench = benchmark_scripts.load("bench_gpt")
    config = bench.GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=4)
    assert bench.flops_per_token(config, 100) == 6 * 100 + 12 * 1 * 4 * 8 == 984


def test_quick_sets_the_smoke_shape_and_flags_are_checked():
    bench = benchmark_scripts.load("bench_gpt")
    args = bench.parse_args(["--quick"])
    assert (args.preset, args.threads, args.warmup, args.rounds, args.steps) == ("tiny", 1, 1, 2, 2)
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--peak-tflops", "-1"])
