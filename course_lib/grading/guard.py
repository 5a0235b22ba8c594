"""A first line of defence while a student's graded code runs in a test cell.

Verdicts never depend on it: they are computed by the grader, outside the student's
process (``course_lib.grading.verdict``). It only makes the obvious shortcuts fail
loudly, in the student's own session as well as when graded:

- ``no_course_lib()``: while active, every function and method defined in course_lib
  raises ``ReferenceUsed`` (the reference the exercises are graded against), however
  the student's code got hold of it (imported at the top of the notebook, imported
  inside the function, kept in a variable), and importing or reloading a course_lib
  module fails. The modules that run the tests (``kernel``, ``plain``, ``cases``) and the
  functions a part's call lends (``exempt``) keep working.
- ``switched_off(functions, why)``: while active, the named functions (``torch.softmax``
  when the part is a softmax) raise with ``why``.

    with no_course_lib(), switched_off([(torch, "softmax")], "write softmax yourself"):
        result = softmax(logits)                                      # the student's
"""

from __future__ import annotations

import gc
import importlib.abc
import sys
import types
from contextlib import contextmanager

__all__ = ["ReferenceUsed", "no_course_lib", "switched_off"]

_MESSAGE = (
    "graded code must be your own: it called course_lib, the reference it is graded "
    "against. Write the computation yourself (numpy, collections and math are fine)."
)


class ReferenceUsed(AssertionError):
    """Raised when graded code calls into course_lib during a graded test."""


def _error() -> ReferenceUsed:
    return ReferenceUsed(_MESSAGE)


__course_lib_reference_used__ = _error  # course_lib modules get this name while the guard is on


def _tripwire(*args, **kwargs):
    # This code object is also swapped into course_lib's own functions, where names are
    # looked up in *their* module, so the error comes from a name put there for the time.
    raise __course_lib_reference_used__()  # noqa: F821


class _ImportBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "course_lib" or fullname.startswith("course_lib."):
            raise ReferenceUsed(_MESSAGE)
        return None








_ABSENT = object()  # the owner had no attribute of its own by that name (it may inherit one)


@contextmanager
def switched_off(functions, why: str):
    """While active, calling any of the ``(owner, name)`` functions raises an ``AssertionError``
    that names it and says ``why``; afterwards each is restored (or removed again if it was
    not the owner's own attribute, so an inherited one shows through as before)."""
    def refusal(owner, name):  # one function per name: torch's tracing rules expect distinct objects
        def refuse(*args, **kwargs):
            raise AssertionError(f"{owner.__name__}.{name} was called, but {why}")
        return refuse

    unique = {(id(owner), name): (owner, name) for owner, name in functions}.values()
    saved = [(owner, name, vars(owner).get(name, _ABSENT)) for owner, name in unique]
    replaced = []
    try:
        for owner, name, old in saved:
            setattr(owner, name, refusal(owner, name))
            replaced.append((owner, name, old))
        yield
    finally:
        for owner, name, old in reversed(replaced):
            if old is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


# The modules that run the tests in the student's kernel: they hold no reference code.
_TEST_RUNNERS = (__name__, "course_lib.grading", "course_lib.grading.kernel", "course_lib.grading.plain",
                 "course_lib.grading.cases")


def _runs_tests(name: str) -> bool:
    return name in _TEST_RUNNERS or name.startswith("course_lib.grading.cases.")


def _course_modules():
    return [
        module for name, module in list(sys.modules.items())
        if module is not None and not _runs_tests(name) and (name == "course_lib" or name.startswith("course_lib."))
    ]


def _with_methods(objects) -> set[int]:
    """ids of the objects, and of the functions of each class among them (and its bases)."""
    ids = set()
    for obj in objects:
        ids.add(id(obj))
        if isinstance(obj, type):
            for klass in obj.__mro__:
                for member in vars(klass).values():
                    ids.add(id(member))
                    ids.add(id(getattr(member, "__func__", None)))
                    ids.add(id(getattr(member, "fget", None)))
    return ids


@contextmanager
def no_course_lib(exempt=()):
    """While active, any call into course_lib raises ``ReferenceUsed``, except into the
    modules that run the tests and the functions in ``exempt`` (a later part's test may
    hand the student's code the reference of an earlier part, so that one bug costs one
    part)."""
    restore = []
    exempt = _with_methods(exempt)
    blocker = _ImportBlocker()
    hidden = {}  # course_lib modules taken out of sys.modules, so importing them fails
    try:
        modules = _course_modules()
        namespaces = {id(vars(m)): m for m in modules}
        for module in modules:
            restore.append((module, "__course_lib_reference_used__", None))
            module.__course_lib_reference_used__ = _error
        # Every function and class course_lib ever defined, wherever it is referenced from
        # (even one kept from before a module was reloaded): found through the collector.
        for obj in gc.get_objects():
            # type(obj), never obj.__class__: some objects warn or compute on attribute access
            if type(obj) is types.FunctionType:
                if id(obj.__globals__) in namespaces and obj.__closure__ is None and id(obj) not in exempt:
                    restore.append((obj, "__code__", obj.__code__))
                    obj.__code__ = _tripwire.__code__
            elif issubclass(type(obj), type) and str(vars(obj).get("__module__", "")).startswith("course_lib.") \
                    and not _runs_tests(vars(obj)["__module__"]) and id(obj) not in exempt:
                for attr, member in list(vars(obj).items()):
                    if isinstance(member, (staticmethod, classmethod, property)):
                        restore.append((obj, attr, member))
                        setattr(obj, attr, property(_tripwire) if isinstance(member, property) else _tripwire)
        for module in _course_modules():
            hidden[module.__name__] = sys.modules.pop(module.__name__)
        sys.meta_path.insert(0, blocker)
        yield
    finally:
        if blocker in sys.meta_path:
            sys.meta_path.remove(blocker)
        sys.modules.update(hidden)
        for obj, attr, old in reversed(restore):
            if old is None:
                delattr(obj, attr)
            else:
                setattr(obj, attr, old)
