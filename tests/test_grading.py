"""course_lib.grading: exact type checks and the guard against calling the reference."""

import importlib
import math

import pytest

import course_lib.ngram
from course_lib import grading
from course_lib.grading import ReferenceUsed, check_close, check_type, no_course_lib
from course_lib.ngram import NGramLM

SENTS = [["to", "be", "or", "not", "to", "be"]]


class EqualsEverything(float):
    def __eq__(self, other):
        return True

    __hash__ = float.__hash__


def delegate_global():  # uses the name imported at the top of this module
    return NGramLM(2, "mle").fit(SENTS).prob("be", ["to"])


def delegate_inner_import():
    from course_lib.ngram import NGramLM as M

    return M(2, "mle").fit(SENTS).prob("be", ["to"])


def delegate_module():
    return course_lib.ngram.NGramLM(2, "mle").fit(SENTS).prob("be", ["to"])


KEPT = {"model": NGramLM(2, "mle").fit(SENTS), "pad": course_lib.ngram.pad_sentence}


def delegate_kept_instance():
    return KEPT["model"].prob("be", ["to"])


def delegate_kept_function():
    return KEPT["pad"](["a"], 2)


def delegate_reload():
    return importlib.reload(course_lib.ngram).NGramLM(2).fit(SENTS).prob("be", ["to"])


def own_code():
    pairs = list(zip(["<s>"] + SENTS[0], SENTS[0] + ["</s>"], strict=True))
    return sum(p == ("to", "be") for p in pairs) / sum(p[0] == "to" for p in pairs)


@pytest.mark.parametrize("fn", [delegate_global, delegate_inner_import, delegate_module,
                                delegate_kept_instance, delegate_kept_function, delegate_reload])
def test_delegating_code_fails_inside_and_works_after(fn):
    with no_course_lib():
        with pytest.raises((ReferenceUsed, ImportError)):  # reload: "not in sys.modules"
            fn()
    assert fn() is not None  # everything is restored


def test_the_error_tells_the_student_what_to_do():
    with no_course_lib():
        with pytest.raises(ReferenceUsed, match="graded code must be your own"):
            delegate_kept_function()


def test_own_code_runs_inside():
    expected = delegate_global()
    with no_course_lib():
        result = own_code()
    check_close(result, expected)
    assert result == 1.0


def test_guard_restores_even_when_the_body_raises():
    with pytest.raises(ZeroDivisionError):
        with no_course_lib():
            raise ZeroDivisionError
    assert NGramLM(2, "mle").fit(SENTS).prob("be", ["to"]) == 1.0
    assert "course_lib.ngram" in importlib.sys.modules


def test_check_type_refuses_lookalikes():
    with pytest.raises(AssertionError, match="should be of type float"):
        check_type(EqualsEverything(1.0), float)
    with pytest.raises(AssertionError, match="should be of type dict"):
        check_type([], dict, "count_ngrams(...)")
    check_type({}, dict)


def test_check_close():
    check_close(0.1 + 0.2, 0.3)
    check_close(math.inf, math.inf)
    with pytest.raises(AssertionError, match="expected 0.5"):
        check_close(0.6, 0.5)
    with pytest.raises(AssertionError):
        check_close(EqualsEverything(0.5), 0.5)
    with pytest.raises(AssertionError):
        check_close(1, 1.0)  # an int is not a float


def test_grading_itself_stays_usable_inside_the_guard():
    with no_course_lib():
        check_type(1.0, float)
        assert grading.check_close is check_close
