"""Grading the exercises: the machinery instructors run, apart from the teaching modules.

Two sides that never share a process while a submission is graded:

- in the student's kernel (sandboxed when graded): ``kernel`` (what a test cell runs),
  ``cases`` (each chapter's graded parts and visible case inputs), ``plain`` (results as
  plain data) and ``guard`` (a first line: calls into course_lib and switched-off
  functions raise while graded code runs);
- in the grader: ``refs`` (expected values and hidden cases, out of the sandbox's sight),
  ``compare``, ``verdict`` (scores case by case), ``autograde`` (nbgrader with every
  submission in ``sandbox``, run by ``sandbox_runner``) and ``similarity`` (the copy
  report).

Importing this package imports nothing else.
"""
