"""The sandbox that students' notebooks run in when they are graded (instructor side).

Grading runs code that nobody has vetted. Here each submission runs inside a sandbox
built with bubblewrap (``bwrap``, the Debian package ``bubblewrap``), and the trusted
side only sends the notebook in and takes cell outputs back:

    trusted grader (nbgrader, the gradebook)        sandbox (bwrap)
    ----------------------------------------        -----------------------------------
    notebook with the tests put back  --stdin-->    course_lib.grading.sandbox_runner
                                                      a kernel, run cell by cell (nbclient)
    checks and caps every output  <--stdout--        one JSON line per cell, then "done"
    writes the grades (SaveAutoGrades)

Kernel and client both run inside, so no socket crosses the boundary: the sandbox has
a network namespace of its own with only a loopback, where the kernel and its client
talk. What the sandbox sees (``bwrap_command``):

- the machine's root read-only; fresh /dev and /proc (its own process namespace);
- an empty private /tmp (a tmpfs of ``Limits.disk_mb``) holding the working folder
  /tmp/work and HOME /tmp/home, the only places it can write;
- empty folders over the course folder (solutions/, submitted/, autograded/, the
  gradebook), the folder of the gradebook, the checkout course_lib was installed from,
  ``course_lib/grading/refs`` (how the grader computes expected values),
  the instructor's HOME, /home, /root, /run, /srv, /mnt, /media, /opt, /var/tmp and any
  folders named in ``hidden``; then, read-only, just what Python needs back: the
  interpreter, the virtual environment and the course_lib package.

Limits (``Limits``): address space, CPU time, processes (threads count), file size and
open files as resource limits set inside before any student code runs; a wall-clock
limit for the whole notebook, kept outside; the outputs brought back are capped per
cell and in all. The process limit needs a user of the sandbox's own: run by a normal
user, bwrap makes a user namespace, where the count starts at zero for each sandbox;
run by root, bwrap runs privileged and the runner drops to an unused uid (``UID_BASE``
plus the grader's pid) before anything else, with no capabilities and no_new_privs.

Scope: the sandbox protects the instructor's machine, the gradebook and the other
students. A submission can still lie about its own results (its code shares a kernel
with the tests, as with nbgrader alone); memory is bounded per process, so the worst
case is ``processes`` times ``memory_mb`` (run the grader in a cgroup, e.g.
``systemd-run --scope -p MemoryMax=8G``, for a hard total).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "RunResult", "SandboxUnavailable", "bwrap_command", "check_sandbox", "run_notebook"]

WORKDIR = "/tmp/work"  # the submission's working folder, inside the sandbox
HOMEDIR = "/tmp/home"
UID_BASE = 2_000_000_000  # sandboxes started by root run as UID_BASE + the grader's pid (no such user exists)
ALWAYS_HIDDEN = ("/home", "/root", "/run", "/srv", "/mnt", "/media", "/opt", "/var/tmp")
INSTALL_HINT = ("install bubblewrap (Debian and Ubuntu: `apt-get install bubblewrap`; Fedora: "
                "`dnf install bubblewrap`) on a Linux machine")


@dataclass(frozen=True)
class Limits:
    """What one submission may use. The defaults leave every exercise of the course
    (seconds of CPU, well under a GB) far inside."""

    memory_mb: int = 2048  # address space of each process (RLIMIT_AS)
    cpu_seconds: int = 300  # CPU time of each process (RLIMIT_CPU)
    processes: int = 64  # processes and threads in the sandbox (RLIMIT_NPROC in its own user)
    file_mb: int = 64  # largest file a process may write (RLIMIT_FSIZE)
    disk_mb: int = 256  # the private /tmp, working folder included (a tmpfs)
    open_files: int = 256  # open files per process (RLIMIT_NOFILE)
    cell_output_kb: int = 256  # outputs kept per cell; the rest is cut with a note
    output_mb: int = 16  # outputs brought back in all; past it the sandbox is stopped
    wall_seconds: int = 600  # the whole notebook, kernel start included

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"Limits.{field.name} should be a positive int, got {value!r}")


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be used here; the message says why and what to do."""


