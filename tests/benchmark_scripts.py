"""The benchmark scripts, for their smoke tests: where each lives, and importing one as a module."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name):
    """The path of ``benchmarks/<name>.py``."""
    return BENCHMARKS / f"{name}.py"


def load(name):
    """Import ``benchmarks/<name>.py``; it defines functions only (its main() runs under __main__)."""
    spec = importlib.util.spec_from_file_location(name, script(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
