"""Feedback pages (``nbgrader generate_feedback`` with the course's configuration) show
the student the visible tests, their results and every score, never the source of a
hidden test: not in the test cells, not in a failure's traceback, and not when the
student's own code prints each cell's source as it runs (it shares the kernel with the
tests, so it sees them)."""

import html
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest

from course_lib.grading.sandbox import check_sandbox
from nbgrader_course import BIN, ROOT, make_course, nbgrader

pytestmark = pytest.mark.slow

A = "ch01"
BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


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


def hidden_and_visible_lines(notebook_path):
    """Lines (stripped, 6 characters or more) only in hidden tests; lines of visible code."""
    hidden, visible = set(), set()
    for c in json.loads(notebook_path.read_text())["cells"]:
        if c["cell_type"] != "code":
            continue
        inside = False
        for line in "".join(c["source"]).split("\n"):
            inside = inside or BEGIN in line
            (hidden if inside else visible).add(line.strip())
            inside = inside and END not in line
    return {h for h in hidden - visible if len(h) >= 6}, visible


@pytest.fixture(scope="module")
def feedback(tmp_path_factory):
    reason = check_sandbox()
    if reason:
        pytest.fail(f"the grading sandbox does not work here: {reason}")
    course = make_course(tmp_path_factory.mktemp("feedback"), A)
    source = ROOT / "solutions" / A / f"{A}.ipynb"
    # passes the visible tests of perplexity and fails a hidden one; fails sample_next's visible test
    careless = nbformat.read(source, as_version=4)
    edit(careless, "perplexity", 'raise ValueError("perplexity of an empty list of probabilities")', "return 1.0")
    edit(careless, "sample_next", "if u < total:", "if u <= total:")
    # prints the source of every cell before it runs, hidden tests included
    snoop = nbformat.read(source, as_version=4)
    edit(snoop, "count_ngrams", "def count_ngrams", "get_ipython().events.register('pre_run_cell', "
         "lambda info: print(info.raw_cell))\n\n\ndef count_ngrams")
    for student, nb in {"careless": careless, "snoop": snoop}.items():
        folder = course / "submitted" / student / A
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{A}.ipynb")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", OMP_NUM_THREADS="1")
    env.pop("COURSE_FAST", None)
    graded = subprocess.run([sys.executable, "-m", "course_lib.grading.autograde", A, "--jobs", "2"], cwd=course, env=env,
                            capture_output=True, text=True, timeout=600)
    assert graded.returncode == 0, (graded.stdout + graded.stderr)[-3000:]
    made = nbgrader(course, "generate_feedback", A, "--force")
    assert made.returncode == 0, (made.stdout + made.stderr)[-3000:]
    return course


@pytest.mark.parametrize("student", ["careless", "snoop"])
def test_no_hidden_test_line_reaches_the_page(feedback, student):
    autograded = feedback / "autograded" / student / A / f"{A}.ipynb"
    hidden, visible = hidden_and_visible_lines(autograded)
    assert len(hidden) >= 20  # chapter 1 has hidden tests in every test cell...
    graded_text = json.dumps(json.loads(autograded.read_text()))
    assert all(h.replace('"', '\\"') in graded_text for h in hidden)  # ...they ran, and the graded copy keeps them
    text = page_text(feedback / "feedback" / student / A / f"{A}.html")
    leaked = sorted(h for h in hidden if h in text)
    assert not leaked, leaked
    # the same reading of the page finds the visible tests
    for line in ('print("visible tests passed")', 'check_close(results[1], 4.0, "perplexity([0.5, 0.125]) = 2 ** '
                 '((1 + 3) / 2)")'):
        assert line in visible and line in text, line
    assert "hidden tests ran here; they are not shown" in text


def test_the_page_shows_results_and_scores(feedback):
    text = page_text(feedback / "feedback" / "careless" / A / f"{A}.html")
    scores = re.findall(r"Score: ([\d.]+) / ([\d.]+)", text)
    assert ("0.0", "2.0") in scores and ("3.0", "3.0") in scores, scores
    assert "A hidden test failed (AssertionError)." in text
    # a visible failure keeps its message
    assert "expected ['a', 'a', 'b', 'b', 'b', 'c', 'c'], got" in text
    assert text.count("visible tests passed") >= 4


def test_the_snoops_printout_is_cut_not_its_grade(feedback):
    text = page_text(feedback / "feedback" / "snoop" / A / f"{A}.html")
    assert "a line of a hidden test, not shown" in text
    assert re.findall(r"Score: ([\d.]+) / ([\d.]+)", text) and "Score: 0.0" not in text
