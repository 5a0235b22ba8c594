"""Checkpoints: a training run that survives an interruption (chapter 7).

``save_checkpoint`` writes the model, the optimizer (and the fp16 gradient scaler), the step,
the ``History`` and the state of every random number generator; ``load_checkpoint`` reads
them back with ``torch.load(weights_only=True)``, so a file can hold nothing but tensors,
numbers, strings and plain containers. With the generators restored, a resumed run gives
exactly the losses of an uninterrupted one on the CPU. ``train(checkpoint_dir=...)`` in
``course_lib.train`` saves every few steps and resumes from ``CHECKPOINT_NAME``.

    >>> import tempfile, os, torch
    >>> model = torch.nn.Linear(2, 2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> path = os.path.join(tempfile.mkdtemp(), CHECKPOINT_NAME)
    >>> save_checkpoint(path, model, opt, step=7, history=History(steps=[7]))
    >>> load_checkpoint(path, model, opt)["step"]
    7

Scope: one file, the latest, written atomically; no rotation of old checkpoints, no
sharded states.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import asdict, fields

import numpy as np
import torch

from .history import History

__all__ = ["CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint"]


CHECKPOINT_NAME = "checkpoint.pt"  # the file that train(checkpoint_dir=...) keeps up to date


def _rng_states() -> dict:
    """Every random number generator a run draws from, as tensors and plain lists, so that
    ``torch.load(weights_only=True)`` reads them back."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(),
              "python": [version, list(mt), gauss],
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path, model, optimizer, step: int, history: History, extra: dict | None = None,
                    scaler=None) -> None:
    """Write everything a run needs to go on to ``path``: the model, the optimizer (and the
    fp16 gradient ``scaler``), ``step``, the ``history`` and the state of every random
    number generator (torch, CUDA, Python's ``random``, NumPy).

    Only tensors, numbers, strings and plain containers are stored, so ``load_checkpoint``
    unpickles nothing else; ``extra`` must hold the same kinds. The file is written next to
    ``path`` under a temporary name, then renamed with ``os.replace``, which is atomic: a
    run killed while writing leaves the previous checkpoint whole.
    """
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": None if scaler is None else scaler.state_dict(), "step": int(step),
             "history": asdict(history), "rng": _rng_states(), "extra": {} if extra is None else extra}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


def load_checkpoint(path, model, optimizer=None, scaler=None, restore_rng: bool = True,
                    history: History | None = None) -> dict:
    """Load a ``save_checkpoint`` file into ``model`` (and ``optimizer``, ``scaler``);
    with ``restore_rng`` the random number generators continue where they were.

    Returns ``{"step": int, "history": History, "extra": dict}``. The saved history fills
    ``history`` in place if one is given (a subclass such as chapter 8's ``MLMHistory``
    gets its own fields back too), else a new ``History``. The file is read with
    ``torch.load(weights_only=True)``: a file holding any other object is refused rather
    than run (unpickling can execute code).
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds objects other than tensors, numbers, strings and plain containers: "
                         "refused (weights_only=True); a checkpoint of save_checkpoint never does") from err
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        _set_rng_states(state["rng"])
    history = History() if history is None else history
    unknown = sorted(set(state["history"]) - {f.name for f in fields(history)})
    if unknown:
        raise ValueError(f"{path} holds a history with {unknown}, which {type(history).__name__} does not have: "
                         "it was saved by another kind of run")
    for name, value in state["history"].items():
        setattr(history, name, value)
    return {"step": state["step"], "history": history, "extra": state["extra"]}

