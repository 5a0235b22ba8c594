"""The grading pipeline, run for real: nbgrader autograde over a class of submissions,
scores read back from the gradebook.

One class, graded in one run of nbgrader's own command (`nbgrader autograde ch01
--force`, which the course's configuration points at the sandbox and the grader's
verdicts): the solution scores full marks; the blank release scores 0 on every graded
cell (every test can fail); an infinite loop loses only its own part; edited and deleted
test cells are restored; objects that equal everything and code that calls course_lib
earn nothing; a part wrong on some cases earns its share of the others; a bug in Part 1
costs Part 1 only; code that hands out forged results earns only the cases whose answers
it already knew (the visible ones); a kernel that dies loses the part it died in; a file
that is not JSON is reported while the rest of the class is still graded.
"""

import json
import re

import nbformat
import pytest
from nbgrader.api import Gradebook

from course_lib.grading import compare, plain, verdict
from nbgrader_course import ROOT, make_course, nbgrader

pytestmark = pytest.mark.slow

A = "ch01"
_SOURCE_CELLS = json.loads((ROOT / "solutions" / A / f"{A}.ipynb").read_text())["cells"]
POINTS = {c["metadata"]["nbgrader"]["grade_id"]: c["metadata"]["nbgrader"]["points"] for c in _SOURCE_CELLS
          if c["metadata"].get("nbgrader", {}).get("grade") and c["cell_type"] == "code"}  # the test cells
WRITTEN = sum(c["metadata"]["nbgrader"]["points"] for c in _SOURCE_CELLS
              if c["metadata"].get("nbgrader", {}).get("grade") and c["cell_type"] == "markdown")  # by hand
MAX = sum(POINTS.values()) + WRITTEN
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


CASES = verdict.build_cases(A, 0)["parts"]  # the seed the grader uses when none is set
EXPECTED = verdict.expected_values(A, {"parts": CASES})


def share(part, passing):
    """The points of ``part``'s test cell for the cases ``passing`` selects."""
    cases = CASES[part]
    return round(POINTS[f"test_{part}"] * sum(map(passing, cases)) / len(cases), 4)


def right_by(part, function):
    """A predicate on ``part``'s cases: ``function`` (a copy of a submission's code, run here)
    gets the case right, as the grader would judge it."""
    ref = verdict.refs_module(A).REFS[part]

    def passing(case):
        value = plain.decode(plain.encode(function(*plain.native(plain.decode(case["args"])))))
        return compare.same(value, EXPECTED[part][case["name"]], ref.rtol, ref.atol) is None
    return passing


def empty_corpus(case):
    return case["args"] == {"$tuple": [[], 3]}


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
    right_by_chance = {p: share(p, lambda c, p=p: EXPECTED[p][c["name"]] == 0.5) for p in ("mle_prob", "add_k_prob")}
    return solution, FULL | {f"test_{p}": v for p, v in right_by_chance.items()}


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
    # only the empty corpus, answered without course_lib, earns its case
    return solution, FULL | {"test_count_ngrams": share("count_ngrams", empty_corpus)}


@submission("partial")
def _partial(solution, release):
    # forgets that an empty list has no perplexity: wrong on that case only
    replace_function(solution, "perplexity", (
        "def perplexity(probs):\n"
        "    probs = list(probs)\n"
        "    if any(p == 0 for p in probs):\n"
        "        return math.inf\n"
        "    return float(2 ** (-sum(math.log2(p) for p in probs) / max(len(probs), 1)))\n"))
    return solution, FULL | {"test_perplexity": share("perplexity", lambda c: c["args"] != {"$tuple": [[]]})}


@submission("cascade")
def _cascade(solution, release):
    # Part 1 is wrong (no padding); the parts built on counts still get theirs
    code = ("def count_ngrams(sentences, n):\n"
            "    counts = {}\n"
            "    for s in sentences:\n"
            "        for i in range(len(s) - n + 1):\n"
            "            g = tuple(s[i:i + n])\n"
            "            counts[g] = counts.get(g, 0) + 1\n"
            "    return counts\n")
    replace_function(solution, "count_ngrams", code)
    here = {}
    exec(code, here)
    lucky = right_by("count_ngrams", here["count_ngrams"])  # unigrams need no padding, nor does an empty corpus
    return solution, FULL | {"test_count_ngrams": share("count_ngrams", lucky)}


FORGER = """
import json
import course_lib.grading.kernel as kernel
from IPython.display import display

KNOWN = {"uniform over 4": 4.0, "2 ** ((1 + 3) / 2)": 4.0, "a zero probability": {"$float": "inf"}}


def forged_check_part(chapter, name, namespace):
    if name != "perplexity":
        return real_check_part(chapter, name, namespace)
    with open(os.environ["COURSE_GRADING_CASES"]) as f:  # every case's name and inputs are here
        cases = json.load(f)["parts"][name]
    results = [{"case": c["name"], "value": KNOWN.get(c["name"], 2.0)} for c in cases]
    display({kernel.RESULTS_MIME: json.dumps({"chapter": chapter, "part": name, "results": results})}, raw=True)


import os
real_check_part = kernel.check_part
kernel.check_part = forged_check_part


"""


@submission("forger")
def _forger(solution, release):
    # hands out made-up results for perplexity: only the answers it knew in advance count
    cell = next(c for c in solution.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "perplexity")
    cell.source = FORGER + "def perplexity(probs):\n    return 2.0\n"
    return solution, FULL | {"test_perplexity": share("perplexity", lambda c: c["name"] in (
        "uniform over 4", "2 ** ((1 + 3) / 2)", "a zero probability"))}


@submission("crash")
def _crash(solution, release):
    # the kernel dies in the last part: it scores 0, the parts before keep theirs
    replace_function(solution, "sample_next", "import os\n\ndef sample_next(distribution, u):\n    os._exit(1)\n")
    return solution, FULL | {"test_sample_next": 0}


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
    assert scores[student] == pytest.approx(expected[student], abs=1e-3), f"{student}: {scores[student]}\n{log[-3000:]}"


def test_totals(graded):
    _, _, _, expected, _, totals = graded
    assert totals["solution"] == (sum(POINTS.values()), MAX)  # the written answer waits for the instructor
    assert totals["blank"] == (0.0, MAX)
    for student, parts in expected.items():
        assert totals[student][0] == pytest.approx(sum(parts.values()), abs=1e-3), student
        assert totals[student][1] == MAX


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
        assert "FAILED" in json.dumps(by_id[gid]["outputs"])


def test_delegation_is_named_in_the_feedback(graded):
    course, _, _, _, _, _ = graded
    nb = json.loads((course / "autograded" / "delegate" / A / f"{A}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "test_count_ngrams")
    assert "graded code must be your own" in json.dumps(cell["outputs"])
