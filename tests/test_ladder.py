"""The course ladder: records, loading, the table."""

import json

import pytest

from course_lib import ladder


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("COURSE_FAST", raising=False)
    return tmp_path


def test_record_load_table(results):
    ladder.record(model="KN 7-gram", chapter=1, test_bpc=2.2, parameters=10, train_seconds=1.5, device="cpu")
    ladder.record(model="Better model", chapter=3, test_bpc=1.9, valid_bpc=1.8, parameters=2000,
                  train_seconds=60.0, device="cuda")
    entries = ladder.load()
    assert [e.model for e in entries] == ["Better model", "KN 7-gram"]  # best first
    assert entries[0].fast_mode is False
    md = ladder.table(entries)
    lines = md.splitlines()
    assert len(lines) == 4 and "| Better model | 3 | 1.900 | 1.800 | 2,000 | 60.0 s | cuda |" == lines[2]
    assert json.loads((results / "ch01-kn-7-gram.json").read_text())["test_bpc"] == 2.2


def test_rerun_replaces_its_row(results):
    for bpc in (2.5, 2.4):
        ladder.record(model="KN 7-gram", chapter=1, test_bpc=bpc, parameters=1, train_seconds=1, device="cpu")
    assert [e.test_bpc for e in ladder.load()] == [2.4]
    assert not list(results.glob("*.tmp"))


def test_fast_mode_rows_are_marked(results, monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    ladder.record(model="m", chapter=1, test_bpc=3.0, parameters=1, train_seconds=1, device="cpu")
    assert "(fast mode)" in ladder.table(ladder.load())


@pytest.mark.parametrize("bad", [dict(test_bpc=float("nan")), dict(test_bpc=-1.0), dict(parameters=1.5),
                                 dict(model=""), dict(train_seconds=float("inf")), dict(train_tokens=0),
                                 dict(train_tokens=1.5e6), dict(train_tokens=True)])
def test_bad_records_are_refused(results, bad):
    fields = dict(model="m", chapter=1, test_bpc=2.0, parameters=1, train_seconds=1.0, device="cpu") | bad
    with pytest.raises(ValueError):
        ladder.record(**fields)
    assert ladder.load() == []


def test_clear_removes_one_chapter_only(results):
    for chapter, model in ((1, "a"), (1, "b"), (3, "c")):
        ladder.record(model=model, chapter=chapter, test_bpc=2.0, parameters=1, train_seconds=1, device="cpu")
    assert ladder.clear(1) == 2
    assert [e.model for e in ladder.load()] == ["c"]


def test_train_tokens_are_kept_and_optional(results):
    ladder.record(model="LSTM", chapter=4, test_bpc=2.3, parameters=9, train_seconds=3, device="cpu",
                  train_tokens=6_000)
    ladder.record(model="counts", chapter=1, test_bpc=2.1, parameters=9, train_seconds=3, device="cpu")
    rows = {e.model: e.train_tokens for e in ladder.load()}
    assert rows == {"LSTM": 6_000, "counts": None}
