"""Every exercise, graded for real by the instructor's command (``python -m
course_lib.grading.autograde``, in the sandbox): the solution scores full marks, the
blank release 0 on every part, a cheater 0 on every part it cheats on, and a half-right
solution (the solution, wrong on the first case of every part) the share of each part's
points that its other cases carry. Written answers are left to the instructor: the
blank's score 0 (unchanged), the solution's wait for a manual grade.

The cheater uses only generic tricks, which need no knowledge of the exercise. Its first
cell replaces the comparison functions of numpy, math and torch and the guards of
course_lib.grading with ones that pass everything; then each graded function but the last
does one of: read the test's variables up the call stack, return an object that equals
everything, call ``sys.exit()``, loop forever; two of those parts also have their test cell
deleted or edited to ``pass``. Its last part is the honest solution, which must keep its
full marks: what the cheater replaced changes no verdict."""

import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbgrader.api import Gradebook

from course_lib.grading.kernel import cases_module
from course_lib.grading.sandbox import check_sandbox
from course_lib.grading.verdict import refs_module
from nbgrader_course import BIN, ROOT, chapters, make_course

pytestmark = pytest.mark.slow

CELL_TIMEOUT = 20  # seconds a cell may run when graded here; the slowest graded cell takes a few

REPLACE = '''import math, sys
import numpy, torch
import course_lib.grading.guard as _guard
from contextlib import nullcontext as _nullcontext

def _yes(*args, **kwargs):
    return True

def _nothing(*args, **kwargs):
    return None

numpy.allclose = numpy.array_equal = numpy.isclose = math.isclose = _yes
numpy.testing.assert_allclose = numpy.testing.assert_array_equal = torch.testing.assert_close = _nothing
torch.allclose = torch.equal = _yes
_guard.no_course_lib = lambda *a, **k: _nullcontext()
_guard.switched_off = lambda *a, **k: _nullcontext()


class Anything:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__


def _from_the_caller(*args, **kwargs):
    frame = sys._getframe(1)
    while frame is not None:
        for name in ("expected", "want", "reference", "target", "answer", "ref", "result", "value"):
            if name in frame.f_locals:
                return frame.f_locals[name]
        frame = frame.f_back
    return None


'''

BODIES = {
    "frames": "    return _from_the_caller()\n",
    "anything": "    return Anything()\n",
    "exit": "    sys.exit(0)\n",
    "loop": "    while True:\n        pass\n",
}


HALF_RIGHT = '''

def _wrong_once(function):
    """The same function, but its first call made while a test cell grades it fails."""
    import functools as _functools
    import sys as _sys
    done = []

    @_functools.wraps(function)
    def wrapped(*args, **kwargs):
        frame = _sys._getframe(1)
        while frame is not None and not done:
            if frame.f_code.co_filename.replace("\\\\", "/").endswith("grading/kernel.py"):
                done.append(True)
                raise RuntimeError("wrong on purpose, once")
            frame = frame.f_back
        return function(*args, **kwargs)
    return wrapped


{name} = _wrong_once({name})
'''


def half_right(nb, functions):
    """The solution with every graded function wrapped by ``_wrong_once``."""
    for cell in solution_cells(nb):
        for name in functions:
            if re.search(rf"^def {name}\(", cell.source, re.M):
                cell.source += HALF_RIGHT.format(name=name)
    return nb


def written_cells(nb):
    return [c for c in nb.cells if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("grade")]


def solution_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]


def graded_test_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")
            and not c.metadata["nbgrader"].get("solution")]


def cheat(nb):
    """The cheater (see the module docstring); returns the notebook and the grade_ids of
    the test cells it cheats on."""
    graded = solution_cells(nb)
    tests = graded_test_cells(nb)
    kinds = list(BODIES)
    cheated = []
    for i, cell in enumerate(graded[:-1]):
        header = re.search(r"^(def \w+\(.*\):|class \w+.*:)$", cell.source, re.M)
        assert header, cell.source
        kind = kinds[i % len(kinds)]
        if header.group(0).startswith("class"):  # a class: every method cheats the same way
            methods = re.findall(r"^    def \w+\(.*\):$", cell.source, re.M)
            body = "    " + BODIES[kind].replace("\n    ", "\n        ")
            cell.source = header.group(0) + "\n" + "".join(m + "\n" + body for m in methods)
        else:
            cell.source = header.group(0) + "\n" + BODIES[kind]
        cheated.append(cell.metadata["nbgrader"]["grade_id"])
    graded[0].source = REPLACE + graded[0].source
    # which test cell grades which function: the one after it
    order = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    grade_of = {}
    for gid in cheated:
        after = [t for t in tests if order.index(t.metadata["nbgrader"]["grade_id"]) > order.index(gid)]
        grade_of[gid] = after[0].metadata["nbgrader"]["grade_id"]
    targets = [grade_of[g] for g in cheated]
    if len(targets) >= 2:
        edited = next(t for t in tests if t.metadata["nbgrader"]["grade_id"] == targets[0])
        edited.source = "pass"
        nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != targets[1]]
    return nb, set(targets)


