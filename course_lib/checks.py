"""Checks of the arguments that the training loop, sampling and the models share (chapter 3 on).

Every public function of ``course_lib`` validates what it is given and says what it
expected (errors that teach): ``_check_positive_int("steps", 0)`` raises
``ValueError: steps must be an integer > 0, got 0``. The helpers live here, below
``train``, ``sampling`` and ``checkpoint``, so that each of those can use them without
importing another.

Scope: argument checks and the two small context helpers every loop needs (the model's
device, evaluation mode without gradients); nothing that trains or samples.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

__all__: list[str] = []  # private helpers; the public names live in train, sampling and checkpoint


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {value!r}")
    return value


def _check_tokens(name: str, data, min_len: int = 1) -> torch.Tensor:
    """A 1-D integer tensor of at least ``min_len`` tokens, as int64."""
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"expected {name} as a 1-D torch tensor of token ids (torch.tensor(ids)), "
                        f"got {type(data).__name__}")
    if data.dim() != 1:
        raise ValueError(f"expected {name} of shape (N,), a 1-D sequence of token ids, got {tuple(data.shape)}")
    if data.dtype == torch.bool or data.dtype.is_floating_point or data.dtype.is_complex:
        raise TypeError(f"expected {name} to hold integer token ids, got dtype {data.dtype}")
    if len(data) < min_len:
        raise ValueError(f"{name} holds {len(data)} tokens; at least {min_len} are needed here")
    return data.long()


def _check_model(model) -> int:
    if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "get_block_size", None)):
        raise TypeError("expected a language model: a torch.nn.Module with forward(idx, targets) -> "
                        f"(logits, loss) and get_block_size(), got {type(model).__name__}")
    return _check_positive_int("model.get_block_size()", model.get_block_size())


def _check_settings(ints, numbers, weight_decay) -> None:
    """Run settings: every (name, value) of ``ints`` an integer > 0, of ``numbers`` None or a
    finite number > 0; ``weight_decay`` a number >= 0."""
    for name, value in ints:
        _check_positive_int(name, value)
    for name, value in numbers:
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")


def _model_device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def _eval_mode(model):
    """No gradients and ``model.eval()`` inside; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)

