"""Hostile submissions, graded for real by the instructor's command
(``python -m course_lib.grading.autograde``, what ``make autograde`` runs), two at a time.

Attackers hand in chapter 1's solution with graded functions that do one bad thing
first: read the solutions, the gradebook, another student's work and the instructor's
HOME and print them (``count_ngrams``); write, replace or delete files of the course
(``mle_prob``); connect to a server of the instructor's on the loopback
(``add_k_prob``); allocate 10 GB and print 100 MB (``perplexity``, ``sample_next``);
fork without limit; sleep forever, deaf to interrupts. Each must score 0 on exactly the
parts it breaks, the batch must finish, the honest students must score full marks,
every student must have exactly one graded submission, and no file on the instructor's
side may change (hashes before and after).

The sandbox needs bubblewrap: `make test` installs it where it can; where it is missing
these tests fail and say so (they are never skipped).
"""

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from course_lib.grading.sandbox import check_sandbox
from course_lib.grading.verdict import PRINTED
from nbgrader_course import BIN, ROOT, make_course

pytestmark = pytest.mark.slow

A = "ch01"
_GRADED = [c["metadata"]["nbgrader"] for c in json.loads((ROOT / "solutions" / A / f"{A}.ipynb").read_text())["cells"]
           if c["metadata"].get("nbgrader", {}).get("grade")]  # the test cells and the written answer
POINTS = {g["grade_id"]: g["points"] for g in _GRADED if not g.get("solution")}
FULL = dict(POINTS)
CELL_TIMEOUT = 8

ATTACKS = {
    "read": '''
def attack():
    leaked = []
    for path in {secrets!r}:
        try:
            with open(path, "rb") as f:
                leaked.append((path, f.read(300)))
        except OSError as e:
            print("DENIED", path, type(e).__name__)
    for path, data in leaked:
        print("LE" "AK", path, data)  # split, so that the source shown in a traceback is no match
    if not leaked:
        raise PermissionError("nothing could be read")
''',
    "write": '''
import os


def attack():
    done = []
    for path in {targets!r}:
        for how in ("append", "replace", "delete"):
            try:
                if how == "append":
                    with open(path, "ab") as f:
                        f.write(b"PWNED")
                elif how == "replace":
                    with open(path + ".new", "wb") as f:
                        f.write(b"PWNED")
                    os.replace(path + ".new", path)
                else:
                    os.remove(path)
                done.append((how, path))
            except OSError as e:
                print("DENIED", how, path, type(e).__name__)
    with open({new_file!r}, "wb") as f:  # a new file in the course folder
        f.write(b"PWNED")
    done.append(("create", {new_file!r}))
    print("WRO" "TE", done)
''',
    "connect": '''
import socket


def attack():
    s = socket.create_connection(("127.0.0.1", {port}), timeout=3)
    s.sendall(b"PWNED")
    print("CONNEC" "TED")
''',
    "fork": '''
import os


def attack():
    while True:
        os.fork()
''',
    "allocate": '''
def attack():
    block = bytearray(10 * 2**30)
    block[::4096] = b"x" * len(block[::4096])
''',
    "sleep": '''
import signal
import time


def attack():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # deaf to the grader's interrupt
    while True:
        time.sleep(1000)
''',
    "print": '''
printed = False


def attack():
    global printed
    if not printed:  # once: 100 MB
        printed = True
        line = "x" * 999_999
        for _ in range(100):
            print(line)
''',
}
# student -> {graded function: attack}; each function's test is the part it breaks
STUDENTS = {
    "honest": {},
    "snoop": {"count_ngrams": "read", "mle_prob": "write", "add_k_prob": "connect"},
    "glutton": {"perplexity": "allocate", "sample_next": "print"},
    "forker": {"count_ngrams": "fork"},
    "sleeper": {"perplexity": "sleep"},
}


def expected(student):
    return FULL | {f"test_{name}": 0 for name in STUDENTS[student]}


