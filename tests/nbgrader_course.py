"""A throwaway nbgrader course directory built from this repository (for the tests)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def nbgrader(course: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run an nbgrader command in ``course`` as `make` does (the venv's bin on PATH:
    nbgrader calls alembic from there when it creates the gradebook)."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("COURSE_FAST", None)
    return subprocess.run([str(BIN / "nbgrader"), *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=timeout)


def make_course(tmp: Path, assignment: str) -> Path:
    """Copy the configuration and one assignment's source, then release it."""
    course = tmp / "course"
    (course / "solutions").mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copytree(ROOT / "solutions" / assignment, course / "solutions" / assignment)
    proc = nbgrader(course, "generate_assignment", assignment, "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return course


def chapters() -> list[str]:
    return sorted(p.name for p in (ROOT / "solutions").glob("ch[0-9][0-9]") if p.is_dir())
