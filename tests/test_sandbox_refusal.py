"""Where bubblewrap is missing (a macOS laptop, say), grading refuses to run students'
code, says why and what to do, and runs it only when the instructor passes the flag.

The machine is made to lack bwrap by a PATH without it.
"""

import os
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbgrader.api import Gradebook

from nbgrader_course import BIN, ROOT, make_course

pytestmark = pytest.mark.slow

A = "ch01"


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = make_course(tmp_path_factory.mktemp("refusal"), A)
    folder = course / "submitted" / "alice" / A
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / A / f"{A}.ipynb", folder)
    return course


def without_bwrap(course, *args):
    assert shutil.which("bwrap", path=str(BIN)) is None
    env = dict(os.environ, PATH=str(BIN), OMP_NUM_THREADS="1")
    env.pop("COURSE_FAST", None)
    return subprocess.run(list(args), cwd=course, env=env, capture_output=True, text=True, timeout=600)


def test_the_command_refuses_and_says_why(course):
    proc = without_bwrap(course, sys.executable, "-m", "course_lib.grading.autograde", A)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for words in ("refusing to grade", "bubblewrap (bwrap) is not installed", "apt-get install bubblewrap",
                  "could read the solutions and the gradebook", "--unsandboxed"):
        assert words in proc.stderr, words
    assert not (course / "autograded").exists()


def test_the_check_says_so(course):
    proc = without_bwrap(course, sys.executable, "-m", "course_lib.grading.autograde", A, "--check")
    assert proc.returncode == 2 and "sandbox: NOT available: bubblewrap (bwrap) is not installed" in proc.stdout


def test_plain_nbgrader_refuses_too(course):
    proc = without_bwrap(course, str(BIN / "nbgrader"), "autograde", A, "--force")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "refusing to run students' code without a sandbox" in log, log[-3000:]
    assert not (course / "autograded" / "alice" / A / f"{A}.ipynb").exists()


def test_the_flag_runs_it_anyway_and_warns(course):
    proc = without_bwrap(course, sys.executable, "-m", "course_lib.grading.autograde", A, "--unsandboxed")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "WARNING: grading WITHOUT a sandbox" in proc.stderr
    assert "each in a sandbox" not in proc.stdout
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        sub = gb.find_submission(A, "alice")
        cells = nbformat.read(ROOT / "solutions" / A / f"{A}.ipynb", as_version=4).cells
        graded = [c for c in cells if c.metadata.get("nbgrader", {}).get("grade")]
        auto = sum(c.metadata.nbgrader["points"] for c in graded if c.cell_type == "code")
        assert (sub.score, sub.max_score) == (auto, sum(c.metadata.nbgrader["points"] for c in graded))


def test_grading_before_the_release_says_to_release_first(tmp_path):
    course = tmp_path / "course"
    folder = course / "submitted" / "alice" / A
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copy(ROOT / "solutions" / A / f"{A}.ipynb", folder)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([sys.executable, "-m", "course_lib.grading.autograde", A, "--unsandboxed"], cwd=course,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ch01 has not been released in this course's gradebook: run `make release` first" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (course / "autograded").exists()
