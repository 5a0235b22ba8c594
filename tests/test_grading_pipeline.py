"""The grading pipeline, run for real: nbgrader autograde over a class of submissions,
scores read back from the gradebook.

One class, graded in one run of the instructor's command (`make autograde A=ch01` runs
`nbgrader autograde ch01 --force`): the solution scores full marks; the blank release
scores 0 on every graded cell (every test can fail); an infinite loop loses only its own
part; edited and deleted test cells are restored; objects that equal everything and code
that calls course_lib earn nothing; a file that is not JSON is reported while the rest of
the class is still graded.
"""

import json
import re

import nbformat
import pytest
from nbgrader.api import Gradebook

from nbgrader_course import ROOT, make_course, nbgrader

pytestmark = pytest.mark.slow

A = "ch01"
POINTS = {"test_count_ngrams": 3, "test_mle_prob": 2, "test_add_k_prob": 2,
          "test_perplexity": 2, "test_sample_next": 2}
FULL = dict(POINTS)
ZERO = dict.fromkeys(POINTS, 0)


def replace_function(nb, name, body):
    """Replace the solution cell that defines ``name`` with ``body``."""
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == name:
            cell.source = body
            return
    raise KeyError(name)


def cell_index(nb, grade_id):
    return next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


SUBMISSIONS = {}


def submission(student):
    def register(fn):
        SUBMISSIONS[student] = fn
        return fn
    return register


@submission("solution")
def _solution(solution, release):
    return solution, FULL


@submission("blank")
def _blank(solution, release):
    return release, ZERO


@submission("loop")
def _loop(solution, release):
    replace_function(solution, "perplexity", "def perplexity(probs):\n    while True:\n        pass\n")
    return solution, FULL | {"test_perplexity": 0}


@submission("tamper")
def _tamper(solution, release):
    # wrong answers, then the failing tests "neutralized": one edited, one deleted
    replace_function(solution, "mle_prob", "def mle_prob(counts, word, context):\n    return 0.5\n")
    replace_function(solution, "add_k_prob", "def add_k_prob(counts, word, context, k, vocab_size):\n    return 0.5\n")
    solution.cells[cell_index(solution, "test_mle_prob")].source = "pass"
    del solution.cells[cell_index(solution, "test_add_k_prob")]
    return solution, FULL | {"test_mle_prob": 0, "test_add_k_prob": 0}


CHEATS = '''
class Anything(dict):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__


class AnyFloat(float):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __lt__(self, other):
        return True
    def __gt__(self, other):
        return True
    __hash__ = float.__hash__

'''


@submission("cheat")
def _cheat(solution, release):
    replace_function(solution, "count_ngrams", CHEATS + "def count_ngrams(sentences, n):\n    return Anything()\n")
    replace_function(solution, "mle_prob", "def mle_prob(counts, word, context):\n    return AnyFloat(0.0)\n")
    replace_function(solution, "perplexity", "def perplexity(probs):\n    return AnyFloat(1.0)\n")
    return solution, FULL | {"test_count_ngrams": 0, "test_mle_prob": 0, "test_perplexity": 0}


@submission("delegate")
def _delegate(solution, release):
    # counts read off course_lib's model: right answers, not the student's own code
    replace_function(solution, "count_ngrams", (
        "from course_lib.ngram import NGramLM, pad_sentence\n\n"
        "def count_ngrams(sentences, n):\n"
        "    if not sentences:\n"
        "        return {}\n"
        "    lm = NGramLM(n, 'mle').fit([list(s) for s in sentences])\n"
        "    grams = {tuple(p[i:i + n]) for s in sentences for p in [pad_sentence(list(s), n)]\n"
        "             for i in range(len(p) - n + 1)}\n"
        "    return {g: lm.count(g) for g in grams}\n"))
    return solution, FULL | {"test_count_ngrams": 0}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = make_course(tmp_path_factory.mktemp("grading"), A)
    source = ROOT / "solutions" / A / f"{A}.ipynb"
    released = course / "exercises" / A / f"{A}.ipynb"
    expected = {}
    for student, build in SUBMISSIONS.items():
        nb, scores = build(nbformat.read(source, as_version=4), nbformat.read(released, as_version=4))
        folder = course / "submitted" / student / A
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{A}.ipynb")
        expected[student] = scores
    broken = course / "submitted" / "broken" / A
    broken.mkdir(parents=True)
    (broken / f"{A}.ipynb").write_text('{"cells": [ this is not JSON')

    proc = nbgrader(course, "autograde", A, "--force")
    log = proc.stdout + proc.stderr
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {}
        for student in SUBMISSIONS:
            scores[student] = {g: gb.find_grade(g, A, A, student).score for g in POINTS}
        totals = {s.student.id: (s.score, s.max_score) for s in gb.find_assignment(A).submissions}
    return course, proc.returncode, log, expected, scores, totals


@pytest.mark.parametrize("student", list(SUBMISSIONS))
def test_scores_per_part(graded, student):
    _, _, log, expected, scores, _ = graded
    assert scores[student] == expected[student], f"{student}: {scores[student]}\n{log[-3000:]}"


def test_totals(graded):
    _, _, _, expected, _, totals = graded
    assert totals["solution"] == (11.0, 11.0)
    assert totals["blank"] == (0.0, 11.0)
    for student, parts in expected.items():
        assert totals[student] == (sum(parts.values()), 11.0), student


def test_broken_file_is_reported_and_the_class_still_graded(graded):
    course, returncode, log, _, _, _ = graded
    assert returncode != 0  # the instructor's command says something went wrong...
    assert re.search(r"ERROR.*error processing assignment.*submitted/broken/ch01", log), log[-3000:]
    assert not (course / "autograded" / "broken").exists()
    for student in SUBMISSIONS:  # ...and everyone else was graded
        assert (course / "autograded" / student / A / f"{A}.ipynb").is_file(), student


def test_timeout_is_what_stopped_the_loop(graded):
    course, _, _, _, _, _ = graded
    nb = json.loads((course / "autograded" / "loop" / A / f"{A}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "test_perplexity")
    text = json.dumps(cell["outputs"])
    assert "KeyboardInterrupt" in text or "TimeoutError" in text or "CellTimeoutError" in text, text[:2000]


def test_restored_tests_ran_for_the_tamperer(graded):
    course, _, _, _, _, _ = graded
    nb = json.loads((course / "autograded" / "tamper" / A / f"{A}.ipynb").read_text())
    by_id = {c["metadata"].get("nbgrader", {}).get("grade_id"): c for c in nb["cells"]}
    original = json.loads((ROOT / "solutions" / A / f"{A}.ipynb").read_text())
    original_src = {c["metadata"].get("nbgrader", {}).get("grade_id"): "".join(c["source"]) for c in original["cells"]}
    for gid in ("test_mle_prob", "test_add_k_prob"):
        assert gid in by_id, f"{gid} was not put back"
        # a deleted cell comes back with a comment from nbgrader on top
        assert "".join(by_id[gid]["source"]).endswith(original_src[gid])
        assert "AssertionError" in json.dumps(by_id[gid]["outputs"])


def test_delegation_is_named_in_the_feedback(graded):
    course, _, _, _, _, _ = graded
    nb = json.loads((course / "autograded" / "delegate" / A / f"{A}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "test_count_ngrams")
    assert "graded code must be your own" in json.dumps(cell["outputs"])