def with_attack(source, name, attack, fill):
    """The solution cell of ``name`` with ``attack_<kind>()`` called on entry."""
    code = ATTACKS[attack].format(**fill).replace("attack(", f"attack_{attack}(")
    code = code.replace("printed", f"printed_{attack}")
    header = re.search(rf"^def {name}\(.*\):\n(    \"\"\".*\"\"\"\n)?", source, re.M)
    assert header, source
    return code + "\n\n" + source[:header.end()] + f"    attack_{attack}()\n" + source[header.end():]


def printed(outputs_json):
    """What a cell printed (its streams, and what the grader kept of them for the
    instructor), without the source quoted in tracebacks."""
    out = []
    for o in json.loads(outputs_json):
        if o["output_type"] == "stream":
            out.append("".join(o["text"]))
        elif o["output_type"] == "display_data" and o.get("metadata", {}).get(PRINTED):
            out.append("".join(o["data"]["text/plain"]))
    return "".join(out)


def solution_cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def tree_hashes(*folders):
    """sha256 of every file under the folders (and the folders' listings)."""
    out = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


class Listener:
    """A TCP server of the instructor's on the loopback, counting who reaches it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    reason = check_sandbox()
    if reason:
        pytest.fail(f"the grading sandbox does not work here: {reason}")
    tmp = tmp_path_factory.mktemp("sandbox")
    course = make_course(tmp, A)
    home = tmp / "home"  # the instructor's HOME while grading
    home.mkdir()
    canary = f"CANARY-{uuid.uuid4()}"
    (home / "secret.txt").write_text(canary)
    source = ROOT / "solutions" / A / f"{A}.ipynb"
    for student in STUDENTS:
        folder = course / "submitted" / student / A
        folder.mkdir(parents=True)
        shutil.copy(source, folder / f"{A}.ipynb")
    other = course / "submitted" / "honest" / A / f"{A}.ipynb"
    (other.parent / "notes.txt").write_text(canary)  # handed in beside the honest student's notebook
    secrets = [str(course / "solutions" / A / f"{A}.ipynb"), str(course / "gradebook.db"), str(other),
               str(other.parent / "notes.txt"), str(course / "autograded" / "honest" / A / f"{A}.ipynb"),
               str(home / "secret.txt"), str(ROOT / "solutions" / A / f"{A}.ipynb"),
               str(course / "nbgrader_config.py"), f"../../../solutions/{A}/{A}.ipynb", "/etc/shadow"]
    targets = [str(course / "gradebook.db"), str(course / "solutions" / A / f"{A}.ipynb"), str(other),
               str(home / "secret.txt"), str(course / "nbgrader_config.py")]
    listener = Listener()
    fill = {"secrets": secrets, "targets": targets, "port": listener.port, "new_file": str(course / "pwned.txt")}
    for student, attacks in STUDENTS.items():
        path = course / "submitted" / student / A / f"{A}.ipynb"
        nb = nbformat.read(path, as_version=4)
        for name, attack in attacks.items():
            cell = solution_cell(nb, name)
            cell.source = with_attack(cell.source, name, attack, fill)
        nbformat.write(nb, path)

    protected = [course / "solutions", course / "submitted", course / "exercises", home]
    before = tree_hashes(*protected) | tree_hashes(course / "nbgrader_config.py")
    before_listing = sorted(os.listdir(course))
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        tests_before = {g: gb.find_source_cell(g, A, A).source for g in POINTS}

    env = dict(os.environ, HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", OMP_NUM_THREADS="1")
    env.pop("COURSE_FAST", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "course_lib.grading.autograde", A, "--jobs", "2",
                           "--cell-timeout", str(CELL_TIMEOUT), "--wall-seconds", "240"],
                          cwd=course, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - start
    listener.close()
    after = tree_hashes(*protected) | tree_hashes(course / "nbgrader_config.py")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: {g: gb.find_grade(g, A, A, s).score for g in POINTS} for s in STUDENTS}
        rows = [(s.student.id, len(s.notebooks[0].grades)) for s in gb.find_assignment(A).submissions]
        tests_after = {g: gb.find_source_cell(g, A, A).source for g in POINTS}
    outputs = {}
    for student in STUDENTS:
        nb = json.loads((course / "autograded" / student / A / f"{A}.ipynb").read_text())
        outputs[student] = {c["metadata"].get("nbgrader", {}).get("grade_id"): json.dumps(c.get("outputs", []))
                            for c in nb["cells"]}
    return dict(course=course, proc=proc, log=proc.stdout + proc.stderr, before=before, after=after, scores=scores,
                rows=rows, outputs=outputs, listener=listener, canary=canary, secrets=secrets, seconds=seconds,
                before_listing=before_listing, after_listing=sorted(os.listdir(course)),
                tests_before=tests_before, tests_after=tests_after)


def test_the_batch_completes_in_the_sandbox(graded):
    assert graded["proc"].returncode == 0, graded["log"][-4000:]
    assert "each in a sandbox" in graded["proc"].stdout, graded["log"][-2000:]


@pytest.mark.parametrize("student", list(STUDENTS))
def test_each_scores_0_on_exactly_the_parts_it_breaks(graded, student):
    assert graded["scores"][student] == expected(student), (
        f"{student}: {graded['scores'][student]}\n{json.dumps(graded['outputs'][student])[:4000]}")


def test_one_graded_submission_per_student(graded):
    assert sorted(sid for sid, _ in graded["rows"]) == sorted(STUDENTS)
    assert all(n == len(_GRADED) for _, n in graded["rows"]), graded["rows"]


def test_nothing_on_the_instructors_side_changed(graded):
    assert graded["before"], "no files were hashed"
    changed = {p for p in graded["before"].keys() | graded["after"].keys()
               if graded["before"].get(p) != graded["after"].get(p)}
    assert not changed, changed
    assert graded["after_listing"] == sorted(set(graded["before_listing"]) | {"autograded"}), graded["after_listing"]
    assert graded["tests_after"] == graded["tests_before"]  # the tests kept in the gradebook


def test_nothing_secret_was_read(graded):
    text = "\n".join(json.dumps(o) for o in graded["outputs"].values())
    for sign in (graded["canary"], "SQLite format", '\\"schema_version\\": 3', "LEAK", "root:"):
        assert sign not in text, sign
    out = printed(graded["outputs"]["snoop"]["test_count_ngrams"])
    assert all(f"DENIED {path} " in out for path in graded["secrets"]), out[:3000]  # every read tried, refused


def test_nothing_was_written_and_nothing_connected(graded):
    out = {name: printed(text) for name, text in graded["outputs"]["snoop"].items()}
    assert "WROTE" not in out["test_mle_prob"] and "DENIED" in out["test_mle_prob"], out["test_mle_prob"][:3000]
    assert not (graded["course"] / "pwned.txt").exists()
    assert graded["listener"].connections == 0
    assert "CONNECTED" not in out["test_add_k_prob"]
    assert "ConnectionRefusedError" in graded["outputs"]["snoop"]["test_add_k_prob"]


def test_limits_are_what_stopped_them(graded):
    out = graded["outputs"]
    assert "MemoryError" in out["glutton"]["test_perplexity"]
    assert "output cut" in out["glutton"]["test_sample_next"]
    assert len(out["glutton"]["test_sample_next"]) < 1_000_000
    # the fork bomb meets the process limit; the kernel fails, hangs until the cell timeout, or dies
    assert re.search("BlockingIOError|CellTimeoutError|SandboxError", out["forker"]["test_count_ngrams"])
    assert "SandboxError" in out["sleeper"]["test_perplexity"]  # deaf to interrupts: the kernel was replaced


def test_the_batch_took_bounded_time(graded):
    # the sleeper costs one cell timeout, the interrupt's grace and a new kernel; nothing waits for a limit longer
    assert graded["seconds"] < 300, graded["seconds"]
