"""exercises/ is exactly what nbgrader generates from solutions/, and gives nothing away;
the chapter pages do not print the code their exercise asks for."""

import json
import re

import pytest

from nbgrader_course import ROOT, chapters, make_course

pytestmark = pytest.mark.slow


def cells(path):
    nb = json.loads(path.read_text())
    return [(c["cell_type"], "".join(c["source"]), c.get("metadata", {})) for c in nb["cells"]]


@pytest.mark.parametrize("chapter", chapters())
def test_committed_release_equals_a_fresh_one(chapter, tmp_path):
    course = make_course(tmp_path, chapter)
    fresh = sorted((course / "exercises" / chapter).rglob("*.ipynb"))
    committed = sorted((ROOT / "exercises" / chapter).rglob("*.ipynb"))
    rel = lambda paths, base: [p.relative_to(base) for p in paths]  # noqa: E731
    assert rel(fresh, course / "exercises" / chapter) == rel(committed, ROOT / "exercises" / chapter)
    for new, old in zip(fresh, committed, strict=True):
        assert cells(new) == cells(old), f"{old} is stale: run `make release` and commit it"


@pytest.mark.parametrize("chapter", chapters())
def test_release_holds_no_solutions_and_no_hidden_tests(chapter):
    source_nb = json.loads((ROOT / "solutions" / chapter / f"{chapter}.ipynb").read_text())
    for path in (ROOT / "exercises" / chapter).rglob("*.ipynb"):
        text = path.read_text()
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
            assert marker not in text, (path, marker)
        released = json.loads(text)
        n_solution = sum(bool(c["metadata"].get("nbgrader", {}).get("solution")) for c in source_nb["cells"])
        stubs = [c for c in released["cells"] if c["metadata"].get("nbgrader", {}).get("solution")]
        assert len(stubs) == n_solution >= 4
        for c in stubs:  # code: a stub that fails its tests; a written answer: nothing of the model answer
            if c["cell_type"] == "code":
                assert "raise NotImplementedError()" in "".join(c["source"])
            else:
                assert "".join(c["source"]).strip() == "YOUR ANSWER HERE", c
        graded = [c for c in released["cells"] if c["metadata"].get("nbgrader", {}).get("grade")]
        assert len(graded) >= 4 and all(c["metadata"]["nbgrader"]["points"] > 0 for c in graded)


def graded_functions(chapter):
    from course_lib.grading.kernel import cases_module

    return {part.function for part in cases_module(chapter).PARTS.values()}


@pytest.mark.parametrize("chapter", chapters())
def test_the_page_does_not_print_what_its_exercise_grades(chapter):
    pages = list((ROOT / "book").glob(f"{chapter}_*.ipynb"))
    assert len(pages) == 1, pages
    cells_ = json.loads(pages[0].read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells_ if c["cell_type"] == "code")
    printed = set(re.findall(r"getsource\(\s*(?:[\w.]+\.)?(\w+)\s*\)", code))
    assert not printed & graded_functions(chapter), f"{pages[0].name} prints {printed & graded_functions(chapter)}"


@pytest.mark.parametrize("chapter", chapters())
def test_the_page_ends_with_its_exercise(chapter):
    page = next((ROOT / "book").glob(f"{chapter}_*.ipynb"))
    last = [c for c in json.loads(page.read_text())["cells"] if c["cell_type"] == "markdown"][-1]
    text = "".join(last["source"])
    link = f"https://colab.research.google.com/github/lm-course/counting-to-gpt/blob/main/exercises/{chapter}/{chapter}.ipynb"
    assert f"## Exercise {int(chapter[2:])}" in text and link in text, text[-600:]
    assert (ROOT / "exercises" / chapter / f"{chapter}.ipynb").is_file()
