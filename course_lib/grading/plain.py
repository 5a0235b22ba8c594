"""Values as plain data: what crosses between the student's kernel and the grader.

A graded function's result leaves the kernel as JSON text and nothing else (no pickle,
no objects): ``encode`` turns it into JSON-ready data and ``decode`` turns that back
into Python values on the other side. Only exact built-in types are encoded as
themselves (``type(x) is float``, never a subclass), so an object that claims to equal
everything, a ``float`` subclass or a doctored tensor arrives as
``Unsupported("its type")``, which equals nothing.

    None, bool, int, float, str       as themselves (nan and the infinities tagged)
    list, tuple, dict                 tagged, so a tuple stays a tuple and keys keep their type
    numpy.ndarray, numpy scalars      dtype, shape and values
    torch.Tensor                      dtype, shape and values (detached, on the CPU)

Case inputs travel the other way the same way, so they too are plain data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

__all__ = ["Array", "Tensor", "Unsupported", "TooBig", "encode", "decode", "dumps", "loads", "type_name"]

MAX_ITEMS = 200_000  # numbers in one value; past it the value is TooBig


@dataclass(frozen=True)
class Unsupported:
    """A value of a type that is not plain data (named by ``type_name``)."""

    type: str


@dataclass(frozen=True)
class TooBig:
    items: int


@dataclass(frozen=True)
class Array:
    """A numpy array or scalar as it came back: dtype name, shape, flat values."""

    dtype: str
    shape: tuple
    values: tuple
    scalar: bool = False


@dataclass(frozen=True)
class Tensor:
    """A torch tensor as it came back: dtype name (``torch.float32``), shape, flat values."""

    dtype: str
    shape: tuple
    values: tuple


def type_name(value) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _number(x):
    if type(x) is float and not math.isfinite(x):
        return {"$float": repr(x)}
    return x


class _Counter:
    def __init__(self):
        self.items = 0

    def add(self, n: int) -> None:
        self.items += n
        if self.items > MAX_ITEMS:
            raise _Overflow(self.items)


class _Overflow(Exception):
    pass


def encode(value, _count: _Counter | None = None, _depth: int = 0):
    """JSON-ready data for ``value`` (see the module docstring)."""
    count = _count or _Counter()
    if _depth > 50:
        return {"$unsupported": "a value nested more than 50 deep"}
    try:
        return _encode(value, count, _depth)
    except _Overflow as e:
        if _count is not None:
            raise
        return {"$too_big": e.args[0]}


def _encode(value, count, depth):
    kind = type(value)
    count.add(1)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return _number(value)
    if kind is list:
        return [encode(v, count, depth + 1) for v in value]
    if kind is tuple:
        return {"$tuple": [encode(v, count, depth + 1) for v in value]}
    if kind is dict:
        return {"$dict": [[encode(k, count, depth + 1), encode(v, count, depth + 1)] for k, v in value.items()]}
    module = kind.__module__ or ""
    if module == "numpy" or module.startswith("numpy."):
        import numpy as np

        if kind is np.ndarray or isinstance(value, np.generic) and kind.__module__ == "numpy":
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                return {"$unsupported": f"numpy array of {array.dtype}"}
            count.add(array.size)
            return {"$ndarray": {"dtype": str(array.dtype), "shape": list(array.shape),
                                 "values": [_number(float(x)) if array.dtype.kind == "f" else
                                            (bool(x) if array.dtype.kind == "b" else int(x))
                                            for x in array.reshape(-1).tolist()],
                                 "scalar": kind is not np.ndarray}}
    if module == "torch" or module.startswith("torch."):
        import torch

        if kind is torch.Tensor or kind is torch.nn.Parameter:
            tensor = value.detach().to("cpu")
            if tensor.is_complex() or tensor.layout != torch.strided:
                return {"$unsupported": f"tensor of {tensor.dtype} ({tensor.layout})"}
            count.add(tensor.numel())
            if tensor.dtype in (torch.bfloat16, torch.float16):
                flat = tensor.float().reshape(-1).tolist()
            else:
                flat = tensor.reshape(-1).tolist()
            return {"$tensor": {"dtype": str(tensor.dtype), "shape": list(tensor.shape),
                                "values": [_number(x) for x in flat]}}
    return {"$unsupported": type_name(value)}


def _float(x):
    if type(x) is dict and set(x) == {"$float"} and x["$float"] in ("nan", "inf", "-inf"):
        return float(x["$float"])
    return x


def decode(data):
    """The value ``encode`` described, with arrays and tensors as ``Array`` / ``Tensor``."""
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        return data
    if kind is list:
        return [decode(v) for v in data]
    if kind is dict and len(data) == 1:
        (tag, body), = data.items()
        if tag == "$float":
            return _float(data)
        if tag == "$tuple" and type(body) is list:
            return tuple(decode(v) for v in body)
        if tag == "$dict" and type(body) is list:
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    return Unsupported("a malformed dict")
                key = decode(pair[0])
                try:
                    out[key] = decode(pair[1])
                except TypeError:
                    return Unsupported("a dict with an unhashable key")
            return out
        if tag in ("$ndarray", "$tensor") and type(body) is dict:
            try:
                values = tuple(_float(v) for v in body["values"])
                shape = tuple(int(n) for n in body["shape"])
                dtype = str(body["dtype"])
            except (KeyError, TypeError, ValueError):
                return Unsupported(f"a malformed {tag[1:]}")
            if not all(type(v) in (bool, int, float) for v in values) or math.prod(shape) != len(values):
                return Unsupported(f"a malformed {tag[1:]}")
            if tag == "$tensor":
                return Tensor(dtype, shape, values)
            return Array(dtype, shape, values, bool(body.get("scalar")))
        if tag == "$unsupported":
            return Unsupported(str(body))
        if tag == "$too_big":
            return TooBig(int(body) if type(body) is int else -1)
    return Unsupported("malformed data")


def dumps(value) -> str:
    return json.dumps(encode(value), allow_nan=False, separators=(",", ":"))


def loads(text: str):
    return decode(json.loads(text))


def to_torch(value):
    """A decoded ``Tensor`` as a ``torch.Tensor`` (recursively through lists, tuples and dicts)."""
    import torch

    if isinstance(value, Tensor):
        dtype = getattr(torch, value.dtype.removeprefix("torch."))
        return torch.tensor(value.values, dtype=torch.float64 if dtype.is_floating_point else None).to(dtype) \
            .reshape(value.shape)
    if isinstance(value, Array):
        import numpy as np

        out = np.asarray(value.values, dtype=value.dtype).reshape(value.shape)
        return out[()] if value.scalar else out
    if type(value) is list:
        return [to_torch(v) for v in value]
    if type(value) is tuple:
        return tuple(to_torch(v) for v in value)
    if type(value) is dict:
        return {k: to_torch(v) for k, v in value.items()}
    return value


def native(value):
    """Case inputs as the graded function receives them: tensors as torch tensors, arrays as
    numpy arrays (what ``to_torch`` does; the name says what it is for)."""
    return to_torch(value)