@dataclass
class RunResult:
    """What came back from one run: the outputs of each cell that finished, by index."""

    cells: dict  # cell index -> {"execution_count": int | None, "outputs": [output dicts]}
    stopped: str | None  # why the run ended before the end of the notebook; None if it finished
    returncode: int | None
    seconds: float
    log: str  # the end of the runner's stderr, for the instructor


# --------------------------------------------------------------------------- set-up


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def needed_paths() -> list[Path]:
    """What the runner must see read-only: the interpreter, the environment, course_lib."""
    import course_lib

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(course_lib.__file__)}
    paths.update(site.getsitepackages())
    return sorted({Path(p).resolve() for p in paths if p and os.path.isdir(p)})


def hidden_paths(course_root: str | os.PathLike | None, extra=()) -> list[Path]:
    """Folders the sandbox sees empty: the course, the gradebook's folder, the checkout
    course_lib came from, HOME, the usual homes of private files, and ``extra``."""
    import course_lib

    paths = [Path(p) for p in ALWAYS_HIDDEN]
    if course_root is not None:
        paths.append(Path(course_root))
    checkout = Path(course_lib.__file__).resolve().parent.parent
    if not any(_under(checkout, Path(p).resolve()) for p in site.getsitepackages()):
        paths.append(checkout)  # an editable install: the repository, solutions/ included
    home = os.environ.get("HOME")
    if home:
        paths.append(Path(home))
    paths.append(Path(course_lib.__file__).resolve().parent / "grading" / "refs")  # how expected values are made
    paths.extend(Path(p) for p in extra)
    resolved = []
    for p in paths:
        p = Path(os.path.abspath(p)).resolve()
        if p != Path("/") and p.is_dir() and p not in resolved:
            resolved.append(p)
    return resolved


def _mount_args(hidden: list[Path], needed: list[Path], limits: Limits) -> list[str]:
    """tmpfs over each hidden folder, then the needed ones bound back, shallowest first,
    so that a hidden folder inside a needed one is hidden again after it."""
    tmp = Path("/tmp")
    hidden = set(hidden) | {tmp}
    needed = {p for p in needed if p not in hidden and any(_under(p, h) for h in hidden)}
    entries = sorted(hidden | needed, key=lambda p: (len(p.parts), str(p)))
    args, empty, mounted = [], [], []
    for p in entries:
        enclosing = [q for q in entries if q != p and _under(p, q)]
        nearest = max(enclosing, key=lambda q: len(q.parts), default=None)
        if p in hidden:
            if nearest is not None and nearest in hidden:
                continue  # already inside an empty folder
            if p == tmp:
                args += ["--perms", "1777", "--size", str(limits.disk_mb << 20), "--tmpfs", str(p)]
            else:
                args += ["--tmpfs", str(p)]
                empty.append(p)
        else:
            # the mount it lands in: if that is an empty folder, the folders down to it are
            # made readable (bwrap would make them 0700, closed to the sandbox's user); a
            # hidden folder skipped inside another (the course inside /tmp) counts as empty
            base = max((q for q in mounted if _under(p, q)), key=lambda q: len(q.parts), default=None)
            if base is not None and base in hidden:
                for depth in range(len(base.parts) + 1, len(p.parts)):
                    args += ["--perms", "0755", "--dir", str(Path(*p.parts[:depth]))]
            args += ["--ro-bind", str(p), str(p)]
        mounted.append(p)
    for p in empty:  # the empty folders read-only too, once what goes inside them is there
        args += ["--remount-ro", str(p)]
    return args


def _env(home: str = HOMEDIR, tmp: str = "/tmp") -> dict[str, str]:
    bin_dir = os.path.dirname(sys.executable)
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": tmp,
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
           "MPLCONFIGDIR": f"{home}/.matplotlib", "JUPYTER_PLATFORM_DIRS": "1",
           "JUPYTER_RUNTIME_DIR": f"{home}/runtime"}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NBGRADER_EXECUTION", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _as_root() -> bool:
    return os.geteuid() == 0


