"""The course ladder: bits per character on the test plays, one row per model (all chapters).

A chapter that trains a model measures it and records the measurement::

    record(model="Kneser-Ney character 8-gram", chapter=1, test_bpc=2.16,
           parameters=1_234_567, train_seconds=4.1, device="cpu (2 threads)")

Each record is a small JSON file in the results folder (``COURSE_RESULTS_DIR``, or
``_results/`` next to the running notebook), so re-running a chapter replaces its own rows
and nothing else. The ladder page of the book reads them all with ``load()`` and shows
``table()``. Numbers are only ever written by the cell that measured them.

Scope: no database and no merging across machines; a row says which device it came from.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .runtime import is_fast_mode

__all__ = ["Entry", "results_dir", "record", "clear", "load", "table"]


@dataclass
class Entry:
    model: str  # a short, unique name, e.g. "Kneser-Ney character 8-gram"
    chapter: int  # the chapter that trains it
    test_bpc: float  # bits per character on the test plays
    parameters: int  # numbers the model stores (weights, or n-gram table entries)
    train_seconds: float  # wall-clock training time
    device: str  # where it trained, e.g. "cpu (2 threads)"
    valid_bpc: float | None = None  # bits per character on the validation plays
    notes: str = ""
    fast_mode: bool = field(default_factory=is_fast_mode)  # a shrunken CI run, not a real result
    train_tokens: int | None = None  # tokens read in training (a neural model's D in 6 N D); None for counts


def results_dir() -> Path:
    """Where records live: ``$COURSE_RESULTS_DIR`` or ``./_results``."""
    return Path(os.environ.get("COURSE_RESULTS_DIR") or "_results")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def record(**fields) -> Entry:
    """Validate one measurement and write it (atomically) to the results folder."""
    entry = Entry(**fields)
    if not isinstance(entry.model, str) or not entry.model.strip():
        raise ValueError("model must be a non-empty name")
    for name in ("test_bpc", "train_seconds"):
        value = getattr(entry, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if entry.valid_bpc is not None and not (math.isfinite(entry.valid_bpc) and entry.valid_bpc >= 0):
        raise ValueError(f"valid_bpc must be a finite number >= 0, got {entry.valid_bpc!r}")
    if not isinstance(entry.parameters, int) or entry.parameters < 0:
        raise ValueError(f"parameters must be an integer >= 0, got {entry.parameters!r}")
    if entry.train_tokens is not None and (isinstance(entry.train_tokens, bool) or not isinstance(
            entry.train_tokens, int) or entry.train_tokens <= 0):
        raise ValueError(f"train_tokens must be an integer > 0 or None, got {entry.train_tokens!r}")
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ch{entry.chapter:02d}-{_slug(entry.model)}.json"
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
        json.dump(asdict(entry), f, indent=2)
    os.replace(f.name, path)  # a reader never sees half a file
    return entry


def clear(chapter: int) -> int:
    """Remove a chapter's records (a chapter calls it before recording, so rows of models
    it no longer trains disappear); returns how many were removed."""
    paths = list(results_dir().glob(f"ch{chapter:02d}-*.json"))
    for path in paths:
        path.unlink()
    return len(paths)


def load(folder: str | Path | None = None) -> list[Entry]:
    """Every recorded entry, best (lowest test bits per character) first."""
    folder = Path(folder) if folder is not None else results_dir()
    entries = []
    for path in sorted(folder.glob("ch*.json")):
        entries.append(Entry(**json.loads(path.read_text(encoding="utf-8"))))
    return sorted(entries, key=lambda e: (e.test_bpc, e.chapter, e.model))


def table(entries: list[Entry]) -> str:
    """The ladder as a Markdown table."""
    lines = [
        "| model | chapter | test bits/char | valid bits/char | parameters | training time | device |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for e in entries:
        valid = f"{e.valid_bpc:.3f}" if e.valid_bpc is not None else "–"
        name = e.model + (" (fast mode)" if e.fast_mode else "")
        lines.append(
            f"| {name} | {e.chapter} | {e.test_bpc:.3f} | {valid} | {e.parameters:,} "
            f"| {e.train_seconds:.1f} s | {e.device} |"
        )
    return "\n".join(lines)
