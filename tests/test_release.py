"""exercises/ is exactly what nbgrader generates from solutions/, and gives nothing away."""

import json

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
        for c in stubs:
            assert "raise NotImplementedError()" in "".join(c["source"])
        graded = [c for c in released["cells"] if c["metadata"].get("nbgrader", {}).get("grade")]
        assert len(graded) >= 4 and all(c["metadata"]["nbgrader"]["points"] > 0 for c in graded)
