"""Verdicts, computed by the grader where no student code ever ran.

The grader (``course_lib.grading.autograde.SandboxedExecute``) does three things around
each sandboxed run of a submission:

1. ``build_cases``: the inputs of every case of every part, the visible ones
   (``course_lib.grading.cases.chNN``) and the hidden ones, drawn by the chapter's
   references (``course_lib.grading.refs.chNN``, or an instructor's private copy, see
   ``refs_module``) from the grading seed. They go into the sandbox as a JSON file.
2. ``expected_values``: the reference's answer to every case, computed here, once per
   grading run (they do not depend on the submission).
3. ``apply_verdicts``: once the notebook has run, each test cell's outputs are replaced
   by its verdict: the results it handed out (``kernel.RESULTS_MIME``) are compared case
   by case (``compare.same``, or the part's own comparison) and the cell gets a report
   and its score (points times the share of cases passed, by weight) as nbgrader's
   partial credit. A test cell whose results did not come back (the kernel died, timed
   out or was made to say nothing) scores 0.

Feedback names each case. A hidden case's line says what kind of failure it was ("wrong
type", "raised TypeError"), never its inputs or its expected value; a visible case's
line shows both sides.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from course_lib.grading import compare, plain
from course_lib.grading.kernel import RESULTS_MIME, cases_module

__all__ = ["Ref", "Raises", "Report", "build_cases", "expected_values", "judge", "judge_visible", "apply_verdicts",
           "refs_module", "grading_seed", "PRIVATE_ENV", "SEED_ENV"]

PRIVATE_ENV = "COURSE_PRIVATE"  # an instructor's private folder: refs/chNN.py, seed, solutions/
SEED_ENV = "COURSE_GRADING_SEED"


@dataclass(frozen=True)
class Ref:
    """How the grader judges one part.

    expected: ``expected(*args)`` -> the right answer (plain data), from the reference.
    hidden: ``hidden(rng)`` -> {case name: args}, the hidden cases, drawn with a numpy
        ``Generator`` seeded from the grading seed (fixed cases may ignore it).
    compare: ``compare(result, expected, args)`` -> ``compare.Mismatch`` or None, on
        decoded values, where ``compare.same`` within ``rtol`` / ``atol`` is not the test.
    weights: case name -> weight (1 by default) in the part's points.
    """

    expected: Callable
    hidden: Callable | None = None
    compare: Callable | None = None
    rtol: float = 1e-6
    atol: float = 1e-8
    weights: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Raises:
    """An expected value that is an exception: the case passes if the code raised one of
    this class (by name)."""

    name: str


@dataclass
class Report:
    fraction: float
    text: str
    failed: int
    passed: list


def refs_module(chapter: str):
    """The chapter's references: ``$COURSE_PRIVATE/refs/<chapter>.py`` where an instructor
    keeps a private one, else ``course_lib.grading.refs.<chapter>``."""
    private = os.environ.get(PRIVATE_ENV)
    if private:
        path = Path(private, "refs", f"{chapter}.py")
        if path.is_file():
            return _private_module(str(path.resolve()), path.stat().st_mtime_ns)
    return importlib.import_module(f"course_lib.grading.refs.{chapter}")


@functools.lru_cache(maxsize=None)
def _private_module(path: str, mtime_ns: int):
    """A private references file, executed once per grading process (and again if it changes)."""
    spec = importlib.util.spec_from_file_location(f"course_private_refs_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grading_seed() -> int:
    """$COURSE_GRADING_SEED, else the number in $COURSE_PRIVATE/seed, else 0 (the public seed)."""
    if os.environ.get(SEED_ENV):
        return int(os.environ[SEED_ENV])
    private = os.environ.get(PRIVATE_ENV)
    if private and Path(private, "seed").is_file():
        return int(Path(private, "seed").read_text().strip())
    return 0


def _rng(seed: int, chapter: str, part: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{chapter}/{part}".encode())])


def build_cases(chapter: str, seed: int | None = None) -> dict:
    """{"chapter", "parts": {part: [{"name", "hidden", "args"}]}} with args as plain data."""
    seed = grading_seed() if seed is None else seed
    parts_spec, refs = cases_module(chapter).PARTS, refs_module(chapter).REFS
    parts = {}
    for name, part in parts_spec.items():
        cases = [{"name": case, "hidden": False, "args": plain.encode(tuple(args))}
                 for case, args in part.visible.items()]
        ref = refs[name]
        if ref.hidden is not None:
            for case, args in ref.hidden(_rng(seed, chapter, name)).items():
                if case in part.visible:
                    raise ValueError(f"{chapter}/{name}: hidden case {case!r} has a visible case's name")
                cases.append({"name": case, "hidden": True, "args": plain.encode(tuple(args))})
        parts[name] = cases
    return {"chapter": chapter, "parts": parts}


def expected_values(chapter: str, cases: dict) -> dict:
    """{part: {case: expected, decoded}}, from the chapter's references."""
    refs = refs_module(chapter).REFS
    out = {}
    for name, part_cases in cases["parts"].items():
        ref = refs[name]
        out[name] = {}
        for c in part_cases:
            value = ref.expected(*plain.native(plain.decode(c["args"])))
            out[name][c["name"]] = value if isinstance(value, Raises) else plain.decode(plain.encode(value))
    return out


