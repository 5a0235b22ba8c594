"""Grading a class without trusting any student: nbgrader, with every submission run in
a sandbox, several at a time, and feedback that keeps the hidden tests hidden.

``python -m course_lib.grading.autograde ch01`` (what ``make autograde A=ch01`` runs) grades
every ``submitted/<student>/ch01/`` of the course folder:

- ``SandboxedExecute`` replaces nbgrader's Execute step (``nbgrader_config.py`` names
  it, so plain ``nbgrader autograde`` and the formgrader use it too). nbgrader still
  restores the tests from the gradebook before, and scores the outputs and writes the
  grades after, outside the sandbox; only the execution moves into it
  (``course_lib.grading.sandbox``: bubblewrap, read-only root, private /tmp, no network, no
  course folder, limits). Where the sandbox cannot run it refuses, unless the
  instructor allows it (``--unsandboxed``, ``SandboxedExecute.allow_unsandboxed``).
- Submissions are graded by ``--jobs`` worker processes (the machine's cores by
  default). SQLite takes one writer at a time, so each worker holds a lock on the
  gradebook's folder while nbgrader reads or writes it and lets it go while the notebook
  runs: gradebook work is serial, execution is parallel, and each submission is handed
  to exactly one worker.
- Scores are verdicts of the grader, not of the notebook: before the run,
  ``trusted_cases`` writes every case's inputs (visible and hidden, drawn from the
  grading seed) into the sandbox's working folder; the test cells hand the results back
  as plain data; after it, ``verdict.apply_verdicts`` compares them with expected values
  computed here and gives each test cell its report and partial credit. Nothing a
  submission does in its kernel (reading the test's variables, replacing numpy's or
  course_lib's functions, objects that equal everything) reaches an expected value or a
  comparison.
- ``HideHiddenTests`` is a feedback step (``nbgrader generate_feedback``): it drops what
  a test cell printed while graded (a submission could print hidden inputs there),
  takes hidden-test regions out of any test cell written the nbgrader way and removes
  their lines wherever they appear in an output. The per-case report and every score
  stay.
- ``main`` also writes ``autograded/<assignment>-similarity.md``, the copy report
  (``course_lib.grading.similarity``).
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from nbgrader import utils
from nbgrader.preprocessors import ClearHiddenTests, Execute
from traitlets import Bool, Integer, List, Unicode

from course_lib.grading import sandbox, verdict
from course_lib.grading.kernel import cases_module
from course_lib.grading.sandbox import Limits, SandboxUnavailable, check_sandbox, run_notebook

__all__ = ["GradebookLock", "HideHiddenTests", "SandboxedExecute", "main"]

MAX_FILES_MB = 64  # files handed in beside the notebook that go into the sandbox


class GradebookLock:
    """An exclusive lock shared by the grading processes: flock on the gradebook's
    folder (no file is made; SQLite's own locks are fcntl locks, a separate kind)."""

    held: GradebookLock | None = None  # the lock this process holds now, if any

    def __init__(self, folder: str | os.PathLike):
        self.folder = str(folder)
        self._fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)

    def acquire(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def hold(self):
        self.acquire()
        GradebookLock.held = self
        try:
            yield
        finally:
            GradebookLock.held = None
            self.release()

    @staticmethod
    @contextmanager
    def let_go():
        """Release the held lock for the duration (while a notebook runs)."""
        lock = GradebookLock.held
        if lock is not None:
            lock.release()
        try:
            yield
        finally:
            if lock is not None:
                lock.acquire()


def gradebook_folder(db_url: str, course_root: str) -> str:
    """The folder of an SQLite gradebook (the course folder for any other database)."""
    match = re.match(r"^sqlite:///(.+)$", db_url)
    if match:
        return os.path.dirname(os.path.join(course_root, match.group(1)))
    return course_root


class SandboxedExecute(Execute):
    """nbgrader's Execute step, run in ``course_lib.grading.sandbox`` (the cell timeout and
    interrupt settings of Execute / ExecutePreprocessor apply as before)."""

    memory_mb = Integer(Limits.memory_mb, help="address space of each process, MB").tag(config=True)
    cpu_seconds = Integer(Limits.cpu_seconds, help="CPU time of each process, seconds").tag(config=True)
    processes = Integer(Limits.processes, help="processes and threads in the sandbox").tag(config=True)
    file_mb = Integer(Limits.file_mb, help="largest file written, MB").tag(config=True)
    disk_mb = Integer(Limits.disk_mb, help="the private /tmp with the working folder, MB").tag(config=True)
    open_files = Integer(Limits.open_files, help="open files per process").tag(config=True)
    cell_output_kb = Integer(Limits.cell_output_kb, help="outputs kept per cell, KB").tag(config=True)
    output_mb = Integer(Limits.output_mb, help="outputs brought back per notebook, MB").tag(config=True)
    wall_seconds = Integer(Limits.wall_seconds, help="wall-clock limit per notebook, seconds").tag(config=True)
    hidden_paths = List(Unicode(), help="more folders the sandbox sees empty").tag(config=True)
    allow_unsandboxed = Bool(False, help=(
        "Run students' code without a sandbox where none can be made (it then runs with "
        "your rights). Off: grading refuses and says why.")).tag(config=True)

    def limits(self) -> Limits:
        return Limits(**{name: getattr(self, name) for name in Limits.__dataclass_fields__})

    def preprocess(self, nb, resources):
        import nbformat

        reason = check_sandbox()
        if reason and not self.allow_unsandboxed:
            raise SandboxUnavailable(
                f"refusing to run students' code without a sandbox: {reason}. To grade anyway, with the "
                "submissions running under your own account, pass --unsandboxed to "
                "python -m course_lib.grading.autograde "
                "(make autograde A=... UNSANDBOXED=1) or set c.SandboxedExecute.allow_unsandboxed = True")
        if reason:
            self.log.warning("grading WITHOUT a sandbox (%s): the submission runs with your rights", reason)
        folder = resources.get("metadata", {}).get("path") or "."
        db_url = resources.get("nbgrader", {}).get("db_url", "")
        hidden = [*self.hidden_paths, gradebook_folder(db_url, os.getcwd())]
        settings = {"timeout": self.timeout, "interrupt_on_timeout": self.interrupt_on_timeout,
                    "error_on_timeout": self.error_on_timeout, "iopub_timeout": self.iopub_timeout,
                    "startup_timeout": self.startup_timeout}
        chapter = resources.get("nbgrader", {}).get("assignment")
        grading = trusted_cases(chapter)
        with GradebookLock.let_go():
            files = handed_in_files(folder, self._submitted_folder(resources), self.log)
            if grading:
                files[CASES_FILE] = grading[0]
                settings["grading_cases"] = CASES_FILE
            result = run_notebook(nb, settings, self.limits(), files=files, course_root=os.getcwd(),
                                  hidden=hidden, sandboxed=not reason)
        student = resources.get("nbgrader", {}).get("student", "?")
        self.log.info("%s ran in %.1f s%s", student, result.seconds, " (sandboxed)" if not reason else "")
        if result.stopped:
            self.log.warning("%s: %s; the cells after it score 0", student, result.stopped)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if index in result.cells:
                cell.outputs = [nbformat.from_dict(o) for o in result.cells[index]["outputs"]]
                cell.execution_count = result.cells[index]["execution_count"]
            else:
                cell.execution_count = None
                why = result.stopped or "no result came back for it"
                cell.outputs = [nbformat.from_dict(sandbox_error(f"this cell did not run: {why}"))] \
                    if cell.source.strip() else []
        if grading:
            verdict.apply_verdicts(nb, chapter, grading[1], grading[2], self.log)
        return nb, resources

    def _submitted_folder(self, resources) -> str | None:
        """submitted/<student>/<assignment>/, from the converter running this step."""
        coursedir = getattr(getattr(self.parent, "parent", None), "coursedir", None)
        info = resources.get("nbgrader", {})
        if coursedir is None or "student" not in info:
            return None
        return coursedir.format_path(coursedir.submitted_directory, info["student"], info["assignment"])


CASES_FILE = ".course_grading_cases.json"  # the case inputs, in the sandbox's working folder
_trusted: dict = {}


def trusted_cases(chapter: str | None):
    """(the cases file's bytes, the cases, the expected values) for grading ``chapter``,
    made once per grading process; None for an assignment with no cases in
    ``course_lib.grading.cases`` (nbgrader then scores its test cells' outputs as usual)."""
    if not chapter or not re.fullmatch(r"ch\d\d", chapter):
        return None
    try:
        verdict.refs_module(chapter)
        cases_module(chapter)
    except ModuleNotFoundError:
        return None
    key = (chapter, verdict.grading_seed(), os.environ.get(verdict.PRIVATE_ENV))
    if key not in _trusted:
        cases = verdict.build_cases(chapter, key[1])
        _trusted[key] = (json.dumps(cases, allow_nan=False).encode(), cases, verdict.expected_values(chapter, cases))
    return _trusted[key]


def handed_in_files(folder: str, submitted: str | None, log=None) -> dict[str, bytes]:
    """The regular files beside the notebook in ``folder`` (the autograded copy), for the
    working folder in the sandbox. Never a notebook (the one being graded holds the
    hidden tests by now), nor a file that was a symbolic link in ``submitted`` (nbgrader
    copies the file it points to, which could be any file of yours), nor more than
    ``MAX_FILES_MB`` in all."""
    files, total = {}, 0
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix == ".ipynb":
            continue
        rel = path.relative_to(folder)
        handed_in = [Path(submitted, *rel.parts[:k]) for k in range(1, len(rel.parts) + 1)] if submitted else []
        if any(p.is_symlink() for p in handed_in):
            if log:
                log.warning("%s was a symbolic link in %s: left out of the sandbox", rel, submitted)
            continue
        total += path.stat().st_size
        if total > MAX_FILES_MB << 20:
            if log:
                log.warning("files beside the notebook pass %d MB; %s and later ones stay out", MAX_FILES_MB, rel)
            break
        files[rel.as_posix()] = path.read_bytes()
    return files


def sandbox_error(message: str) -> dict:
    return {"output_type": "error", "ename": "SandboxError", "evalue": message,
            "traceback": [f"SandboxError: {message}"]}


# --------------------------------------------------------------------------- feedback

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_FRAME = re.compile(r"Cell In\[(\d+)\], line (\d+)")
SHOWN_INSTEAD = "# hidden tests ran here; they are not shown"
OWN_OUTPUTS = "[the outputs of your own cells are not shown in feedback; your notebook has them]\n"


class HideHiddenTests(ClearHiddenTests):
    """Feedback without the source of the hidden tests (see the module docstring)."""

    min_line = Integer(6, help=(
        "outputs lose every line that holds a line of a hidden test at least this long (stripped) that is not "
        "also in a visible cell")).tag(config=True)

    def split(self, source: str) -> tuple[list[str], set[int]]:
        """The cell's lines, and the line numbers (1-based) inside hidden regions."""
        lines, hidden, inside = source.split("\n"), set(), False
        for number, line in enumerate(lines, 1):
            if self.begin_test_delimeter in line:
                inside = True
            if inside:
                hidden.add(number)
            if self.end_test_delimeter in line:
                inside = False
        return lines, hidden

    def preprocess(self, nb, resources):
        import nbformat

        secret, shown = set(), set()  # lines of hidden tests; lines in sight anyway
        for cell in nb.cells:
            if cell.cell_type == "code":
                lines, hidden = self.split(cell.source) if utils.is_grade(cell) else (cell.source.split("\n"), set())
                for number, line in enumerate(lines, 1):
                    (secret if number in hidden else shown).add(line.strip())
        secret = {s for s in secret - shown if len(s) >= self.min_line}
        # Graded by verdicts (test cells restored from the gradebook call check_part): the
        # student's own cells could print the hidden cases' inputs while graded, so the page
        # shows the test cells' reports and no output of any other cell.
        verdicts = any(c.cell_type == "code" and utils.is_grade(c) and "check_part(" in c.source for c in nb.cells)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            # what a test cell printed while graded stays with the instructor (verdict.apply_verdicts)
            cell.outputs = [o for o in cell.outputs if not o.get("metadata", {}).get(verdict.PRINTED)]
            if verdicts and cell.outputs and not (utils.is_grade(cell) and not utils.is_solution(cell)):
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=OWN_OUTPUTS)]
                continue
            lines, hidden = self.split(cell.source) if utils.is_grade(cell) else (cell.source.split("\n"), set())
            if hidden:
                shown, previous = [], False
                for number, line in enumerate(lines, 1):
                    if number not in hidden:
                        shown.append(line)
                    elif not previous:
                        shown.append(line[: len(line) - len(line.lstrip())] + SHOWN_INSTEAD)
                    previous = number in hidden
                cell.source = "\n".join(shown)
            cell.outputs = [o for o in (self.clean(o, secret, hidden, cell) for o in cell.outputs) if o is not None]
        return nb, resources

    @staticmethod
    def redact(text: str, secret: set[str]) -> str:
        return "\n".join("[a line of a hidden test, not shown]" if any(s in _ANSI.sub("", line) for s in secret)
                         else line for line in text.split("\n"))

    def clean(self, out, secret, hidden, cell):
        kind = out.get("output_type")
        if kind == "stream":
            out.text = self.redact(out.text, secret)
        elif kind == "error" and hidden:
            frames = [(int(n), int(line)) for n, line in _FRAME.findall(_ANSI.sub("", "\n".join(out.traceback)))]
            mine = [line for n, line in frames if n == cell.get("execution_count")] or [line for _, line in frames]
            if mine and mine[0] not in hidden:  # a visible test failed: its message, no source around it
                out.evalue = self.redact(out.evalue, secret)
                out.traceback = [f"{out.ename}: {out.evalue}"]
            else:
                out.evalue = ""
                out.traceback = [f"A hidden test failed ({out.ename})."]
        elif kind == "error":
            out.evalue = self.redact(out.evalue, secret)
            out.traceback = [self.redact(line, secret) for line in out.traceback]
        elif hidden:
            return None  # a hidden-test cell shows its streams and its verdict only
        else:
            for mime, value in out.get("data", {}).items():
                if isinstance(value, str) and mime.startswith("text/"):
                    out.data[mime] = self.redact(value, secret)
        return out


