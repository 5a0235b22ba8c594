"""Comparisons of a decoded result with its expected value (grader side only).

``same(result, expected)`` returns None when they match, else a ``Mismatch``: its
``kind`` ("type", "shape", "dtype", "value", "keys", "length") can be shown for a hidden
case, its ``detail`` (which holds values) only for a visible one. Types are exact: a
float is expected where the reference gives a float, a tuple where it gives a tuple,
``torch.float32`` where it gives float32 (one exception: a ``numpy.float64`` scalar, which
is a ``float``, counts as one). Numbers match within ``rtol`` and ``atol``
(``math.isclose``), nan matches only nan, an infinity only itself.

This module is never imported into a student's kernel while it is graded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from course_lib.grading.plain import Array, Tensor, TooBig, Unsupported

__all__ = ["Mismatch", "same", "close"]


@dataclass(frozen=True)
class Mismatch:
    kind: str
    detail: str

    def __str__(self) -> str:
        return self.detail


def _kind(value) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of {value.dtype}"
    if isinstance(value, Array):
        return f"a numpy {'scalar' if value.scalar else 'array'} of {value.dtype}"
    if isinstance(value, Unsupported):
        return f"an object of type {value.type}"
    if isinstance(value, TooBig):
        return f"a value of over {value.items} numbers"
    return type(value).__name__ if value is not None else "None"


def close(a: float, b: float, rtol: float, atol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def _short(value, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def _numbers(result, expected, what, rtol, atol, shape):
    for index, (r, e) in enumerate(zip(result, expected)):
        if type(r) is bool or type(e) is bool:
            ok = r == e
        else:
            ok = close(float(r), float(e), rtol, atol)
        if not ok:
            where = index
            if shape and len(shape) > 1:
                where, rest = [], index
                for n in reversed(shape):
                    where.append(rest % n)
                    rest //= n
                where = tuple(reversed(where))
            return Mismatch("value", f"{what}: at index {where}, expected {e!r}, got {r!r}")
    return None


def same(result, expected, rtol: float = 1e-6, atol: float = 1e-8, what: str = "the result") -> Mismatch | None:
    """None if ``result`` matches ``expected`` (both decoded by ``plain.decode``)."""
    if isinstance(result, (Unsupported, TooBig)):
        return Mismatch("type", f"{what}: expected {_kind(expected)}, got {_kind(result)}")
    if type(expected) is float and isinstance(result, Array) and result.scalar and result.dtype == "float64":
        result = result.values[0]  # numpy.float64 is a float (a subclass of it): where a float is asked, it counts
    if type(result) is not type(expected):
        return Mismatch("type", f"{what}: expected {_kind(expected)}, got {_kind(result)}")
    if isinstance(expected, (Tensor, Array)):
        if result.dtype != expected.dtype:
            return Mismatch("dtype", f"{what}: expected dtype {expected.dtype}, got {result.dtype}")
        if isinstance(expected, Array) and result.scalar != expected.scalar:
            return Mismatch("type", f"{what}: expected {_kind(expected)}, got {_kind(result)}")
        if result.shape != expected.shape:
            return Mismatch("shape", f"{what}: expected shape {expected.shape}, got {result.shape}")
        return _numbers(result.values, expected.values, what, rtol, atol, expected.shape)
    if type(expected) is float:
        if not close(result, expected, rtol, atol):
            return Mismatch("value", f"{what}: expected {expected!r}, got {result!r}")
        return None
    if type(expected) in (list, tuple):
        if len(result) != len(expected):
            return Mismatch("length", f"{what}: expected {len(expected)} items, got {len(result)}")
        for i, (r, e) in enumerate(zip(result, expected)):
            m = same(r, e, rtol, atol, f"{what}[{i}]")
            if m:
                return m
        return None
    if type(expected) is dict:
        if set(result) != set(expected):
            missing, extra = set(expected) - set(result), set(result) - set(expected)
            return Mismatch("keys", f"{what}: keys missing {_short(sorted(missing, key=repr)[:10])}, "
                                    f"unexpected {_short(sorted(extra, key=repr)[:10])}")
        for key, e in expected.items():
            m = same(result[key], e, rtol, atol, f"{what}[{key!r}]")
            if m:
                return m
        return None
    if result != expected:
        return Mismatch("value", f"{what}: expected {_short(expected)}, got {_short(result)}")
    return None
