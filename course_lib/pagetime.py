"""How long a chapter takes to run, measured by the chapter itself (every chapter).

A page starts a clock in its first cell after the set-up and stops it in its last cell::

    clock = pagetime.start(chapter=1)      # reads what earlier runs recorded
    glue("run_time", clock.sentence())     # "In full mode this page last ran in ..."
    ...
    clock.finish()                         # writes this run's wall time

Each run writes one small JSON file to the ladder's results folder
(``ladder.results_dir()``), one per chapter and mode: ``time-ch01-full.json`` and
``time-ch01-fast.json``. The next run of the page reads them, so the time a page states
near its top is the one measured by the last run in that folder, never typed by hand.

    >>> describe(Record(chapter=1, fast_mode=False, seconds=754.0, device="cpu (2 threads)", cpus=2))
    '13 min on cpu (2 threads), 2 CPU cores'

Scope: wall time of a whole run of the page, as the kernel saw it; no per-cell profile.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .ladder import results_dir
from .runtime import is_fast_mode

__all__ = ["Record", "Clock", "start", "read", "describe"]


@dataclass
class Record:
    chapter: int  # the chapter whose page ran
    fast_mode: bool  # COURSE_FAST=1 (shrunken work) or the full page
    seconds: float  # wall time from start() to finish()
    device: str  # where the models trained, e.g. "cpu (2 threads)"
    cpus: int  # CPU cores the machine had (os.cpu_count())


def _path(chapter: int, fast_mode: bool, folder: Path | None = None) -> Path:
    folder = results_dir() if folder is None else Path(folder)
    return folder / f"time-ch{chapter:02d}-{'fast' if fast_mode else 'full'}.json"


def read(chapter: int, fast_mode: bool, folder: str | Path | None = None) -> Record | None:
    """The record of the last run of ``chapter`` in that mode, or None if there is none."""
    path = _path(chapter, fast_mode, folder)
    if not path.is_file():
        return None
    return Record(**json.loads(path.read_text(encoding="utf-8")))


def describe(record: Record | None) -> str:
    """A run time in words: ``"13 min on cpu (2 threads), 2 CPU cores"``, ``"45 s on ..."``."""
    if record is None:
        return "not measured yet in this results folder"
    s = record.seconds
    took = f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"
    return f"{took} on {record.device}, {record.cpus} CPU core{'' if record.cpus == 1 else 's'}"


@dataclass
class Clock:
    """Started by ``start``; ``finish`` records the wall time since then."""

    chapter: int
    device: str
    started: float
    fast_mode: bool

    def sentence(self) -> str:
        """What the earlier runs recorded, for the top of the page (either may be missing)."""
        parts = []
        for label, record in [("full run", read(self.chapter, False)),
                              ("run in fast mode (`COURSE_FAST=1`)", read(self.chapter, True))]:
            parts.append(f"the last {label} of this page took {describe(record)}" if record is not None
                         else f"no {label} of this page is recorded yet in this results folder")
        text = "; ".join(parts) + "."
        return text[0].upper() + text[1:]

    def finish(self) -> Record:
        """Write this run's record (atomically) and return it."""
        record = Record(chapter=self.chapter, fast_mode=self.fast_mode, seconds=time.perf_counter() - self.started,
                        device=self.device, cpus=os.cpu_count() or 1)
        path = _path(self.chapter, self.fast_mode)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            json.dump(asdict(record), f, indent=2)
        os.replace(f.name, path)  # a reader never sees half a file
        return record


def start(chapter: int, device: str = "cpu (counting)") -> Clock:
    """Start the clock of ``chapter``'s page; ``device`` says where its models train."""
    if isinstance(chapter, bool) or not isinstance(chapter, int) or chapter < 1:
        raise ValueError(f"chapter must be a chapter number (an integer >= 1), got {chapter!r}")
    return Clock(chapter=chapter, device=device, started=time.perf_counter(), fast_mode=is_fast_mode())
