"""For every exercise: the solution scores full marks and the blank release scores 0 on
every graded cell, graded for real by nbgrader (chapter 1's pipeline tests go further)."""

import json

import nbformat
import pytest
from nbgrader.api import Gradebook

from nbgrader_course import ROOT, chapters, make_course, nbgrader

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("chapter", chapters())
def test_solution_full_blank_zero(chapter, tmp_path):
    course = make_course(tmp_path, chapter)
    source = ROOT / "solutions" / chapter / f"{chapter}.ipynb"
    points = {c["metadata"]["nbgrader"]["grade_id"]: c["metadata"]["nbgrader"]["points"]
              for c in json.loads(source.read_text())["cells"]
              if c["metadata"].get("nbgrader", {}).get("grade")}
    assert len(points) >= 4
    for student, nb_path in (("solution", source), ("blank", course / "exercises" / chapter / f"{chapter}.ipynb")):
        folder = course / "submitted" / student / chapter
        folder.mkdir(parents=True)
        nbformat.write(nbformat.read(nb_path, as_version=4), folder / f"{chapter}.ipynb")
    proc = nbgrader(course, "autograde", chapter, "--force")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for grade_id, full in points.items():
            assert gb.find_grade(grade_id, chapter, chapter, "solution").score == full, grade_id
            assert gb.find_grade(grade_id, chapter, chapter, "blank").score == 0, grade_id
