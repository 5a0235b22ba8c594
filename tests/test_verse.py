"""course_lib.verse: syllables and stresses from the CMU dictionary, the fallback for words it
lacks, famous lines that scan and prose that does not, the reward's shape, and the scorer on
the corpus: most ten- or eleven-syllable lines of the validation plays scan, and far fewer
word salads of the same plays' words with ten syllables do."""

import doctest
import random

import pytest

from course_lib import chat, verse
from course_lib.data import load_split


def test_module_examples():
    assert doctest.testmod(verse).failed == 0


def test_stresses_come_from_the_dictionary():
    assert verse.stress_patterns("question") == ((1, 0),)
    assert verse.stress_patterns("outrageous") == ((0, 1, 0),)
    assert (0,) in verse.stress_patterns("the") and (1,) in verse.stress_patterns("the")
    assert verse.stress_patterns("banish'd") == verse.stress_patterns("banish")  # -'d is not sounded
    assert verse.stress_patterns("'tis") == verse.stress_patterns("tis")
    assert verse.stress_patterns("wouldst") == ((None,),)  # unknown: one vowel group, stress unknown
    assert verse.words("O'er the sea, 'tis he!") == ["o'er", "the", "sea", "'tis", "he"]


@pytest.mark.parametrize("line", [
    "To be, or not to be: that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "If music be the food of love, play on;",
    "Now is the winter of our discontent",
])
def test_famous_lines_scan(line):
    assert verse.scans(line) and verse.reward(line) == 1.0


@pytest.mark.parametrize("line", [
    "Who's there?",
    "I will tell you the truth of it, for you are a good fellow and honest",
    "The nobler question of outrageous Hamlet melancholy",  # ten-ish syllables, stresses astray
])
def test_prose_does_not(line):
    assert not verse.scans(line) and 0.0 <= verse.reward(line) < 1.0


def test_reward_shape():
    assert verse.reward("") == 0.0 and verse.scan("") == {}
    nine = "If music be the food of love, play"
    assert verse.scan(nine) == {9: 0}
    assert verse.reward(nine) == pytest.approx(1 - 1 / 5)  # one syllable short
    assert verse.reward("If music be the food of love, play on, play on") == pytest.approx(1 - 2 / 5)


def test_the_scorer_separates_verse_from_word_salad():
    lines = [x for p in load_split("valid") for _, ls in chat.speeches(p.text) for x in ls]
    right_length = [x for x in lines if {10, 11} & set(verse.scan(x))]
    verse_share = sum(map(verse.scans, right_length)) / len(right_length)
    rng = random.Random(0)
    pool = [w for x in lines for w in x.split()]
    salad = []
    while len(salad) < 500:
        candidate = " ".join(rng.sample(pool, rng.randint(5, 9)))
        if 10 in verse.scan(candidate):
            salad.append(candidate)
    salad_share = sum(map(verse.scans, salad)) / len(salad)
    assert verse_share >= 0.8, verse_share  # measured 0.88
    assert salad_share <= 0.6, salad_share  # measured 0.44: syllable count alone is not enough
    assert verse_share - salad_share >= 0.3
