"""The pieces of trusted grading, one at a time: plain data across the boundary, exact
comparisons, per-case verdicts with partial credit, the kernel's two modes, the private
overlay and seed, and the copy report's fingerprints."""

import ast
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from course_lib.grading import compare, plain, similarity, verdict
from course_lib.grading.kernel import RESULTS_MIME, Part, run_case
from course_lib.grading.plain import Array, Tensor, TooBig, Unsupported


class Anything:
    def __eq__(self, other):
        return True


class AnyFloat(float):
    def __eq__(self, other):
        return True


class AnyDict(dict):
    def __eq__(self, other):
        return True


class AnyTensor(torch.Tensor):
    def __eq__(self, other):
        return True


def roundtrip(value):
    return plain.loads(plain.dumps(value))


@pytest.mark.parametrize("value", [None, True, 3, -2.5, "to be", [1, 2], (1, "a"), {("to", "be"): 2, "x": [1.5]},
                                   {1: {2: (3,)}}, []])
def test_plain_values_round_trip(value):
    assert roundtrip(value) == value
    assert type(roundtrip(value)) is type(value)


def test_special_floats_round_trip_as_json():
    text = plain.dumps([math.nan, math.inf, -math.inf])
    json.loads(text)  # strict JSON: no NaN literals
    back = plain.loads(text)
    assert math.isnan(back[0]) and back[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize("cheat", [Anything(), AnyFloat(1.0), AnyDict(a=1), object()])
def test_lookalikes_arrive_as_unsupported(cheat):
    assert isinstance(roundtrip(cheat), Unsupported)
    assert compare.same(roundtrip(cheat), 1.0) is not None
    assert compare.same(roundtrip(cheat), {"a": 1}) is not None


def test_a_tensor_subclass_is_not_a_tensor():
    fake = torch.zeros(2).as_subclass(AnyTensor)
    assert isinstance(roundtrip(fake), Unsupported)


def test_tensors_and_arrays_keep_dtype_shape_and_values():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7
    back = roundtrip(t)
    assert isinstance(back, Tensor) and back.dtype == "torch.float32" and back.shape == (2, 3)
    assert torch.equal(plain.to_torch(back), t)
    a = np.arange(4, dtype=np.int64).reshape(2, 2)
    assert np.array_equal(plain.to_torch(roundtrip(a)), a)
    s = roundtrip(np.float32(0.5))
    assert isinstance(s, Array) and s.scalar and compare.same(s, 0.5) is not None  # not a float


def test_too_big_values_are_cut_off():
    assert isinstance(roundtrip(list(range(plain.MAX_ITEMS + 10))), TooBig)


def test_same_is_exact_about_types_and_close_about_numbers():
    assert compare.same(1.0 + 1e-9, 1.0) is None
    assert compare.same(1, 1.0).kind == "type"
    assert compare.same(True, 1).kind == "type"
    assert compare.same([1.0], (1.0,)).kind == "type"
    assert compare.same(math.nan, math.nan) is None
    assert compare.same(math.nan, 1.0).kind == "value"
    assert compare.same(math.inf, 1e308).kind == "value"
    assert compare.same({"a": 1}, {"a": 1, "b": 2}).kind == "keys"
    t = roundtrip(torch.ones(2, 2))
    assert compare.same(roundtrip(torch.ones(2, 2, dtype=torch.float64)), t).kind == "dtype"
    assert compare.same(roundtrip(torch.ones(4)), t).kind == "shape"
    m = compare.same(roundtrip(torch.tensor([[1.0, 1.0], [1.0, 2.0]])), t)
    assert m.kind == "value" and "(1, 1)" in m.detail


def test_a_numpy_float64_counts_as_the_float_it_is():
    assert isinstance(np.float64(0.5), float)
    assert compare.same(roundtrip(np.float64(0.5)), 0.5) is None
    assert compare.same(roundtrip(np.float64(0.7)), 0.5).kind == "value"
    assert compare.same(roundtrip(np.float32(0.5)), 0.5).kind == "type"  # not a float
    assert compare.same(roundtrip(np.array([0.5])), 0.5).kind == "type"  # an array is not a scalar
    assert compare.same(roundtrip(0.5), roundtrip(np.float64(0.5))).kind == "type"  # where numpy is asked, numpy


def _cases(**hidden_flags):
    return [{"name": name, "hidden": flag, "args": plain.encode(())} for name, flag in hidden_flags.items()]


def test_judge_gives_partial_credit_and_hides_hidden_values():
    ref = verdict.Ref(expected=lambda: 0.25, weights={"heavy": 2})
    cases = _cases(shown=False, heavy=True, secret=True)
    expected = {c["name"]: 0.25 for c in cases}
    results = {"part": "p", "results": [{"case": "shown", "value": 0.5}, {"case": "heavy", "value": 0.25},
                                        {"case": "secret", "value": 0.123456}]}
    report = verdict.judge("ch01", "p", cases, results, expected, ref)
    assert report.fraction == pytest.approx(2 / 4) and report.failed == 2
    assert "expected 0.25, got 0.5" in report.text  # a visible case shows both sides
    assert "secret (hidden): wrong value" in report.text
    assert "0.123456" not in report.text and "0.25" not in report.text.split("secret")[1]


def test_judge_scores_missing_results_and_errors_zero():
    ref = verdict.Ref(expected=lambda: 1.0)
    cases = _cases(a=False, b=True, c=True)
    expected = {c["name"]: 1.0 for c in cases}
    assert verdict.judge("ch01", "p", cases, None, expected, ref).fraction == 0
    partial = {"part": "p", "results": [{"case": "a", "value": 1.0}, {"case": "b", "error": "ValueError",
                                                                         "message": "secret input 42"}]}
    report = verdict.judge("ch01", "p", cases, partial, expected, ref)
    assert report.fraction == pytest.approx(1 / 3)
    assert "b (hidden): raised ValueError" in report.text and "42" not in report.text
    assert "c (hidden): did not run" in report.text
    other_part = dict(partial, part="q")  # results handed out under another part's name count for nothing
    assert verdict.judge("ch01", "p", cases, other_part, expected, ref).fraction == 0


def test_an_expected_exception():
    ref = verdict.Ref(expected=lambda: verdict.Raises("ValueError"))
    cases = _cases(empty=True)
    expected = {"empty": verdict.Raises("ValueError")}
    ok = {"part": "p", "results": [{"case": "empty", "error": "ValueError", "message": ""}]}
    wrong = {"part": "p", "results": [{"case": "empty", "value": 1.0}]}
    assert verdict.judge("ch01", "p", cases, ok, expected, ref).fraction == 1
    assert verdict.judge("ch01", "p", cases, wrong, expected, ref).fraction == 0


def test_run_case_guards_and_converts():
    part = Part("test_x", "f", {})
    assert run_case(part, {"f": lambda x: x * 2}, plain.encode((1.5,))) == {"value": 3.0}
    assert run_case(part, {}, plain.encode((1.5,)))["error"] == "NameError"
    assert set(run_case(part, {"f": lambda x: Anything()}, plain.encode((1,)))["value"]) == {"$unsupported"}
    from course_lib.metrics import brevity_penalty

    delegated = run_case(part, {"f": lambda x: brevity_penalty(x, 1)}, plain.encode((1,)))
    assert delegated["error"] == "ReferenceUsed"
    assert run_case(part, {"f": lambda x: sys.exit(3)}, plain.encode((1,)))["error"] == "SystemExit"


def test_cases_and_expected_values_depend_on_the_seed_only_through_hidden_cases():
    a, b = verdict.build_cases("ch01", 1), verdict.build_cases("ch01", 2)
    visible = [[c for c in cs if not c["hidden"]] for cs in a["parts"].values()]
    assert visible == [[c for c in cs if not c["hidden"]] for cs in b["parts"].values()]
    assert a != b and a == verdict.build_cases("ch01", 1)
    expected = verdict.expected_values("ch01", a)
    assert set(expected) == set(a["parts"])


def test_private_refs_and_seed(tmp_path, monkeypatch):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "ch01.py").write_text(textwrap.dedent('''
        from course_lib.grading.refs.ch01 import REFS as PUBLIC
        from course_lib.grading.verdict import Ref
        REFS = dict(PUBLIC)
        REFS["perplexity"] = Ref(PUBLIC["perplexity"].expected, hidden=lambda rng: {"a private case": ([0.5, 0.5],)})
    '''))
    (tmp_path / "seed").write_text("987\n")
    monkeypatch.setenv(verdict.PRIVATE_ENV, str(tmp_path))
    monkeypatch.delenv(verdict.SEED_ENV, raising=False)
    assert verdict.grading_seed() == 987
    cases = verdict.build_cases("ch01")
    names = [c["name"] for c in cases["parts"]["perplexity"] if c["hidden"]]
    assert names == ["a private case"]
    monkeypatch.setenv(verdict.SEED_ENV, "5")
    assert verdict.grading_seed() == 5


