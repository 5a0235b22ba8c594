"""course_lib.grading.sandbox and the pieces of course_lib.grading.autograde, one at a time: the mounts,
the outputs taken back, the limits enforced inside a real sandbox, the gradebook lock
and the feedback filter. The graded classes are in test_sandbox_adversarial.py and
test_sandbox_feedback.py.

Where bubblewrap is missing the tests that need it fail and say why (never skipped).
"""

import fcntl
import os
import socket
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from course_lib.grading.autograde import (GradebookLock, HideHiddenTests, find_students, gradebook_folder,
                                  handed_in_files)
from course_lib.grading.sandbox import Limits, _mount_args, check_sandbox, clean_output, run_notebook

SETTINGS = {"timeout": 20, "interrupt_on_timeout": True, "iopub_timeout": 4, "startup_timeout": 60,
            "error_on_timeout": {"ename": "CellTimeoutError", "evalue": "", "traceback": ["timeout"]}}


def run(cells, **limits):
    reason = check_sandbox()
    if reason:
        pytest.fail(f"the grading sandbox does not work here: {reason}")
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    return run_notebook(nb, SETTINGS, Limits(**limits))


def printed(result, index):
    return "".join(o.get("text", "") for o in result.cells[index]["outputs"])


# --------------------------------------------------------------------------- mounts


def test_hidden_folders_are_emptied_and_what_python_needs_comes_back():
    args = _mount_args([Path("/srv/course"), Path("/home")], [Path("/home/prof/.venv"), Path("/usr/lib")], Limits())
    text = " ".join(args)
    assert "--tmpfs /home" in text and "--tmpfs /srv/course" in text
    assert "--perms 1777 --size 268435456 --tmpfs /tmp" in text  # always a private, bounded /tmp
    # the venv inside the hidden /home comes back read-only, its parent folder made readable
    assert text.index("--tmpfs /home") < text.index("--perms 0755 --dir /home/prof") < text.index(
        "--ro-bind /home/prof/.venv /home/prof/.venv")
    assert "/usr/lib" not in text  # visible anyway (read-only root): no mount
    assert "--remount-ro /home" in text and "--remount-ro /srv/course" in text
    assert "--remount-ro /tmp" not in text


def test_a_hidden_folder_inside_a_needed_one_is_hidden_again():
    # the course lives inside the folder of the Python install, all under a hidden /opt
    args = " ".join(_mount_args([Path("/opt"), Path("/opt/py/course")], [Path("/opt/py")], Limits()))
    assert args.index("--tmpfs /opt ") < args.index("--ro-bind /opt/py /opt/py") < args.index("--tmpfs /opt/py/course")


def test_a_course_cloned_under_tmp_keeps_its_venv_reachable():
    # a clone in /tmp/ci: the course is hidden inside the private /tmp, its .venv comes back,
    # and the folder between them must exist and be readable by the sandbox's user
    args = " ".join(_mount_args([Path("/tmp/ci")], [Path("/tmp/ci/.venv"), Path("/tmp/ci/course_lib")], Limits()))
    assert "--tmpfs /tmp/ci " not in args  # already empty inside the private /tmp
    assert args.index("--tmpfs /tmp") < args.index("--perms 0755 --dir /tmp/ci ") < args.index(
        "--ro-bind /tmp/ci/.venv /tmp/ci/.venv")
    assert "--ro-bind /tmp/ci/course_lib /tmp/ci/course_lib" in args


def test_a_needed_folder_never_unhides_a_hidden_one_of_the_same_name():
    args = _mount_args([Path("/srv/course")], [Path("/srv/course")], Limits())
    assert "--ro-bind" not in args and "--tmpfs" in args


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("bad", [
    None, "text", {"output_type": "stream", "name": "stdin", "text": "x"},
    {"output_type": "stream", "name": "stdout", "text": 3},
    {"output_type": "error", "ename": "E", "evalue": "v", "traceback": "not a list"},
    {"output_type": "unknown"},
])
def test_malformed_outputs_are_dropped(bad):
    assert clean_output(bad, 100) is None


def test_outputs_are_rebuilt_from_the_allowed_fields_and_cut():
    out = clean_output({"output_type": "stream", "name": "stdout", "text": ["ab", "cd" * 100], "extra": 1}, 50)
    assert set(out) == {"output_type", "name", "text"} and out["text"].startswith("abcd") and "cut at 50" in out["text"]
    out = clean_output({"output_type": "execute_result", "execution_count": True, "metadata": {"x": 1},
                        "data": {"text/plain": "1", "bad mime": "x", "application/json": {"a": 1}}}, 50)
    assert out == {"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {},
                   "execution_count": None}
    nb = new_notebook(cells=[new_code_cell("x", outputs=[nbformat.from_dict(out), new_output("stream", text="y")])])
    nbformat.validate(nb)


