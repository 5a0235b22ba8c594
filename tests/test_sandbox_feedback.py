"""Feedback pages (``nbgrader generate_feedback`` with the course's configuration) show
the student a line per case and every score, never a hidden case's inputs or expected
value: not in the verdict, and not when the student's own code prints the cases it was
handed (while graded, the kernel holds every case's inputs)."""

import html
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest

from course_lib.grading import verdict
from course_lib.grading.sandbox import check_sandbox
from nbgrader_course import BIN, ROOT, make_course, nbgrader

pytestmark = pytest.mark.slow

A = "ch01"
MARK = "SNOOPED-CASES"


def cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def edit(nb, grade_id, old, new):
    c = cell(nb, grade_id)
    assert old in c.source, (grade_id, old)
    c.source = c.source.replace(old, new)


def page_text(path):
    """The text a student reads on an HTML page."""
    page = re.sub(r"<style.*?</style>|<script.*?</script>", "", path.read_text(), flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


SNOOP = '''import json, os
path = os.environ.get("COURSE_GRADING_CASES")
if path:
    print("SNOOPED" "-CASES", open(path).read())  # every case's inputs, hidden ones included


def _print_args(*args):
    print("SNOOPED" "-CASES", repr(args))


'''


def hidden_inputs():
    """Texts that would give a hidden case away: its inputs' numbers and token lists."""
    found = set()
    for part in verdict.build_cases(A, 0)["parts"].values():
        for case in part:
            if case["hidden"]:
                for number in re.findall(r"\d\.\d{8,}", json.dumps(case["args"])):
                    found.add(number)
    return found


@pytest.fixture(scope="module")
def feedback(tmp_path_factory):
    reason = check_sandbox()
    if reason:
        pytest.fail(f"the grading sandbox does not work here: {reason}")
    course = make_course(tmp_path_factory.mktemp("feedback"), A)
    source = ROOT / "solutions" / A / f"{A}.ipynb"
    # passes perplexity's visible cases and fails a hidden one; fails sample_next's visible case
    careless = nbformat.read(source, as_version=4)
    edit(careless, "perplexity", 'raise ValueError("perplexity of an empty list of probabilities")', "return 1.0")
    edit(careless, "sample_next", "if u < total:", "if u <= total:")
    # prints the cases file when its cell runs, and each graded call's inputs
    snoop = nbformat.read(source, as_version=4)
    edit(snoop, "count_ngrams", "def count_ngrams(sentences, n):", SNOOP + "def count_ngrams(sentences, n):\n"
         "    _print_args(sentences, n)")
    edit(snoop, "perplexity", "def perplexity(probs):", "def perplexity(probs):\n    _print_args(probs)")
    for student, nb in {"careless": careless, "snoop": snoop}.items():
        folder = course / "submitted" / student / A
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{A}.ipynb")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", OMP_NUM_THREADS="1")
    env.pop("COURSE_FAST", None)
    graded = subprocess.run([sys.executable, "-m", "course_lib.grading.autograde", A, "--jobs", "2"], cwd=course,
                            env=env, capture_output=True, text=True, timeout=600)
    assert graded.returncode == 0, (graded.stdout + graded.stderr)[-3000:]
    made = nbgrader(course, "generate_feedback", A, "--force")
    assert made.returncode == 0, (made.stdout + made.stderr)[-3000:]
    return course


def test_the_snoop_saw_the_cases_but_its_page_does_not_show_them(feedback):
    graded = (feedback / "autograded" / "snoop" / A / f"{A}.ipynb").read_text()
    secrets = hidden_inputs()
    assert len(secrets) >= 10
    assert MARK in graded and any(s in graded for s in secrets)  # the instructor's copy keeps what it printed
    text = page_text(feedback / "feedback" / "snoop" / A / f"{A}.html")
    assert MARK not in text
    assert not [s for s in secrets if s in text]
    assert "the outputs of your own cells are not shown in feedback" in text
    scores = re.findall(r"Score: ([\d.]+) / ([\d.]+)", text)
    points = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"]
              for c in nbformat.read(ROOT / "solutions" / A / f"{A}.ipynb", as_version=4).cells
              if c.metadata.get("nbgrader", {}).get("grade")}
    full = (f"{float(points['test_count_ngrams'])}", f"{float(points['test_count_ngrams'])}")
    assert full in scores, (full, scores)  # its grade is untouched


def test_the_page_shows_a_line_per_case_and_partial_scores(feedback):
    text = page_text(feedback / "feedback" / "careless" / A / f"{A}.html")
    cases = verdict.build_cases(A, 0)["parts"]["perplexity"]
    share = round(2 * (len(cases) - 1) / len(cases), 4)
    scores = re.findall(r"Score: ([\d.]+) / ([\d.]+)", text)
    assert any(abs(float(a) - share) < 0.006 and b == "2.0" for a, b in scores), (share, scores)  # 2 decimals shown
    assert "passed  uniform over 4" in text
    # a hidden case is named, with what kind of failure it was and nothing of its inputs
    assert ("FAILED  an empty list raises ValueError (hidden): "
            "expected it to raise ValueError, but it returned a value") in text
    # a visible failure shows both sides
    assert re.search(r"FAILED  u at and between the edges: the result\[\d\]: expected '\w', got '\w'", text)
    assert text.count("passed  ") >= 20
