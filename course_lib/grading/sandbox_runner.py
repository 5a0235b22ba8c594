"""Runs one notebook inside the grading sandbox; started by ``course_lib.grading.sandbox``.

``python -I -m course_lib.grading.sandbox_runner [--uid N] [--probe]``: reads
``{"notebook", "files", "settings"}`` as JSON on stdin and writes one JSON line per
executed cell on stdout (``{"event": "cell", "index", "execution_count", "outputs"}``),
then ``{"event": "done"}``. Nothing here is trusted by the grader: it rebuilds every
output it takes from these lines.

Order of events, before any student code runs: drop to ``--uid`` (when started as root),
no_new_privs, limits (``course_lib.grading.sandbox.Limits``), the protocol moved to a private file
descriptor (the kernel's stdout and stdin are /dev/null), the working folder written.
Then the cells run one by one in a kernel, as nbgrader's Execute runs them (cell
timeout, interrupt, the timeout's error output). Two things go further:

- A cell that kills the kernel (an os._exit, the CPU limit, a crash) or leaves it deaf
  to the interrupt gets an error output; a new kernel replays the cells before it and
  grading goes on from the next cell, so only the parts that cell broke score 0.
- After each cell, processes it left behind (a fork bomb's children) are killed.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ctypes
import json
import os
import resource
import signal
import sys

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
MAX_RESTARTS = 3


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to set
        pass


def drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SystemExit("could not drop privileges")


def set_limits(limits: dict, sandboxed: bool) -> None:
    mb = 1 << 20
    wanted = {resource.RLIMIT_AS: limits["memory_mb"] * mb, resource.RLIMIT_CPU: limits["cpu_seconds"],
              resource.RLIMIT_FSIZE: limits["file_mb"] * mb, resource.RLIMIT_CORE: 0,
              resource.RLIMIT_NOFILE: limits["open_files"]}
    if sandboxed:  # outside a sandbox of its own the count would include all the grader's processes
        wanted[resource.RLIMIT_NPROC] = limits["processes"]
    for which, value in wanted.items():
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):  # e.g. RLIMIT_AS on macOS
            if sandboxed:
                raise


def write_files(workdir: str, files: dict) -> None:
    os.makedirs(workdir, exist_ok=True)
    for name, data in files.items():
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or not all(parts):
            continue
        path = os.path.join(workdir, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))


def kill_strays(keep: set[int]) -> int:
    """Kill every process of this sandbox's process namespace but ``keep``; how many."""
    killed = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in keep:
            try:
                os.kill(int(name), signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    return killed


# Run in the kernel after its children were killed: they stay zombies, and hold the
# process limit, until their parent waits for them.
REAP = """exec('''
import os, time
end = time.monotonic() + 2
while True:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        if time.monotonic() > end:
            break
        time.sleep(0.02)
''', {})"""


def error_output(ename: str, evalue: str) -> dict:
    return {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}


def make_client(nb, settings: dict):
    from nbclient import NotebookClient
    from nbformat import NotebookNode

    cap = settings["limits"]["cell_output_kb"] << 10
    used: dict[int, int] = {}  # output size so far, by cell index

    class Client(NotebookClient):
        """nbclient with outputs capped per cell and nbgrader's handling of an error
        reply that left no error output (a timeout)."""

        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            size = len(str(content.get("text", ""))) + len(str(content.get("data", ""))) + len(
                str(content.get("traceback", "")))
            before = used.get(cell_index, 0)
            used[cell_index] = before + size
            if before + size <= cap:
                return super().output(outs, msg, display_id, cell_index)
            if before <= cap:  # the first output past the cap: keep its start, then a note
                if msg.get("msg_type") == "stream":
                    msg = copy.deepcopy(msg)
                    msg["content"]["text"] = content["text"][: max(0, cap - before)]
                    super().output(outs, msg, display_id, cell_index)
                outs.append(NotebookNode(output_type="stream", name="stderr",
                                         text=f"\n[output cut: more than {cap >> 10} KB in this cell]\n"))
            return None

    def on_cell_executed(cell, cell_index, execute_reply):
        content = execute_reply["content"]
        if content["status"] == "error" and not any(
                o.get("output_type") == "error" and o.get("ename") == content["ename"] for o in cell.outputs):
            cell.outputs.append(NotebookNode(output_type="error", ename=content["ename"],
                                             evalue=content["evalue"], traceback=content["traceback"] or [
                                                 "ERROR: An error occurred while showtraceback was disabled"]))

    return Client(nb, timeout=settings["timeout"], interrupt_on_timeout=settings["interrupt_on_timeout"],
                  error_on_timeout=settings["error_on_timeout"], iopub_timeout=settings["iopub_timeout"],
                  startup_timeout=settings["startup_timeout"], raise_on_iopub_timeout=True, allow_errors=True,
                  kernel_name="python3", extra_arguments=["--HistoryManager.hist_file=:memory:"],
                  shutdown_kernel="immediate", record_timing=False, on_cell_executed=on_cell_executed,
                  resources={"metadata": {"path": settings["workdir"]}})


async def run(nb, settings: dict, emit) -> None:
    client = make_client(nb, settings)
    cells = nb.cells
    fatal: set[int] = set()

    def runnable(i):
        return cells[i].cell_type == "code" and cells[i].source.strip() and i not in fatal

    async def start():
        client.km = client.create_kernel_manager()
        await client.async_start_new_kernel()
        await client.async_start_new_kernel_client()
        emit({"event": "kernel", "pid": kernel_pid()})

    async def stop():
        try:
            await client._async_cleanup_kernel()
        except Exception:  # noqa: BLE001  the kernel may be gone already
            client.km = client.kc = None

    def kernel_pid():
        provisioner = getattr(client.km, "provisioner", None)
        return getattr(provisioner, "pid", None) or getattr(getattr(provisioner, "process", None), "pid", None)

    await start()
    restarts = 0
    for i in range(len(cells)):
        if not runnable(i):
            continue
        try:
            await client.async_execute_cell(cells[i], i)
        except Exception as exc:  # noqa: BLE001  a dead or deaf kernel: this cell fails, the rest goes on
            cell = cells[i]
            why = ("the kernel died while running this cell (it may have passed a memory, CPU-time or "
                   "process limit)") if type(exc).__name__ == "DeadKernelError" else (
                f"the kernel stopped answering while running this cell ({type(exc).__name__}: {exc})")
            cell.outputs.append(error_output("SandboxError", why))
            emit({"event": "cell", "index": i, "execution_count": cell.get("execution_count"),
                  "outputs": cell.outputs})
            fatal.add(i)
            await stop()
            if settings["sandboxed"]:
                kill_strays({1, os.getpid()})  # the old kernel's children, which would hold the process limit
            restarts += 1
            if restarts > MAX_RESTARTS:
                return
            await start()
            for j in range(i):  # replay what came before in the new kernel; its outputs are dropped
                if runnable(j):
                    original = cells[j]
                    try:
                        await client.async_execute_cell(copy.deepcopy(original), j)
                    except Exception:  # noqa: BLE001  the replay broke too: stop here
                        return
                    finally:
                        cells[j] = original
            continue
        cell = cells[i]
        emit({"event": "cell", "index": i, "execution_count": cell.get("execution_count"), "outputs": cell.outputs})
        if settings["sandboxed"] and kill_strays({1, os.getpid(), kernel_pid()}):
            try:
                await client.kc.execute_interactive(REAP, silent=True, store_history=False, timeout=10,
                                                    output_hook=lambda msg: None)
            except Exception:  # noqa: BLE001  a kernel that will not reap keeps its zombies, and its limit
                pass
    await stop()
    emit({"event": "done"})


def main(argv: list[str]) -> int:
    if "--uid" in argv:
        drop_privileges(int(argv[argv.index("--uid") + 1]))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if "--probe" in argv:
        import ipykernel  # noqa: F401
        import nbclient  # noqa: F401
        return 0
    payload = json.loads(sys.stdin.buffer.read())
    settings = payload["settings"]
    protocol = os.dup(1)  # not inherited by the kernel
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    _prctl(PR_SET_DUMPABLE, 0)  # the kernel (same user) cannot read this process's memory or files
    os.makedirs(settings["home"], exist_ok=True)
    write_files(settings["workdir"], payload.get("files", {}))
    os.chdir(settings["workdir"])
    if settings.get("grading_cases"):  # the case inputs of this run, for course_lib.grading.kernel
        os.environ["COURSE_GRADING_CASES"] = os.path.join(settings["workdir"], settings["grading_cases"])
    set_limits(settings["limits"], settings["sandboxed"])

    import nbformat

    nb = nbformat.from_dict(payload["notebook"])
    del payload

    def emit(event: dict) -> None:
        data = (json.dumps(event) + "\n").encode()
        while data:
            data = data[os.write(protocol, data):]

    asyncio.run(run(nb, settings, emit))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