def test_limits_are_positive_ints():
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=0)
    with pytest.raises(ValueError, match="wall_seconds"):
        Limits(wall_seconds=1.5)


# --------------------------------------------------------------------------- inside a sandbox


def test_inside_the_sandbox(tmp_path, monkeypatch):
    home = tmp_path / "home"  # the instructor's HOME, with a file in it
    home.mkdir()
    (home / "private.txt").write_text("secret")
    monkeypatch.setenv("HOME", str(home))
    repo = Path(__file__).resolve().parents[1]
    result = run([
        "import os, socket\nprint(os.getuid(), socket.if_nameindex(), "
        "sorted(f for f in os.listdir('/tmp') if not f.endswith('.json')))",  # but the kernel's connection file
        f"print([os.path.exists(p) for p in ({str(home / 'private.txt')!r}, {str(repo / 'README.md')!r}, "
        f"{str(repo / 'solutions')!r}, {str(repo / 'course_lib' / 'grading' / 'sandbox.py')!r}, "
            f"{str(repo / 'course_lib' / 'grading' / 'refs' / 'ch01.py')!r})])",
        "open('/usr/pwned-by-a-test', 'w')",
        "x = bytearray(4 * 2**30)",
        "n = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            import time; time.sleep(60)\n"
        "        n += 1\nexcept BlockingIOError:\n    print('forked', n)",
        "print(len([p for p in os.listdir('/proc') if p.isdigit()]))",
        "open('big', 'wb').write(b'x' * 2 * 2**20)",
    ], memory_mb=1024, processes=48, file_mb=1)
    assert result.stopped is None, result.log[-2000:]
    uid, rest = printed(result, 0).split(" ", 1)
    assert int(uid) != 0  # never root
    # a network of its own, a loopback only; a private /tmp (holding, for a checkout under /tmp,
    # the empty folder on the way to its .venv and course_lib)
    on_the_way = [repo.parts[2]] if repo.parts[:2] == ("/", "tmp") else []
    assert rest == f"[(1, 'lo')] {sorted(['home', 'work'] + on_the_way)}\n"
    # HOME is empty, the course checkout too, but for the library the tests import
    assert printed(result, 1) == "[False, False, False, True, False]\n", result.cells[1]  # refs/ hidden too
    assert "Read-only file system" in str(result.cells[2]["outputs"]) or "Permission denied" in str(
        result.cells[2]["outputs"])
    assert not Path("/usr/pwned-by-a-test").exists()
    assert "MemoryError" in str(result.cells[3]["outputs"])
    forked = int(printed(result, 4).split()[1])
    assert 20 < forked < 48, forked  # the process limit, the kernel's threads included
    assert int(printed(result, 5)) <= 4, printed(result, 5)  # the children were killed after the cell
    assert "File too large" in str(result.cells[6]["outputs"])


def test_the_wall_clock_stops_the_notebook_and_the_rest_is_reported():
    result = run(["import time", "time.sleep(3)", "time.sleep(3)", "time.sleep(3)", "print('never')"],
                 wall_seconds=8)
    assert "time limit of 8 s" in result.stopped
    assert 1 in result.cells and 4 not in result.cells
    assert result.seconds < 20


def test_outputs_past_the_total_cap_stop_the_notebook():
    result = run(["print('x' * 600_000)"] * 4, output_mb=1, cell_output_kb=1024)
    assert "outputs passed 1 MB" in result.stopped, result.stopped
    assert len(result.cells) < 4


def test_a_cell_that_kills_the_kernel_costs_only_itself():
    result = run(["import os\nx = 41", "os._exit(1)", "print(x + 1)"])
    assert result.stopped is None
    assert "the kernel died" in str(result.cells[1]["outputs"])
    assert printed(result, 2) == "42\n"  # a new kernel replayed the first cell


def test_the_cpu_limit_kills_a_busy_kernel_and_grading_goes_on():
    result = run(["x = 41", "while True:\n    pass", "print(x + 1)"], cpu_seconds=5)
    assert result.stopped is None, result.log[-2000:]
    assert "the kernel died" in str(result.cells[1]["outputs"])  # SIGXCPU, well before the 20 s cell timeout
    assert printed(result, 2) == "42\n"


def test_files_handed_in_go_in_but_not_links_nor_notebooks(tmp_path):
    submitted, graded = tmp_path / "submitted", tmp_path / "autograded"
    secret = tmp_path / "secret.txt"
    secret.write_text("the instructor's")
    for folder in (submitted, graded):
        (folder / "data").mkdir(parents=True)
        (folder / "ch01.ipynb").write_text("{}")
        (folder / "data" / "train.txt").write_text("to be")
    (submitted / "notes.txt").symlink_to(secret)  # nbgrader copies what a link points to...
    (graded / "notes.txt").write_text(secret.read_text())
    (submitted / "linked").symlink_to(tmp_path)
    (graded / "linked").mkdir()
    (graded / "linked" / "secret.txt").write_text(secret.read_text())
    (graded / "from_the_instructor.csv").write_text("a,b")  # copied from solutions/, not handed in
    files = handed_in_files(str(graded), str(submitted))
    assert files == {"data/train.txt": b"to be", "from_the_instructor.csv": b"a,b"}


