"""For every exercise, graded for real by nbgrader: the solution scores full marks, and
both the blank release and a cheat (every graded function returns an object that equals
everything) score 0 on every graded cell. Chapter 1's pipeline tests go further."""

import json
import re

import nbformat
import pytest
from nbgrader.api import Gradebook

from nbgrader_course import ROOT, chapters, make_course, nbgrader

pytestmark = pytest.mark.slow

ANYTHING = """class Anything:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__


"""


def cheat(nb):
    """Every solution cell's function now returns Anything()."""
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            header = re.search(r"^def \w+\(.*\):$", cell.source, re.M)
            assert header, cell.source
            cell.source = ANYTHING + header.group(0) + "\n    return Anything()\n"
    return nb


@pytest.mark.parametrize("chapter", chapters())
def test_solution_full_blank_zero(chapter, tmp_path):
    course = make_course(tmp_path, chapter)
    source = ROOT / "solutions" / chapter / f"{chapter}.ipynb"
    points = {c["metadata"]["nbgrader"]["grade_id"]: c["metadata"]["nbgrader"]["points"]
              for c in json.loads(source.read_text())["cells"]
              if c["metadata"].get("nbgrader", {}).get("grade")}
    assert len(points) >= 4
    release = course / "exercises" / chapter / f"{chapter}.ipynb"
    submissions = {"solution": nbformat.read(source, as_version=4), "blank": nbformat.read(release, as_version=4),
                   "cheat": cheat(nbformat.read(source, as_version=4))}
    for student, nb in submissions.items():
        folder = course / "submitted" / student / chapter
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{chapter}.ipynb")
    proc = nbgrader(course, "autograde", chapter, "--force")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for grade_id, full in points.items():
            assert gb.find_grade(grade_id, chapter, chapter, "solution").score == full, grade_id
            assert gb.find_grade(grade_id, chapter, chapter, "blank").score == 0, grade_id
            assert gb.find_grade(grade_id, chapter, chapter, "cheat").score == 0, grade_id