def bwrap_command(limits: Limits, course_root=None, hidden=(), runner_args=()) -> list[str]:
    """The bwrap command line that starts the runner (see the module docstring)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try"]
    runner = [sys.executable, "-I", "-m", "course_lib.grading.sandbox_runner"]
    if _as_root():  # privileged bwrap; the runner drops to an unused uid at once
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        runner += ["--uid", str(UID_BASE + os.getpid())]
    else:  # a user namespace of its own: the process count starts at zero there
        args += ["--unshare-user", "--disable-userns"]
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    args += _mount_args(hidden_paths(course_root, hidden), needed_paths(), limits)
    args += ["--perms", "1777", "--size", str(min(limits.disk_mb, 64) << 20), "--tmpfs", "/dev/shm"]
    args += ["--clearenv"]
    for name, value in _env().items():
        args += ["--setenv", name, value]
    args += ["--chdir", "/tmp", "--"]
    return args + runner + list(runner_args)


_probe: dict[str, str | None] = {}


def _probe_key() -> str:
    return f"{os.geteuid()}:{sys.executable}:{shutil.which('bwrap')}"


def remember_check(reason: str | None) -> None:
    """Take the result of ``check_sandbox`` from the process that ran it."""
    _probe[_probe_key()] = reason


def check_sandbox() -> str | None:
    """None when the sandbox works on this machine, else why not (checked once per
    process, by starting the runner in a sandbox)."""
    key = _probe_key()
    if key not in _probe:
        try:
            cmd = bwrap_command(Limits(), runner_args=["--probe"])
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
            _probe[key] = None if proc.returncode == 0 else (
                f"bubblewrap is installed but could not start a sandbox here (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-800:]}. User namespaces may be disabled "
                "(sysctl kernel.unprivileged_userns_clone, or AppArmor's restriction on Ubuntu)")
        except SandboxUnavailable as exc:
            _probe[key] = str(exc)
        except (OSError, subprocess.SubprocessError) as exc:
            _probe[key] = f"bubblewrap failed to start: {exc}"
    return _probe[key]


# --------------------------------------------------------------------------- outputs

_MIME = re.compile(r"^[a-zA-Z0-9\-+.]+/[a-zA-Z0-9\-+.]+$")


def _text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return "".join(value)
    return None


def clean_output(out, max_chars: int) -> dict | None:
    """One output from the sandbox rebuilt from the fields nbformat allows, with their
    types checked and text cut at ``max_chars``; None if it is not a valid output."""
    if not isinstance(out, dict):
        return None

    def cut(s: str) -> str:
        return s if len(s) <= max_chars else s[:max_chars] + f"\n[... cut at {max_chars} characters]\n"

    kind = out.get("output_type")
    if kind == "stream":
        text = _text(out.get("text"))
        if out.get("name") in ("stdout", "stderr") and text is not None:
            return {"output_type": "stream", "name": out["name"], "text": cut(text)}
    elif kind == "error":
        ename, evalue, tb = out.get("ename"), out.get("evalue"), out.get("traceback")
        if isinstance(ename, str) and isinstance(evalue, str) and isinstance(tb, list) and _text(tb) is not None:
            kept, budget = [], max_chars
            for line in tb:
                if budget <= 0:
                    kept.append("[... traceback cut]")
                    break
                kept.append(cut(line))
                budget -= len(line)
            return {"output_type": "error", "ename": cut(ename), "evalue": cut(evalue), "traceback": kept}
    elif kind in ("display_data", "execute_result") and isinstance(out.get("data"), dict):
        data = {k: cut(_text(v)) for k, v in out["data"].items()
                if isinstance(k, str) and _MIME.match(k) and _text(v) is not None}
        clean = {"output_type": kind, "data": data, "metadata": {}}
        if kind == "execute_result":
            count = out.get("execution_count")
            clean["execution_count"] = count if type(count) is int else None
        return clean
    return None


# --------------------------------------------------------------------------- running


def _kill(proc: subprocess.Popen, extra_pid: int | None = None) -> None:
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill,
                 lambda: extra_pid and os.kill(extra_pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass


def run_notebook(nb: dict, settings: dict, limits: Limits, *, files: dict[str, bytes] | None = None,
                 course_root=None, hidden=(), sandboxed: bool = True) -> RunResult:
    """Run ``nb`` (a notebook as a dict, tests included) cell by cell in a fresh sandbox
    and return what came back. ``settings`` go to the runner (cell timeout and the
    like); ``files`` are written into the working folder first. With ``sandboxed=False``
    the runner runs as a plain process (same limits, fewer of them enforced)."""
    import base64
    import tempfile

    if sandboxed:
        reason = check_sandbox()
        if reason:
            raise SandboxUnavailable(reason)
        cmd, workdir, scratch = bwrap_command(limits, course_root, hidden), WORKDIR, None
    else:
        scratch = tempfile.mkdtemp(prefix="course-grading-")
        workdir = os.path.join(scratch, "work")
        cmd = [sys.executable, "-I", "-m", "course_lib.grading.sandbox_runner"]
    payload = json.dumps({
        "notebook": nb,
        "files": {name: base64.b64encode(data).decode() for name, data in (files or {}).items()},
        "settings": dict(settings, workdir=workdir, home=HOMEDIR if sandboxed else os.path.join(scratch, "home"),
                         sandboxed=sandboxed, limits=dataclasses.asdict(limits)),
    }).encode()

    start = time.monotonic()
    env = None if sandboxed else _env(os.path.join(scratch, "home"), scratch)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env, cwd=scratch or "/")
    cells: dict[int, dict] = {}
    state = {"stopped": None, "done": False, "kernel_pid": None}
    log = bytearray()
    line_cap = 8 * (limits.cell_output_kb << 10) + (64 << 10)
    total_cap = limits.output_mb << 20

    def feed():
        try:
            proc.stdin.write(payload)
            proc.stdin.close()
        except OSError:
            pass

    def handle(line: bytes):
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            return
        if not isinstance(event, dict):
            return
        if event.get("event") == "done":
            state["done"] = True
        elif event.get("event") == "kernel" and type(event.get("pid")) is int:
            state["kernel_pid"] = event["pid"]
        elif event.get("event") == "cell":
            index, outputs = event.get("index"), event.get("outputs")
            if type(index) is not int or index in cells or not isinstance(outputs, list):
                return
            max_chars = limits.cell_output_kb << 10
            clean = [o for o in (clean_output(o, max_chars) for o in outputs) if o is not None]
            count = event.get("execution_count")
            cells[index] = {"execution_count": count if type(count) is int else None, "outputs": clean}

    def read_events():
        total, line, overlong = 0, bytearray(), False
        while chunk := proc.stdout.read1(1 << 16):
            total += len(chunk)
            if total > total_cap:
                state["stopped"] = state["stopped"] or f"the notebook's outputs passed {limits.output_mb} MB"
                _kill(proc, None if sandboxed else state["kernel_pid"])
                break
            while chunk:
                end = chunk.find(b"\n")
                piece, chunk = (chunk, b"") if end < 0 else (chunk[:end], chunk[end + 1:])
                if not overlong:
                    line += piece
                    overlong = len(line) > line_cap
                if end >= 0:
                    if not overlong:
                        handle(bytes(line))
                    line, overlong = bytearray(), False

    def read_log():
        while chunk := proc.stderr.read1(1 << 16):
            log.extend(chunk)
            del log[:-20000]

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, read_events, read_log)]
    for t in threads:
        t.start()
    try:
        proc.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        state["stopped"] = state["stopped"] or f"the notebook ran past its time limit of {limits.wall_seconds} s"
        _kill(proc, None if sandboxed else state["kernel_pid"])
        proc.wait()
    finally:
        if not sandboxed and state["kernel_pid"]:
            _kill(proc, state["kernel_pid"])
    for t in threads:
        t.join(timeout=10)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    stopped = state["stopped"]
    if stopped is None and not state["done"]:
        stopped = f"the sandbox stopped before the end of the notebook (exit status {proc.returncode})"
    return RunResult(cells=cells, stopped=stopped, returncode=proc.returncode,
                     seconds=time.monotonic() - start, log=log.decode(errors="replace"))