def _failure(result: dict | None, expected, args, ref: Ref, hidden: bool) -> str | None:
    if result is None:
        return "did not run (the cell stopped before this case)"
    if isinstance(expected, Raises):
        if result.get("error") == expected.name:
            return None
        got = f"raised {result['error']}" if "error" in result else "returned a value"
        return f"expected it to raise {expected.name}, but it {got}"
    if "error" in result:
        message = str(result.get("message", ""))[:500]
        return f"raised {result['error']}" + ("" if hidden or not message else f": {message}")
    value = plain.decode(result.get("value"))
    if ref.compare is not None:
        mismatch = ref.compare(value, expected, plain.decode(args))
    else:
        mismatch = compare.same(value, expected, ref.rtol, ref.atol)
    if mismatch is None:
        return None
    return f"wrong {mismatch.kind}" if hidden else mismatch.detail


def judge(chapter: str, name: str, cases: list, results_doc, expected: dict, ref: Ref | None = None) -> Report:
    """The verdict on one part: ``cases`` as ``build_cases`` made them, ``results_doc``
    what the test cell handed out (None if nothing came back)."""
    ref = ref or refs_module(chapter).REFS[name]
    results = {}
    if isinstance(results_doc, dict) and results_doc.get("part") == name \
            and isinstance(results_doc.get("results"), list):
        for r in results_doc["results"]:
            if isinstance(r, dict) and isinstance(r.get("case"), str):
                results.setdefault(r["case"], r)
    lines, total, earned, failed, passed = [], 0.0, 0.0, 0, []
    for case in cases:
        weight = float(ref.weights.get(case["name"], 1.0))
        total += weight
        label = case["name"] + (" (hidden)" if case["hidden"] else "")
        why = _failure(results.get(case["name"]), expected[case["name"]], case["args"], ref, case["hidden"])
        if why is None:
            earned += weight
            passed.append(case["name"])
            lines.append(f"  passed  {label}")
        else:
            failed += 1
            lines.append(f"  FAILED  {label}: {why}")
    fraction = earned / total if total else 0.0
    return Report(fraction, "\n".join(lines), failed, passed)


def judge_visible(chapter: str, name: str, cases: list, results: list) -> Report:
    """For the student's own session: the visible cases, judged in their kernel."""
    part_cases = [dict(c, hidden=False) for c in cases]
    expected = expected_values(chapter, {"parts": {name: part_cases}})[name]
    report = judge(chapter, name, part_cases, {"part": name, "results": results}, expected)
    head = ("all visible cases passed" if not report.failed else
            f"{len(part_cases) - report.failed} of {len(part_cases)} visible cases passed")
    report.text = f"{report.text}\n{head}; hidden cases run when the exercise is graded"
    return report


def results_in(outputs, name: str):
    """The results document a test cell handed out (the last one for this part), or None."""
    found = None
    for out in outputs:
        if out.get("output_type") == "display_data" and RESULTS_MIME in out.get("data", {}):
            try:
                doc = json.loads(out["data"][RESULTS_MIME])
            except (ValueError, TypeError, RecursionError):
                continue
            if isinstance(doc, dict) and doc.get("part") == name:
                found = doc
    return found


PRINTED = "course_grading_printed"  # metadata of the output that keeps what a test cell printed
PRINTED_CHARS = 20_000


def what_it_printed(outputs) -> str:
    """The streams and errors of a test cell as it ran (the student's code may print
    there), as one text: head and tail kept past ``PRINTED_CHARS``."""
    parts = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            parts.append(out.get("text", ""))
        elif kind == "error":
            parts.append(f"{out.get('ename', '')}: {out.get('evalue', '')}\n")
    text = "".join(parts)
    if not text.strip():
        return ""
    if len(text) > PRINTED_CHARS:
        half = PRINTED_CHARS // 2
        text = text[:half] + f"\n[... {len(text) - 2 * half} characters left out ...]\n" + text[-half:]
    return "What the cell printed while graded (not shown in feedback):\n" + text


def _points_text(x: float) -> str:
    return f"{x:.4g}"


def apply_verdicts(nb, chapter: str, cases: dict, expected: dict, log=None) -> dict:
    """Replace each test cell's outputs by its verdict (see the module docstring); returns
    {grade_id: (score, points)}."""
    import nbformat
    from nbgrader import utils

    parts = {part.grade_id: name for name, part in cases_module(chapter).PARTS.items()}
    refs = refs_module(chapter).REFS
    scores = {}
    for cell in nb.cells:
        if cell.cell_type != "code" or not utils.is_grade(cell) or utils.is_solution(cell):
            continue
        grade_id = cell.metadata["nbgrader"]["grade_id"]
        if grade_id not in parts:
            continue
        name = parts[grade_id]
        points = float(cell.metadata["nbgrader"]["points"])
        doc = results_in(cell.get("outputs", []), name)
        report = judge(chapter, name, cases["parts"][name], doc, expected[name], refs[name])
        score = round(points * report.fraction, 4)
        if math.isclose(score, points):
            score = points
        head = f"{name}: {_points_text(score)} of {_points_text(points)} points"
        if doc is None:
            stopped = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            why = stopped[-1].get("evalue", "") if stopped else ""
            head += " (no results came back from this cell" + (f": {why[:300]}" if why else "") + ")"
        outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{head}\n{report.text}\n")]
        printed = what_it_printed(cell.get("outputs", []))
        if printed:  # for the instructor; feedback leaves it out (it could show hidden inputs)
            outputs.insert(0, nbformat.v4.new_output("display_data", data={"text/plain": printed},
                                                     metadata={PRINTED: True}))
        if score > 0:
            outputs.append(nbformat.v4.new_output("execute_result", data={"text/plain": _points_text(score)},
                                                  execution_count=cell.get("execution_count")))
        else:
            outputs.append(nbformat.v4.new_output("error", ename="NoPoints", evalue="no case of this part passed",
                                                  traceback=["NoPoints: no case of this part passed"]))
        cell.outputs = outputs
        scores[grade_id] = (score, points)
    return scores
