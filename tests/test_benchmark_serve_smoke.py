"""benchmarks/bench_serve.py runs (--quick) and prints every setting and the batched / unbatched ratios.

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
SCRIPT = benchmark_scripts.script("bench_serve")
ROW = re.compile(r"^ +(\d+) (off \(max 1\)|on \(max 8\)) +([\d,]+) +([\d.]+) +([\d.]+) +([\d.]+) +(\d+) +(\d+) +(\d+)$",
                 re.M)


@pytest.fixture(scope="module")
def quick_run():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_quick_run_exits_0(quick_run):
    assert quick_run.returncode == 0, f"stdout:\n{quick_run.stdout}\nstderr:\n{quick_run.stderr[-3000:]}"


def test_quick_run_prints_every_setting_with_no_request_lost(quick_run):
    rows = {(int(m[1]), m[2]): m for m in ROW.finditer(quick_run.stdout)}
    assert set(rows) == {(c, b) for c in (1, 4) for b in ("off (max 1)", "on (max 8)")}, quick_run.stdout
    for (clients, _), m in rows.items():
        tok_s, p50, p95, batch = float(m[3].replace(",", "")), float(m[4]), float(m[5]), float(m[6])
        assert tok_s > 0 and 0 < p50 <= p95 and batch >= 1, m[0]
        assert (int(m[7]), int(m[8]), int(m[9])) == (2 * clients, 0, 0), m[0]  # requests, failed, lost
    assert float(rows[1, "off (max 1)"][6]) == 1.0, "max_batch 1 decodes one request at a time"


def test_quick_run_prints_the_ratios_and_its_setting(quick_run):
    out = quick_run.stdout
    for clients in ("1 client", "4 clients"):
        ratio = re.search(rf"^ratio batched / unbatched \(tokens/s\), {clients}: (\d+\.\d+)x$", out, re.M)
        assert ratio and float(ratio[1]) > 0, out
    assert re.search(r"^torch \S+, python \S+, device cpu, threads 1$", out, re.M), out
    assert re.search(r"^model: the shipped GPT, [\d,]+ parameters, block 64, vocab 516$", out, re.M), out
    assert "8 new tokens per request" in out and "1 round (medians)" in out, out


def test_flags_are_checked():
    bench = benchmark_scripts.load("bench_serve")
    args = bench.parse_args(["--quick"])
    assert (args.clients, args.requests, args.new_tokens, args.rounds) == (4, 2, 8, 1)
    for bad in (["--clients", "0"], ["--max-batch", "1"], ["--max-wait-ms", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
