"""benchmarks/bench_onnx.py runs (--quick) and prints both sides, their ratio, the logits'
difference and the two file sizes.

A smoke test only: timings vary from machine to machine and are never asserted.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark_scripts

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = benchmark_scripts.script("bench_onnx")


@pytest.fixture(scope="module")
def quick_run():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_quick_run_exits_0(quick_run):
    assert quick_run.returncode == 0, f"stdout:\n{quick_run.stdout}\nstderr:\n{quick_run.stderr[-3000:]}"


def test_quick_run_prints_both_sides_and_the_ratio(quick_run):
    out = quick_run.stdout
    assert re.search(r"^task +threads +PyTorch ms +onnxruntime ms +PyTorch / onnxruntime$", out, re.M), out
    for task in ("forward B=4 T=16", "generate B=1 8 tokens"):
        row = re.search(rf"^{task} +1 +(\d+\.\d+) +(\d+\.\d+) +(\d+\.\d+)x$", out, re.M)
        assert row, f"no row for {task} with 1 thread in:\n{out}"
        assert float(row[1]) > 0 and float(row[2]) > 0 and float(row[3]) > 0, row[0]


def test_quick_run_checks_the_two_sides_agree(quick_run):
    out = quick_run.stdout
    diff = re.search(r"max \|logits difference\| (\d\.\de[-+]\d+) \(<= 1e-04: ok\)", out)
    assert diff and float(diff[1]) <= 1e-4, out
    assert "greedy generation of 8 tokens: the same tokens on both sides" in out, out


def test_quick_run_states_its_setting_and_the_sizes(quick_run):
    out = quick_run.stdout
    assert re.search(r"^torch \S+, onnxruntime \S+, onnx \S+, python \S+$", out, re.M), out
    assert re.search(r"^model: the shipped GPT, [\d,]+ parameters \(vocab 516, block 64,", out, re.M), out
    sizes = re.search(r"ONNX file ([\d,]+) bytes, PyTorch state dict ([\d,]+) bytes \(ratio (\d+\.\d+)x\)", out)
    assert sizes, out
    onnx_bytes, torch_bytes = (int(sizes[i].replace(",", "")) for i in (1, 2))
    assert onnx_bytes > 669_000 * 4 and torch_bytes > 669_000 * 4, "both hold the float32 weights"


def test_quick_sets_the_smoke_shape_and_flags_are_checked():
    bench = benchmark_scripts.load("bench_onnx")
    args = bench.parse_args(["--quick"])
    assert (args.threads, args.batch_size, args.seq_len, args.new_tokens, args.warmup, args.repeats) == \
        ([1], 4, 16, 8, 1, 2)
    assert bench.parse_args([]).threads == [2, 1]
    for bad in (["--repeats", "0"], ["--threads", "2", "0"], ["--seq-len", "0"], ["--warmup", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_time_both_alternates_and_takes_medians():
    bench = benchmark_scripts.load("bench_onnx")
    calls = []
    medians = bench.time_both({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up a, b; then a b, b a, a b
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())
