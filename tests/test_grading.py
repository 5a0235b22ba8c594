"""course_lib.grading.guard: the first line against calling the reference or a switched-off function."""

import importlib
import subprocess
import sys

import pytest
import torch

import course_lib.ngram
from course_lib.grading.guard import ReferenceUsed, no_course_lib, switched_off
from course_lib.ngram import NGramLM

SENTS = [["to", "be", "or", "not", "to", "be"]]


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
    assert result == expected == 1.0


def test_guard_restores_even_when_the_body_raises():
    with pytest.raises(ZeroDivisionError):
        with no_course_lib():
            raise ZeroDivisionError
    assert NGramLM(2, "mle").fit(SENTS).prob("be", ["to"]) == 1.0
    assert "course_lib.ngram" in importlib.sys.modules


def test_importing_grading_does_not_import_torch():
    code = ("import sys, course_lib.grading.kernel, course_lib.grading.guard, course_lib.grading.plain; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


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


def test_torch_works_inside_the_guard():
    x = torch.tensor([0.0, 1.0])
    with no_course_lib(), switched_off([(torch, "softmax")], "write softmax yourself"):
        result = torch.exp(x) / torch.exp(x).sum()
        with pytest.raises(AssertionError, match="torch.softmax was called"):
            torch.softmax(x, dim=-1)
    torch.testing.assert_close(result, torch.softmax(x, dim=-1))


def test_exempt_functions_and_classes_keep_working():
    """A later part's call may lend the reference of an earlier part; nothing else works."""
    model = NGramLM(2, "mle").fit(SENTS)
    with no_course_lib(exempt=[course_lib.ngram.pad_sentence, NGramLM]):
        assert course_lib.ngram.pad_sentence(["a"], 2) == ["<s>", "a", "</s>"]
        assert model.order == 2 and model.count(("to", "be")) == 2  # a lent class's methods
        with pytest.raises(ReferenceUsed):
            course_lib.ngram.bits_per_char(model, ["to be"])
        with pytest.raises(ReferenceUsed):
            from course_lib.metrics import brevity_penalty  # noqa: F401  (importing is refused)


def test_the_test_runners_work_inside_the_guard():
    from course_lib.grading import plain

    with no_course_lib():
        assert plain.loads(plain.dumps((1.5, "a"))) == (1.5, "a")
