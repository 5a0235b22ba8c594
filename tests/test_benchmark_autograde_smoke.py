"""benchmarks/bench_autograde.py runs (--quick: 2 submissions, 2 workers, sandboxed),
prints seconds per submission and finds every grade in the gradebook as expected.

A smoke test only: timings vary from machine to machine and are never asserted.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark_scripts

from course_lib.grading.sandbox import check_sandbox

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = benchmark_scripts.script("bench_autograde")


@pytest.fixture(scope="module")
def quick_run():
    reason = check_sandbox()
    if reason:
        pytest.fail(f"the grading sandbox does not work here: {reason}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_quick_run_grades_every_submission_once(quick_run):
    out = quick_run.stdout
    assert quick_run.returncode == 0, f"stdout:\n{out}\nstderr:\n{quick_run.stderr[-3000:]}"
    assert re.search(r"^2 submissions of ch01, 2 worker\(s\)", out, re.M), out
    assert re.search(r"^graded 2 submissions in [\d.]+ s \(sandboxed\)$", out, re.M), out
    assert "gradebook check: all 2 submissions graded once, every grade as expected" in out


def test_quick_run_prints_seconds_per_submission(quick_run):
    row = re.search(r"^seconds per submission: (\d+\.\d+)$", quick_run.stdout, re.M)
    assert row and float(row[1]) > 0, quick_run.stdout


def test_the_check_can_fail():
    bench = benchmark_scripts.load("bench_autograde")
    expected = {"a": {"t1": 1.0, "t2": 0.0}, "b": {"t1": 1.0, "t2": 2.0}}
    assert bench.compare([("a", {"t1": 1.0, "t2": 0.0}), ("b", {"t1": 1.0, "t2": 2.0})], expected) == []
    lost = bench.compare([("a", {"t1": 1.0, "t2": 0.0})], expected)
    assert lost and "missing ['b']" in lost[0]
    doubled = bench.compare([("a", {"t1": 1.0, "t2": 0.0})] * 2 + [("b", {"t1": 1.0, "t2": 2.0})], expected)
    assert doubled and "doubled or unknown ['a']" in doubled[0]
    wrong = bench.compare([("a", {"t1": 1.0}), ("b", {"t1": 0.0, "t2": 2.0})], expected)
    assert len(wrong) == 2 and wrong[0].startswith("a: ") and wrong[1].startswith("b: ")


def test_quick_sets_the_smoke_size_and_flags_are_checked():
    bench = benchmark_scripts.load("bench_autograde")
    args = bench.parse_args(["--quick"])
    assert (args.submissions, args.jobs) == (2, 2)
    with pytest.raises(SystemExit):
        bench.parse_args(["--jobs", "0"])