def test_student_mode_reports_visible_cases(tmp_path):
    """Outside grading, check_part compares the visible cases in the student's own kernel."""
    code = textwrap.dedent('''
        from course_lib.grading.kernel import check_part
        def perplexity(probs):
            return 4.0
        try:
            check_part("ch01", "perplexity", globals())
        except AssertionError as e:
            print("FAILED:", e)
    ''')
    env = {k: v for k, v in os.environ.items() if k != "COURSE_GRADING_CASES"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "passed  uniform over 4" in out
    assert "FAILED  a zero probability: the result: expected inf, got 4.0" in out
    assert "FAILED: 1 of 3 visible cases failed" in out


def test_grading_mode_hands_out_results_and_holds_no_expected_value(tmp_path):
    """While graded, the kernel holds the case inputs and the results, never an expected
    value (searched for among every object the garbage collector tracks) nor the
    modules that make and compare them."""
    cases = verdict.build_cases("ch01", 7)
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    code = textwrap.dedent('''
        import gc, json, sys
        from course_lib.grading import plain
        from course_lib.grading.kernel import check_part
        def count_ngrams(sentences, n):
            return {}
        check_part("ch01", "count_ngrams", globals())
        print("MODULES", json.dumps(sorted(m for m in sys.modules if m.startswith("course_lib.grading"))))
        tables = [plain.dumps(o) for o in gc.get_objects()
                  if type(o) is dict and o and all(type(k) is tuple for k in o)]
        with open(sys.argv[1], "w") as f:
            json.dump(tables, f)
    ''')
    env = dict(os.environ, COURSE_GRADING_CASES=str(path))
    found = tmp_path / "found.json"
    out = subprocess.run([sys.executable, "-c", code, str(found)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    modules = json.loads(out.stdout.split("MODULES ")[1].split("\n")[0])
    assert "course_lib.grading.kernel" in modules
    assert not [m for m in modules if m.split(".")[2:3] in (["refs"], ["verdict"], ["compare"])], modules
    # the expected count tables of this part: none of them is anywhere in that process
    expected = verdict.expected_values("ch01", cases)["count_ngrams"]
    tables = {plain.dumps(v) for v in (plain.to_torch(e) for e in expected.values()) if len(v) > 2}
    assert len(tables) >= 8
    assert not tables & set(json.loads(found.read_text()))
    handed = ast.literal_eval(out.stdout.split("\n")[0])[RESULTS_MIME]  # display() outside a kernel prints it
    doc = json.loads(handed)
    assert doc["part"] == "count_ngrams" and len(doc["results"]) == len(expected)
    assert all(r["value"] == {"$dict": []} for r in doc["results"])


def test_fingerprints_ignore_names_comments_and_layout():
    a = "def f(x):\n    total = 0\n    for i in range(len(x)):\n        total += x[i] * 2\n    return total\n"
    b = "def g(ys):\n    acc = 0  # the sum\n    for j in range(len(ys)):\n        acc += ys[j] * 7\n    return acc\n"
    c = "def f(x):\n    return sum(v * 2 for v in x if v)\n"
    assert similarity.fingerprints(a) == similarity.fingerprints(b)
    assert not similarity.fingerprints(a) & similarity.fingerprints(c)


def _nb(source):
    return {"cells": [{"cell_type": "code", "source": source,
                       "metadata": {"nbgrader": {"solution": True, "grade_id": "part"}}}]}


def test_copy_report_flags_copies_and_constructs():
    solution = _nb("def f(counts, context):\n    ### BEGIN SOLUTION\n    total = 0\n"
                   "    for gram, c in counts.items():\n"
                   "        if gram[:-1] == context:\n            total += c\n    if total == 0:\n        return 0.0\n"
                   "    return counts.get(context, 0) / total\n    ### END SOLUTION\n")
    release = _nb("def f(counts, context):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n")
    copied = _nb("def f(counts, context):\n    tot = 0\n    for g, n in counts.items():\n"
                 "        if g[:-1] == context:\n            tot += n\n    if tot == 0:\n        return 0.0\n"
                 "    return counts.get(context, 0) / tot\n")
    own = _nb("def f(counts, context):\n    matching = [n for g, n in counts.items() if g[:-1] == context]\n"
              "    return counts.get(context, 0) / sum(matching) if matching else 0.0\n")
    sneaky = _nb("import inspect, course_lib.metrics\nexec(inspect.getsource(course_lib.metrics))\n"
                 "def f(counts, context):\n    return 0.0\n")
    findings = {f.student: f for f in similarity.compare_class(
        {"copied": copied, "own": own, "sneaky": sneaky}, solution, release, {})}
    assert findings["copied"].flagged and findings["copied"].source == "solutions" and findings["copied"].share > 0.8
    assert not findings["own"].flagged
    assert findings["sneaky"].flagged
    assert {"executes source text", "imports course_lib"} <= set(findings["sneaky"].constructs)


def test_copy_report_finds_course_lib_source():
    lib = similarity.course_lib_sources()
    name, source = next((n, s) for n, s in lib.items() if n.endswith("metrics.py"))
    body = source[source.index("def "):][:1500]
    findings = similarity.compare_class({"s": _nb(body)}, None, None, lib)
    assert findings[0].flagged and findings[0].source == name
