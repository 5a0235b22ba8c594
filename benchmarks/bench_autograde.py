"""Grading a class: N submissions of one chapter, each run in the sandbox, J at a time.

Builds a throwaway course (this repository's ``nbgrader_config.py`` and
``solutions/<chapter>``, released with ``nbgrader generate_assignment``) and hands in N
submissions in turn: the solution (full marks), the blank release (0) and the solution
with ``perplexity`` wrong (full marks but that part, chapter 1). It grades them in one run
of ``python -m course_lib.grading.autograde <chapter> --jobs J`` (what ``make autograde`` runs),
then checks the gradebook: exactly N graded submissions, one grade per test cell each,
every score as expected, so no grade was lost or written twice by the parallel workers.

It prints the wall-clock time of the whole run (worker start-up included) divided by N:
seconds per submission. Nothing is asserted about speed; the check of the grades is
asserted (exit status 1 if it fails).

    python benchmarks/bench_autograde.py                 # 100 submissions of ch01, one worker per core
    python benchmarks/bench_autograde.py --jobs 1 -n 20  # the same, one at a time
    python benchmarks/bench_autograde.py --quick         # 2 submissions, 2 workers (a smoke test)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_SECONDS = 5.0  # per submission, 100 submissions on 2 cores
WRONG = {"ch01": ("perplexity", "def perplexity(probs):\n    return 0.0\n", "test_perplexity")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--submissions", type=int, default=100, help="submissions to grade (default 100)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="workers (default: one per core)")
    p.add_argument("--chapter", default="ch01", choices=sorted(WRONG), help="the assignment")
    p.add_argument("--quick", action="store_true", help="2 submissions (the solution and the blank), 2 workers")
    args = p.parse_args(argv)
    if args.quick:
        args.submissions, args.jobs = 2, 2
    if args.submissions < 1 or args.jobs < 1:
        p.error("--submissions and --jobs should be at least 1")
    return args


def run(cmd, cwd, timeout=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("COURSE_FAST", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def make_class(course: Path, chapter: str, n: int) -> dict[str, dict[str, float]]:
    """The course folder with n submissions; the expected score of each test cell of each."""
    (course / "solutions").mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copytree(ROOT / "solutions" / chapter, course / "solutions" / chapter)
    proc = run([str(BIN / "nbgrader"), "generate_assignment", chapter, "--force"], course)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout + proc.stderr)
    solution = nbformat.read(course / "solutions" / chapter / f"{chapter}.ipynb", as_version=4)
    blank = nbformat.read(course / "exercises" / chapter / f"{chapter}.ipynb", as_version=4)
    points = {c.metadata.nbgrader["grade_id"]: float(c.metadata.nbgrader["points"]) for c in solution.cells
              if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"}  # the written answer waits
    written = {c.metadata.nbgrader["grade_id"]: 0.0 for c in solution.cells  # for the instructor: 0 so far
               if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "markdown"}
    part, source, broken = WRONG[chapter]
    wrong = nbformat.read(course / "solutions" / chapter / f"{chapter}.ipynb", as_version=4)
    next(c for c in wrong.cells if c.metadata.get("nbgrader", {}).get("grade_id") == part).source = source
    kinds = [("solution", solution, points | written), ("blank", blank, dict.fromkeys(points | written, 0.0)),
             ("wrong", wrong, points | written | {broken: 0.0})]
    expected = {}
    for i in range(n):
        kind, nb, scores = kinds[i % len(kinds)]
        student = f"{kind}{i:03d}"
        folder = course / "submitted" / student / chapter
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{chapter}.ipynb")
        expected[student] = scores
    return expected


def gradebook_rows(course: Path, chapter: str) -> list[tuple[str, dict[str, float]]]:
    """(student, {test cell: score}) for every graded submission in the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return [(sub.student.id, {g.name: g.score for g in sub.notebooks[0].grades})
                for sub in gb.find_assignment(chapter).submissions]


def compare(rows: list[tuple[str, dict[str, float]]], expected: dict) -> list[str]:
    """Every problem: a submission missing, doubled or unknown, a grade missing or wrong."""
    problems = []
    seen = [student for student, _ in rows]
    missing = sorted(set(expected) - set(seen))
    extra = sorted({s for s in seen if seen.count(s) > 1 or s not in expected})
    if missing or extra:
        problems.append(f"graded submissions {len(seen)}, expected {len(expected)} "
                        f"(missing {missing[:5]}, doubled or unknown {extra[:5]})")
    for student, scores in rows:
        if student in expected and scores != expected[student]:
            problems.append(f"{student}: {scores} instead of {expected[student]}")
    return problems


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-autograde-") as tmp:
        course = Path(tmp) / "course"
        expected = make_class(course, args.chapter, args.submissions)
        print(f"{args.submissions} submissions of {args.chapter}, {args.jobs} worker(s), "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before", flush=True)
        start = time.perf_counter()
        proc = run([sys.executable, "-m", "course_lib.grading.autograde", args.chapter, "--jobs", str(args.jobs)],
                   course)
        seconds = time.perf_counter() - start
        sandboxed = "each in a sandbox" in proc.stdout
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:])
            print(f"the grading run failed (exit status {proc.returncode})")
            return 1
        problems = compare(gradebook_rows(course, args.chapter), expected)
    print(f"graded {args.submissions} submissions in {seconds:.1f} s{' (sandboxed)' if sandboxed else ''}")
    per = seconds / args.submissions
    print(f"seconds per submission: {per:.2f}")
    print(f"target: at most {TARGET_SECONDS:.2f} s per submission; measured {per:.2f} s, "
          f"{per / TARGET_SECONDS:.2f} of the target ({'met' if per <= TARGET_SECONDS else 'NOT met'})")
    reported = re.search(r"^graded \d+ submissions in .*$", proc.stdout, re.M)
    if reported:
        print(f"(course_lib.grading.autograde says: {reported.group(0)})")
    if problems:
        print(f"GRADEBOOK CHECK FAILED: {len(problems)} problem(s)")
        for problem in problems[:20]:
            print("  " + problem)
        return 1
    print(f"gradebook check: all {args.submissions} submissions graded once, every grade as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
