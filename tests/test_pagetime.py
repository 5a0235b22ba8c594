"""A page records its own run time, and the next run states it (course_lib.pagetime)."""

import json

import pytest

from course_lib import pagetime


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("fast", [True, False])
def test_a_finished_run_is_read_back_by_the_next(results, monkeypatch, fast):
    monkeypatch.setenv("COURSE_FAST", "1" if fast else "0")
    assert pagetime.read(3, fast) is None
    assert pagetime.start(3).sentence() == ("No full run of this page is recorded yet in this results folder; no run "
                                            "in fast mode (`COURSE_FAST=1`) of this page is recorded yet in this "
                                            "results folder.")
    record = pagetime.start(3, device="cpu (2 threads)").finish()
    assert record.fast_mode is fast and record.seconds >= 0 and record.cpus >= 1
    path = results / f"time-ch03-{'fast' if fast else 'full'}.json"
    assert json.loads(path.read_text())["chapter"] == 3
    assert pagetime.read(3, fast) == record
    assert pagetime.read(3, not fast) is None  # the other mode keeps its own record
    sentence = pagetime.start(3).sentence()
    assert pagetime.describe(record) in sentence and "is recorded yet" in sentence


@pytest.mark.parametrize("seconds,expected", [(12.4, "12 s"), (754.0, "13 min"), (9000.0, "2.5 h")])
def test_describe_rounds_to_a_readable_unit(seconds, expected):
    record = pagetime.Record(chapter=1, fast_mode=False, seconds=seconds, device="cpu (1 thread)", cpus=1)
    assert pagetime.describe(record) == f"{expected} on cpu (1 thread), 1 CPU core"


@pytest.mark.parametrize("chapter", [0, -1, 1.5, True, "1"])
def test_start_refuses_what_is_not_a_chapter(chapter):
    with pytest.raises(ValueError, match="chapter must be"):
        pagetime.start(chapter)
