"""Each chapter's references for the grader: ``REFS``, part name -> ``verdict.Ref`` (the
expected value of a case, the hidden cases, the comparison). Never imported into a
student's kernel while it is graded; the sandbox sees this folder empty."""
