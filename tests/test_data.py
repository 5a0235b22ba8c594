"""The course corpus and its fixed splits."""

import pytest

from course_lib.data import (
    SPLITS,
    TEST_PLAYS,
    VALID_PLAYS,
    load_plays,
    load_split,
    render_markdown,
    split_text,
)


def test_splits_are_fixed_and_disjoint():
    names = {s: [p.name for p in load_split(s)] for s in SPLITS}
    assert sorted(names["test"]) == sorted(TEST_PLAYS) == ["hamlet", "henry-v", "twelfth-night"]
    assert sorted(names["valid"]) == sorted(VALID_PLAYS) == ["as-you-like-it", "macbeth", "richard-ii"]
    assert len(names["train"]) == 32
    all_names = names["train"] + names["valid"] + names["test"]
    assert len(all_names) == len(set(all_names)) == len(load_plays()) == 38


def test_each_split_covers_genres():
    genres = {p.name: p.genre for p in load_plays()}
    assert {genres[n] for n in TEST_PLAYS} == {"tragedies", "comedies", "histories"}
    assert {p.genre for p in load_split("train")} == {
        "comedies", "histories", "problems", "roman", "romances", "tragedies"}


def test_rendering_has_no_markdown_left():
    text = split_text("train") + split_text("valid") + split_text("test")
    for mark in ("**", "#", "\\", "_", "*"):
        assert mark not in text, mark
    assert "  \n" not in text and "\n\n\n" not in text
    hamlet = next(p for p in load_plays() if p.name == "hamlet")
    assert hamlet.title == "Hamlet"
    assert hamlet.text.startswith(
        "BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me: stand, and unfold yourself.\n")
    assert "To be, or not to be" in hamlet.text
    assert "Enter" not in hamlet.text.split("\n")[2]  # stage directions are dropped


def test_render_markdown_small_example():
    md = ("# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter A and\nB_\n\n**A**  \nHello,  \n"
          "\\--world.\n\n_\\[Aside]_  \nAnd _[more]_ words.\n\n*Sound a horn.*\n\n**B**  \nBye.\n")
    title, text = render_markdown(md)
    assert title == "A Play"
    assert text == "A:\nHello,\n--world.\nAnd more words.\n\nB:\nBye.\n"


def test_split_sizes():
    sizes = {s: len(split_text(s)) for s in SPLITS}
    assert 3_500_000 < sizes["train"] < 4_500_000
    assert 250_000 < sizes["valid"] < 450_000 and 300_000 < sizes["test"] < 500_000


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="expected one of"):
        load_split("dev")