@pytest.mark.parametrize("chapter", chapters())
def test_solution_full_blank_and_cheats_zero(chapter, tmp_path):
    reason = check_sandbox()
    if reason:
        pytest.fail(f"the grading sandbox does not work here: {reason}")
    course = make_course(tmp_path, chapter)
    source = ROOT / "solutions" / chapter / f"{chapter}.ipynb"
    points = {c["metadata"]["nbgrader"]["grade_id"]: c["metadata"]["nbgrader"]["points"]
              for c in json.loads(source.read_text())["cells"]
              if c["metadata"].get("nbgrader", {}).get("grade") and not c["metadata"]["nbgrader"].get("solution")}
    assert len(points) >= 4
    release = course / "exercises" / chapter / f"{chapter}.ipynb"
    cheater, cheated = cheat(nbformat.read(source, as_version=4))
    assert len(cheated) == len(points) - 1
    parts = cases_module(chapter).PARTS
    halfway = half_right(nbformat.read(source, as_version=4), [p.function for p in parts.values()])
    submissions = {"solution": nbformat.read(source, as_version=4), "blank": nbformat.read(release, as_version=4),
                   "cheater": cheater, "halfright": halfway}
    written = [c.metadata["nbgrader"]["grade_id"] for c in written_cells(nbformat.read(source, as_version=4))]
    for student, nb in submissions.items():
        folder = course / "submitted" / student / chapter
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{chapter}.ipynb")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", OMP_NUM_THREADS="1")
    env.pop("COURSE_FAST", None)
    proc = subprocess.run([sys.executable, "-m", "course_lib.grading.autograde", chapter, "--jobs", "2",
                           "--cell-timeout", str(CELL_TIMEOUT)], cwd=course, env=env, capture_output=True,
                          text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: {g: gb.find_grade(g, chapter, chapter, s).score for g in points} for s in submissions}
        manual = {s: {g: (gb.find_grade(g, chapter, chapter, s).auto_score,
                          gb.find_grade(g, chapter, chapter, s).needs_manual_grade) for g in written}
                  for s in ("solution", "blank")}
    assert manual["blank"] == dict.fromkeys(written, (0, False)), manual
    assert manual["solution"] == dict.fromkeys(written, (None, True)), manual
    assert scores["solution"] == points, log[-3000:]
    assert scores["blank"] == dict.fromkeys(points, 0)
    assert scores["cheater"] == {g: 0 if g in cheated else p for g, p in points.items()}, (
        scores["cheater"], (course / "autograded" / "cheater" / chapter / f"{chapter}.ipynb").read_text()[-6000:])
    # half-right: in every part exactly one case failed, and the score is the others' share of the points
    graded = nbformat.read(course / "autograded" / "halfright" / chapter / f"{chapter}.ipynb", as_version=4)
    refs = refs_module(chapter).REFS
    for cell in graded_test_cells(graded):
        gid = cell.metadata["nbgrader"]["grade_id"]
        name = next(n for n, p in parts.items() if p.grade_id == gid)
        text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
        failed = re.findall(r"^  FAILED  (.+?)(?: \(hidden\))?: ", text, re.M)
        passed = re.findall(r"^  passed  (.+?)(?: \(hidden\))?$", text, re.M)
        assert len(failed) == 1 and passed, (gid, text)
        weight = {c: float(refs[name].weights.get(c, 1.0)) for c in failed + passed}
        share = 1 - weight[failed[0]] / sum(weight.values())
        assert scores["halfright"][gid] == pytest.approx(points[gid] * share, abs=1e-3), (gid, text)
    assert written, f"{chapter} has no written question graded by the instructor"
    report = (course / "autograded" / f"{chapter}-similarity.md").read_text()
    assert re.search(r"\| solution \| \S+ \| (solutions|student halfright) \| \d+% \|.*FLAG", report), report
    assert re.search(r"\| cheater \| .*reads the caller's frames.*FLAG", report), report
