"""Checks for the exercises' autograded test cells (all chapters).

Two ways to earn points without doing the work are closed here:

- An object that claims to equal everything (``__eq__`` always True) or a subclass of
  ``float`` with a doctored comparison: ``check_type`` demands the exact built-in type
  before any value is compared.
- A graded function that just calls the course_lib reference it is graded against:
  inside ``with no_course_lib():`` every function and method defined in course_lib
  raises, however the student's code got hold of it (imported at the top of the
  notebook, imported inside the function, kept in a variable), and importing or
  reloading a course_lib module fails. Test cells compute their expected values first,
  then call the student's code inside the block.

    expected = NGramLM(2, "mle").fit(sentences).prob("be", ["to"])   # before
    with no_course_lib():
        result = mle_prob(counts, "be", ("to",))                      # the student's
    check_close(result, expected)

Tensors (chapter 3 on): ``check_tensor`` demands an exact ``torch.Tensor``, then checks
its dtype, shape and values. A third shortcut, a torch function that does the whole part
(``torch.softmax`` when the part is a softmax), is closed by ``switched_off``: while it
is active, the functions it names raise. torch is imported only when ``check_tensor`` is
called, so the chapters without torch never need it.

    expected = torch.softmax(logits, dim=-1)                          # before
    with no_course_lib(), switched_off([(torch, "softmax")], "write softmax yourself"):
        result = softmax(logits)                                      # the student's
    check_tensor(result, expected, "softmax(logits)")

Scope: these checks run in the student's kernel, so they stop shortcuts, not a student
determined to rewrite the checker; the pipeline tests show which submissions they stop.
"""

from __future__ import annotations

import gc
import importlib.abc
import math
import sys
import types
from contextlib import contextmanager

__all__ = ["ReferenceUsed", "check_type", "check_close", "check_tensor", "no_course_lib", "switched_off"]

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


def check_type(value, expected: type, what: str = "the result") -> None:
    """Assert ``type(value) is expected`` exactly (no subclasses), with a helpful message."""
    if type(value) is not expected:
        raise AssertionError(
            f"{what} should be of type {expected.__name__}, but it is {type(value).__name__}: {value!r:.200}"
        )


def check_close(value, expected: float, what: str = "the result", rel: float = 1e-9, abs_tol: float = 1e-12) -> None:
    """Assert a Python float equals ``expected`` within the stated tolerance (inf equals inf)."""
    check_type(value, float, what)
    if math.isinf(expected) or math.isinf(value):
        ok = value == expected
    else:
        ok = math.isclose(value, expected, rel_tol=rel, abs_tol=abs_tol)
    if not ok:
        raise AssertionError(f"{what}: expected {expected!r} (relative tolerance {rel}), got {value!r}")


def check_tensor(result, expected, what: str = "the result", rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Assert ``result`` is a ``torch.Tensor`` (exactly) of ``expected``'s dtype and shape whose
    values match within ``rtol`` and ``atol``; the message shows both tensors."""
    import torch  # here, not at the top: the chapters without torch import this module too

    check_type(result, torch.Tensor, what)
    if result.dtype != expected.dtype:
        raise AssertionError(f"{what}: expected dtype {expected.dtype}, got {result.dtype}")
    if result.shape != expected.shape:
        raise AssertionError(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(result.shape)}")
    torch.testing.assert_close(result, expected, rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: expected\n{expected}\ngot\n{result}\n({m})")


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