def test_submissions_with_links_or_pattern_ids_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for student in ("alice", "bob", "eve", "mallory", "a[1]"):
        Path("submitted", student, "ch01").mkdir(parents=True)
        Path("submitted", student, "ch01", "ch01.ipynb").write_text("{}")
    Path("submitted/eve/ch01/ch01.ipynb").unlink()
    Path("submitted/eve/ch01/ch01.ipynb").symlink_to(tmp_path / "solutions.ipynb")
    Path("submitted/mallory/ch01/data").symlink_to(Path.home())
    students, refused = find_students("ch01", None)
    assert students == ["alice", "bob"]
    assert sorted(refused) == ["a[1]", "eve", "mallory"] and "symbolic link" in refused["eve"]
    assert find_students("ch01", ["bob", "eve"]) == (["bob"], {"eve": refused["eve"]})


# --------------------------------------------------------------------------- gradebook lock


def test_the_gradebook_lock_is_let_go_while_a_notebook_runs(tmp_path):
    mine, other = GradebookLock(tmp_path), os.open(tmp_path, os.O_RDONLY)

    def other_can_take_it():
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(other, fcntl.LOCK_UN)
        return True

    assert other_can_take_it()
    with mine.hold():
        assert not other_can_take_it()
        with GradebookLock.let_go():
            assert other_can_take_it()
        assert not other_can_take_it()
    assert other_can_take_it() and GradebookLock.held is None
    os.close(other)
    assert list(tmp_path.iterdir()) == []  # no lock file is left behind


def test_the_lock_is_on_the_gradebooks_folder():
    assert gradebook_folder("sqlite:///gradebook.db", "/c") == "/c"
    assert gradebook_folder("sqlite:////data/grades/gb.db", "/c") == "/data/grades"
    assert gradebook_folder("postgresql://host/db", "/c") == "/c"


# --------------------------------------------------------------------------- feedback filter

TEST_CELL = """shared = compute()
assert shared == 1, "visible check"
### BEGIN HIDDEN TESTS
assert secret_value(12345) == 6, "hidden check"
### END HIDDEN TESTS"""


def feedback_of(outputs, other_outputs=()):
    nb = new_notebook(cells=[
        new_code_cell("def compute():\n    return 1\nshared = compute()", outputs=list(other_outputs)),
        new_code_cell(TEST_CELL, outputs=list(outputs), execution_count=7,
                      metadata={"nbgrader": {"grade": True, "solution": False, "grade_id": "t", "points": 1,
                                             "schema_version": 3}}),
    ])
    nb, _ = HideHiddenTests().preprocess(nb, {})
    return nb


def error(line):
    return new_output("error", ename="AssertionError", evalue="hidden check" if line == 4 else "visible check",
                      traceback=[f"Cell In[7], line {line}", f"----> {line} {TEST_CELL.splitlines()[line - 1]}"])


def test_the_hidden_region_is_not_shown():
    nb = feedback_of([])
    assert "secret_value" not in nb.cells[1].source
    assert nb.cells[1].source.splitlines() == [*TEST_CELL.splitlines()[:2],
                                               "# hidden tests ran here; they are not shown"]


def test_a_hidden_failure_says_only_that():
    out = feedback_of([error(4)]).cells[1].outputs[0]
    assert out.traceback == ["A hidden test failed (AssertionError)."] and out.evalue == ""


def test_a_visible_failure_keeps_its_message_without_source():
    out = feedback_of([error(2)]).cells[1].outputs[0]
    assert out.traceback == ["AssertionError: visible check"]


def test_hidden_lines_printed_anywhere_are_removed_and_shared_lines_kept():
    stream = new_output("stream", text=TEST_CELL + "\nok\n")
    nb = feedback_of([stream, new_output("execute_result", data={"text/plain": "secret_value(12345)"})],
                     other_outputs=[new_output("display_data", data={"text/plain": TEST_CELL})])
    for text in (nb.cells[1].outputs[0].text, nb.cells[0].outputs[0].data["text/plain"]):
        assert "secret_value" not in text and "[a line of a hidden test, not shown]" in text
        assert "shared = compute()" in text  # in a visible cell too: not a secret
    assert len(nb.cells[1].outputs) == 1  # a hidden-test cell keeps its streams and verdict only


def test_no_network_reaches_the_host():
    # a server on the host's loopback: the sandbox has a loopback of its own
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0)
    port = server.getsockname()[1]
    try:
        result = run([f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)"])
        assert "ConnectionRefusedError" in str(result.cells[0]["outputs"])
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
