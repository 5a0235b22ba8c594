"""Device choice, fast mode, and the set-up cell every notebook starts with."""

import json
from pathlib import Path

import pytest
import yaml

from course_lib import runtime

ROOT = Path(__file__).resolve().parents[1]


def test_pick_device_on_this_machine():
    import torch

    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert runtime.pick_device() == expected
    assert runtime.pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        runtime.pick_device("tpu")


def test_autocast_dtype_by_device():
    assert runtime.autocast_dtype("cpu") is None and runtime.autocast_dtype("mps") is None


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("0", False), ("", False), (None, False)])
def test_fast_mode(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("COURSE_FAST", raising=False)
    else:
        monkeypatch.setenv("COURSE_FAST", value)
    assert runtime.is_fast_mode() is expected


def notebooks():
    book = [ROOT / "book" / f"{entry}.ipynb" for entry in toc_files()]
    return [p for p in book if p.exists()] + sorted((ROOT / "solutions").glob("ch*/*.ipynb")) \
        + sorted((ROOT / "exercises").glob("ch*/*.ipynb"))


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = []
    for part in toc.get("parts", []):
        files += [c["file"].removeprefix("book/") for c in part["chapters"]]
    return files


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_notebook_starts_with_the_setup_cell(path):
    nb = json.loads(path.read_text())
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "".join(first_code["source"]) == runtime.SETUP_CELL
    for cell in nb["cells"]:  # committed with outputs cleared: the build executes them
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_setup_cell_installs_nothing_off_colab_and_never_torch():
    ns = {}
    exec(compile(runtime.SETUP_CELL, "<setup>", "exec"), ns)
    assert ns["device"] == runtime.pick_device()
    assert "torch" not in runtime.SETUP_CELL.split("from course_lib")[0]
    assert "--no-deps" in runtime.SETUP_CELL and "nbgrader" not in runtime.SETUP_CELL


def test_repository_url_is_the_same_everywhere():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == runtime.REPO_URL
    assert runtime.REPO_URL in runtime.SETUP_CELL
