"""course_lib.grading: exact type checks and the guard against calling the reference."""

import importlib
import math
import subprocess
import sys

import pytest
import torch

import course_lib.ngram
from course_lib import grading
from course_lib.grading.guard import ReferenceUsed, check_close, check_tensor, check_type, no_course_lib, switched_off
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


def test_importing_grading_does_not_import_torch():
    code = "import sys, course_lib.grading; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


class TensorLookalike(torch.Tensor):
    pass


class EqualsEveryTensor:
    dtype, shape = torch.float32, torch.Size([2])

    def __eq__(self, other):
        return True

    __hash__ = object.__hash__


def test_check_tensor_passes_on_equal_tensors():
    check_tensor(torch.tensor([0.25, 0.75]), torch.tensor([0.25, 0.75]))
    check_tensor(torch.tensor(1.0 + 1e-7), torch.tensor(1.0), "a 0-dim loss")
    check_tensor(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("result,match", [
    (torch.tensor([1.0, 2.0]).as_subclass(TensorLookalike), "softmax.* of type Tensor, but it is TensorLookalike"),
    (1.5, "softmax.* should be of type Tensor, but it is float"),
    ([1.0, 2.0], "should be of type Tensor, but it is list"),
    (EqualsEveryTensor(), "should be of type Tensor, but it is EqualsEveryTensor"),
    (torch.tensor([1.0, 2.0], dtype=torch.float64), "softmax.*expected dtype torch.float32, got torch.float64"),
    (torch.tensor([[1.0, 2.0]]), r"softmax.*expected shape \(2,\), got \(1, 2\)"),
    (torch.tensor([1.0, 2.5]), r"(?s)softmax.*expected\ntensor\(\[1\., 2\.\]\)\ngot\ntensor\(\[1\.0*, 2\.50*\]\)"),
])
def test_check_tensor_fails_with_a_helpful_message(result, match):
    with pytest.raises(AssertionError, match=match):
        check_tensor(result, torch.tensor([1.0, 2.0]), "softmax(x)")


def test_check_tensor_tolerances():
    check_tensor(torch.tensor([1.001]), torch.tensor([1.0]), rtol=1e-2, atol=0.0)
    with pytest.raises(AssertionError, match="expected"):
        check_tensor(torch.tensor([1.001]), torch.tensor([1.0]))
    with pytest.raises(AssertionError):
        check_tensor(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_switched_off_refuses_inside_and_restores_after():
    x = torch.tensor([[0.0, 1.0]])
    expected = torch.softmax(x, dim=-1)
    own = vars(torch)["softmax"]
    with switched_off([(torch, "softmax"), (torch.Tensor, "softmax")], "write softmax yourself"):
        with pytest.raises(AssertionError, match=r"torch\.softmax was called, but write softmax yourself"):
            torch.softmax(x, dim=-1)
        with pytest.raises(AssertionError, match=r"Tensor\.softmax was called"):
            x.softmax(dim=-1)
        assert torch.exp(x).sum() > 0  # everything else still works
    assert vars(torch)["softmax"] is own
    assert "softmax" not in vars(torch.Tensor)  # inherited from the C base class: removed again
    assert torch.equal(x.softmax(dim=-1), expected) and torch.equal(torch.softmax(x, dim=-1), expected)


def test_switched_off_restores_after_an_exception_inside():
    own = vars(torch)["logsumexp"]
    with pytest.raises(ZeroDivisionError):
        with switched_off([(torch, "logsumexp"), (torch.Tensor, "logsumexp"), (torch, "logsumexp")], "why"):
            raise ZeroDivisionError
    assert vars(torch)["logsumexp"] is own and "logsumexp" not in vars(torch.Tensor)


def test_switched_off_removes_a_name_the_owner_did_not_have():
    class Owner:
        pass

    with switched_off([(Owner, "missing")], "it is switched off"):
        with pytest.raises(AssertionError, match="Owner.missing was called, but it is switched off"):
            Owner.missing()
    assert not hasattr(Owner, "missing")


def test_tensor_helpers_work_inside_the_guard():
    x = torch.tensor([0.0, 1.0])
    with no_course_lib(), switched_off([(torch, "softmax")], "write softmax yourself"):
        result = torch.exp(x) / torch.exp(x).sum()
        check_tensor(result, torch.tensor([0.2689414, 0.7310586]))
        with pytest.raises(AssertionError, match="torch.softmax was called"):
            torch.softmax(x, dim=-1)
    check_tensor(result, torch.softmax(x, dim=-1))