# --------------------------------------------------------------------------- the command

_worker: dict = {}


def _init_worker(course: str, assignment: str, overrides: list[str], reason: str | None) -> None:
    import warnings

    from nbgrader.apps import AutogradeApp
    from sqlalchemy.exc import SAWarning

    os.chdir(course)
    sandbox.remember_check(reason)  # checked once, by the parent
    warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader 0.9's session notes under SQLAlchemy 2

    app = AutogradeApp()
    app.initialize([assignment, "--force", *overrides])
    app.coursedir.assignment_id = assignment
    _worker.update(app=app, lock=GradebookLock(gradebook_folder(app.coursedir.db_url, course)))


def _grade_one(student: str) -> tuple[bool, float]:
    from nbgrader.converters import Autograde, NbGraderException

    app = _worker["app"]
    app.coursedir.student_id = student
    start = time.monotonic()
    with _worker["lock"].hold():
        try:
            Autograde(coursedir=app.coursedir, parent=app).start()
            ok = True
        except NbGraderException:
            ok = False
    return ok, time.monotonic() - start


def find_students(assignment: str, only: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Students with a submitted/<student>/<assignment>/ folder; and those refused, with why."""
    found = sorted(p.parent.name for p in Path("submitted").glob(f"*/{glob.escape(assignment)}") if p.is_dir())
    if only:
        found = [s for s in found if s in only]
    bad = {}
    for s in found:
        folder = Path("submitted", s, assignment)
        if glob.escape(s) != s or s.startswith("."):
            bad[s] = "the student id has characters nbgrader would read as a pattern"
        elif any(p.is_symlink() for p in [folder.parent, folder, *folder.rglob("*")]):
            bad[s] = f"{folder} holds a symbolic link (nbgrader would copy the file it points to)"
    return [s for s in found if s not in bad], bad


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m course_lib.grading.autograde", description=(
        "Grade every submission of an assignment with nbgrader, each run in a sandbox (bubblewrap), "
        "several at a time. Run it in the course folder (where nbgrader_config.py is)."))
    p.add_argument("assignment", nargs="?", help="the assignment, e.g. ch01")
    p.add_argument("--student", action="append", help="grade only this student (repeatable)")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="submissions graded at a time")
    p.add_argument("--course", default=".", help="the course folder (default: here)")
    p.add_argument("--unsandboxed", action="store_true", help=(
        "where no sandbox can be made, run the submissions anyway, with your rights (never needed on Linux "
        "with bubblewrap)"))
    p.add_argument("--check", action="store_true", help="only say whether the sandbox works here")
    p.add_argument("--verbose", action="store_true", help="nbgrader's own log, at INFO")
    p.add_argument("--cell-timeout", type=int, help="seconds per cell (nbgrader_config.py says 30)")
    for name in Limits.__dataclass_fields__:
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"Limits.{name} (default {getattr(Limits, name)})")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs should be at least 1")
    if not args.assignment and not args.check:
        p.error("name the assignment, e.g. ch01 (or --check)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = check_sandbox()
    if args.check:
        print(f"sandbox: {'works' if reason is None else 'NOT available: ' + reason}")
        return 0 if reason is None else 2
    if reason and not args.unsandboxed:
        print(f"refusing to grade: {reason}.\nThe submissions would run with your rights and could read the "
              "solutions and the gradebook, change your files or use the network. Grade on Linux with bubblewrap, "
              "or pass --unsandboxed (make autograde A=... UNSANDBOXED=1) to run them anyway.", file=sys.stderr)
        return 2
    if reason:
        print(f"WARNING: grading WITHOUT a sandbox ({reason}); every submission runs with your rights",
              file=sys.stderr)
    course = os.path.abspath(args.course)
    os.chdir(course)
    students, bad = find_students(args.assignment, args.student)
    for s, why in bad.items():
        print(f"ERROR: {s} not graded: {why}")
    if not students:
        print(f"no submissions found in {course}/submitted/*/{args.assignment}/", file=sys.stderr)
        return 2

    db_url = _db_url(course)
    if not released(db_url, args.assignment):
        print(f"{args.assignment} has not been released in this course's gradebook: run `make release` first "
              f"(nbgrader generate_assignment {args.assignment}), then grade.", file=sys.stderr)
        return 2

    overrides = [] if args.verbose else ["--log-level=WARN"]
    private = os.environ.get(verdict.PRIVATE_ENV)
    if private and Path(private, "solutions").is_dir():  # an instructor's private tests and solutions
        overrides.append(f"--CourseDirectory.source_directory={Path(private, 'solutions').resolve()}")
    if reason:
        overrides.append("--SandboxedExecute.allow_unsandboxed=True")
    if args.cell_timeout is not None:
        overrides.append(f"--SandboxedExecute.timeout={args.cell_timeout}")
    for name in Limits.__dataclass_fields__:
        if getattr(args, name) is not None:
            overrides.append(f"--SandboxedExecute.{name}={getattr(args, name)}")
    jobs = min(args.jobs, len(students))
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    print(f"grading {len(students)} submissions of {args.assignment} with {jobs} worker(s)"
          f"{'' if reason else ', each in a sandbox'}", flush=True)
    start = time.monotonic()
    status: dict[str, str] = {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(course, args.assignment, overrides, reason)) as pool:
        futures = {pool.submit(_grade_one, s): s for s in students}
        for future in as_completed(futures):
            student = futures[future]
            try:
                ok, seconds = future.result()
                status[student] = "graded" if ok else "ERROR"
                print(f"  {student:<24} {status[student]:<7} {seconds:6.1f} s", flush=True)
            except Exception as exc:  # noqa: BLE001  a worker died: say so, never drop the student silently
                status[student] = "ERROR"
                print(f"  {student:<24} ERROR   the grading process failed: {exc!r}", flush=True)
    elapsed = time.monotonic() - start
    report(args.assignment, status, db_url)
    from course_lib.grading import similarity

    print(f"copy report (flags for you to look at; no score changed): "
          f"{similarity.write_report(Path(course), args.assignment).relative_to(course)}")
    print(f"graded {len(students)} submissions in {elapsed:.1f} s with {jobs} worker(s): "
          f"{elapsed / len(students):.2f} s per submission")
    failed = sorted(s for s, v in status.items() if v != "graded") + sorted(bad)
    if failed:
        print(f"ERROR: {len(failed)} submission(s) could not be graded: {', '.join(failed)} "
              f"(see the log above; nothing was recorded for them)")
    return 1 if failed else 0


def released(db_url: str, assignment: str) -> bool:
    """Whether the gradebook knows ``assignment`` (``make release`` records it)."""
    match = re.match(r"^sqlite:///(.+)$", db_url)
    if match and not os.path.isfile(match.group(1)):
        return False
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url) as gb:
        try:
            gb.find_assignment(assignment)
        except MissingEntry:
            return False
    return True


def _db_url(course: str) -> str:
    from nbgrader.apps import AutogradeApp

    app = AutogradeApp()
    app.initialize(["--log-level=ERROR"])
    url = app.coursedir.db_url
    app.clear_instance()
    return url


def report(assignment: str, status: dict, db_url: str) -> None:
    from nbgrader.api import Gradebook, MissingEntry

    print(f"\n{'student':<24} {'score':>13}")
    with Gradebook(db_url) as gb:
        for student in sorted(status):
            try:
                sub = gb.find_submission(assignment, student)
                score = f"{sub.score:g} / {sub.max_score:g}" if status[student] == "graded" else "not graded"
            except MissingEntry:
                score = "not graded"
            print(f"{student:<24} {score:>13}")


if __name__ == "__main__":
    from course_lib.grading.autograde import main as _main  # the workers find their functions under this name

    sys.exit(_main())
