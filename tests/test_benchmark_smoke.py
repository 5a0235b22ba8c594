"""benchmarks/bench_ngram.py runs end to end (--quick) and reports what it should.

A smoke test only: timings vary from machine to machine and are never asserted.
"""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark_scripts

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = benchmark_scripts.script("bench_ngram")


@pytest.fixture(scope="module")
def quick_run():
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--nltk-sample", "7"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )


def test_quick_run_exits_0(quick_run):
    assert quick_run.returncode == 0, f"stdout:\n{quick_run.stdout}\nstderr:\n{quick_run.stderr}"


def test_quick_run_prints_the_speed_ratio(quick_run):
    match = re.search(r"^\s*speed ratio .*: ([\d,]+)x \(target >= 1,000x: (met|NOT met)\)$",
                      quick_run.stdout, flags=re.MULTILINE)
    assert match, f"no speed ratio line in:\n{quick_run.stdout}"
    assert float(match[1].replace(",", "")) > 0


def test_quick_run_honours_the_sample_size(quick_run):
    assert re.search(r"nltk lm\.score\(word, context\), 7 seeded test trigrams: [\d.]+ ms/score",
                     quick_run.stdout), quick_run.stdout
    assert re.search(r"course_lib logprobs\(test sentences\), .*: best of 5 .* [\d.]+ us/token",
                     quick_run.stdout), quick_run.stdout


def test_quick_run_checks_three_perplexities(quick_run):
    lines = [line for line in quick_run.stdout.splitlines()
             if re.match(r"\s+(MLE|Laplace), ", line)]
    assert len(lines) == 3, quick_run.stdout
    assert all(line.endswith("(same)") for line in lines), quick_run.stdout
    assert "all perplexities agree" in quick_run.stdout


def test_perplexity_check_fails_on_a_real_difference(capsys):
    bench = benchmark_scripts.load("bench_ngram")
    assert bench.check_same("equal", 12.5, 12.5) == 0.0
    assert bench.check_same("rounding", 12.5, 12.5 * (1 + 1e-12)) < 1e-9
    with pytest.raises(AssertionError, match="relative difference"):
        bench.check_same("off", 12.5, 12.5 * (1 + 1e-6))
    with pytest.raises(AssertionError):
        bench.check_same("one infinite", math.inf, 12.5)
    assert "DIFFERENT" in capsys.readouterr().out
