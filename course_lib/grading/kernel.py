"""What a test cell runs in the student's kernel: call the graded code on each case.

A test cell of an exercise is one call::

    from course_lib.grading.kernel import check_part
    check_part("ch01", "count_ngrams", globals())

``check_part`` takes the part's cases, calls the student's function on each (inside
``no_course_lib()`` and the part's ``switched_off`` list, a first line that stops the
obvious shortcut of calling the reference) and then does one of two things:

- **while graded** (the grader sets ``COURSE_GRADING_CASES`` to a file of case inputs,
  visible and hidden): it hands every result out as plain data (``course_lib.grading.plain``,
  JSON text in a display output of type ``RESULTS_MIME``) and nothing more. No expected
  value, reference output or comparison exists in this process: the grader computes
  them in a process of its own and scores the part case by case
  (``course_lib.grading.verdict``). Whatever the code here is made to say, a result is
  only worth the value it holds.
- **in the student's own session**: it runs the visible cases, compares them with the
  reference (``verdict``, imported here only in this mode) and prints a line per case,
  raising ``AssertionError`` if one fails. Hidden cases run only when graded.

A chapter's cases live in ``course_lib.grading.cases.chNN``: ``PARTS`` maps a part's
name to a ``Part``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from course_lib.grading import plain
from course_lib.grading.guard import no_course_lib, switched_off

__all__ = ["Part", "check_part", "lend", "RESULTS_MIME", "CASES_ENV"]

RESULTS_MIME = "application/x-course-results"  # a display output holding one part's results, as JSON text
CASES_ENV = "COURSE_GRADING_CASES"  # set by the grader: the file of case inputs for this run


@dataclass(frozen=True)
class Part:
    """One graded part of an exercise.

    grade_id: the nbgrader id of its test cell.
    function: the name, in the notebook, of the function or class graded.
    visible: case name -> the arguments (a tuple of plain data: numbers, str, lists,
        tuples, dicts, numpy arrays, torch tensors); they are shown to the student.
    call: ``call(namespace, *args)`` -> the value graded, where calling the function on
        the arguments is not enough (a class to build and run, say); by default
        ``namespace[function](*args)``.
    switched_off: ``("torch", "softmax")``-style pairs (module, attribute path) that
        raise while the student's code runs, with ``why``.
    """

    grade_id: str
    function: str
    visible: dict
    call: Callable | None = None
    switched_off: tuple = ()
    why: str = "this part asks you to write it yourself"
    exempt: Callable | None = field(default=None)  # () -> functions of course_lib the call itself needs


_ABSENT = object()


@contextmanager
def lend(namespace: dict, **functions):
    """The notebook's names set to ``functions`` for the time of a call (a later part given
    the reference of an earlier one, so one bug costs one part); the student's own are put
    back after, and names the notebook did not have are removed again."""
    saved = {name: namespace.get(name, _ABSENT) for name in functions}
    namespace.update(functions)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is _ABSENT:
                namespace.pop(name, None)
            else:
                namespace[name] = old


def cases_module(chapter: str):
    return importlib.import_module(f"course_lib.grading.cases.{chapter}")


def _resolve(pairs):
    out = []
    for module, path in pairs:
        owner = importlib.import_module(module)
        *parents, name = path.split(".")
        for p in parents:
            owner = getattr(owner, p)
        out.append((owner, name))
    return out


def run_case(part: Part, namespace: dict, args_data) -> dict:
    """Call the graded code on one case's arguments (plain data); the result as plain data,
    or the error it raised."""
    try:
        args = plain.native(plain.decode(args_data))
        if part.function not in namespace:
            raise NameError(f"{part.function} is not defined: run the cell that defines it")
        exempt = part.exempt() if part.exempt else ()
        off = _resolve(part.switched_off)
        with no_course_lib(exempt=exempt), switched_off(off, part.why):
            if part.call is None:
                value = namespace[part.function](*args)
            else:
                value = part.call(namespace, *args)
        return {"value": plain.encode(value)}
    except (KeyboardInterrupt, SystemExit) as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"error": "SystemExit", "message": "the code called sys.exit()"}
    except BaseException as e:  # noqa: BLE001 - any failure of student code is that case's result
        return {"error": type(e).__name__, "message": str(e)[:2000]}


def check_part(chapter: str, name: str, namespace: dict) -> None:
    """Run part ``name`` of exercise ``chapter`` on the code defined in ``namespace``."""
    part = cases_module(chapter).PARTS[name]
    grading = os.environ.get(CASES_ENV)
    if grading:
        with open(grading, encoding="utf-8") as f:
            cases = json.load(f)["parts"][name]
    else:
        cases = [{"name": case, "args": plain.encode(tuple(args))} for case, args in part.visible.items()]
    results = []
    try:
        for case in cases:
            results.append({"case": case["name"], **run_case(part, namespace, case["args"])})
    finally:
        if grading:
            _hand_out(chapter, name, results, len(cases))
    if grading:
        return
    from course_lib.grading import verdict  # the student's own session only

    report = verdict.judge_visible(chapter, name, cases, results)
    print(report.text)
    if report.failed:
        raise AssertionError(f"{report.failed} of {len(cases)} visible cases failed (see above)")


def _hand_out(chapter: str, name: str, results: list, expected_count: int) -> None:
    text = json.dumps({"chapter": chapter, "part": name, "results": results}, allow_nan=False,
                      separators=(",", ":"))
    try:
        from IPython.display import display

        display({RESULTS_MIME: text}, raw=True)
    except ImportError:  # outside a kernel
        sys.stdout.write(text + "\n")
    print(f"{len(results)} of {expected_count} cases ran; the grade is computed by the grader")
