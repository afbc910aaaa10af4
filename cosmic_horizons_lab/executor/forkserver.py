"""The local backend's fork server: ``python -m cosmic_horizons_lab.executor.forkserver``.

Why: a trivial job started as ``sh -c 'nice python -m cosmic_horizons_lab.executor …'`` spends
~0.1-0.2 s of CPU starting an interpreter and importing the executor, on the same cores as the
server; a thousand such jobs were most of the machine's work. This process imports the executor
once and forks one child per job, which costs a few milliseconds.

Each child keeps the contract of the shell starter (``backends/local.py``'s ``WRAPPER``):

- it runs in a session of its own (``setsid``), so it outlives the server and a cancel kills
  its whole group;
- exactly once: before the child runs anything, this process writes the launch token with the
  child's pid into the job directory (``jobdir.LAUNCH_TOKEN_FILE``, after removing a previous
  attempt's exit status), and the child runs the job only when that file names it. A fork
  server killed between the fork and the file leaves a child that exits without running;
- its exit status is written atomically to ``exit_code`` when it ends (by this process, which
  reaps it), as the shell did: ``128 + n`` for a crash by signal ``n`` (SIGSEGV, SIGABRT …); none for a
  child killed (SIGKILL, SIGTERM …: its group killed with it, the shell wrote none either).

Protocol on stdin/stdout, one JSON object a line. In: ``{"job_dir", "token", "nice", "env"}``.
Out: ``{"pid": n}`` or ``{"error": "…"}`` for each request, in order, and ``{"exit": n,
"code": c}`` when a child ended. When the server goes (stdin closes, or this process is
re-parented) it starts nothing more, waits for its children and writes their exit statuses,
then exits. It runs in a session of its own for that reason.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sys
from pathlib import Path
from typing import Any

# What every job imports, imported once here, before any fork (nothing here starts a thread).
import cosmic_horizons_lab.executor.__main__ as executor_main
import cosmic_horizons_lab.executor.registry
import cosmic_horizons_lab.executor.sampler
import cosmic_horizons_lab.executor.script
from cosmic_horizons_lab.protocol.jobdir import (
    EXIT_FILE,
    LAUNCH_TOKEN_FILE,
    LOG_FILE,
    read_launch_token,
)

#: How often a waiting fork server looks for children that ended (it is told at once by SIGCHLD
#: as well; the timeout only bounds a missed wake-up).
REAP_SECONDS = 0.2
#: Signals that end a job from outside (cancel, timeout, a kill of its group), not a crash.
KILL_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ForkServer:
    def __init__(self, inp: int, out: int) -> None:
        self.inp = inp
        self.out = out
        self.parent = os.getppid()
        #: pid -> job directory of each child not yet reaped
        self.children: dict[int, Path] = {}
        self.closed = False
        # SIGCHLD interrupts select() at once; the handler itself does nothing
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            os.write(self.out, (json.dumps(msg) + "\n").encode())
        except OSError:  # the server is gone: its successor polls the job directories
            self.closed = True

    def serve(self) -> dict[str, Any] | None:
        """Answer requests until the server goes; in a child, return its request (to run it)."""
        buf = b""
        while not self.closed or self.children:
            fds = [self.wake_r] + ([] if self.closed else [self.inp])
            try:
                ready, _, _ = select.select(fds, [], [], REAP_SECONDS)
            except InterruptedError:
                ready = []
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
            self.reap()
            if self.closed or self.inp not in ready:
                continue
            chunk = os.read(self.inp, 65536)
            if not chunk or os.getppid() != self.parent:
                self.closed = True  # the server went: start nothing more
                continue
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if os.getppid() != self.parent:
                    self.closed = True
                    break
                try:
                    req = json.loads(line)
                    pid = self.start(req)
                except _Child as child:
                    return child.request
                except Exception as exc:  # this job is refused; the server goes on
                    self.send({"error": f"{type(exc).__name__}: {exc}"})
                    continue
                self.send({"pid": pid})
        return None

    def start(self, req: dict[str, Any]) -> int:
        job_dir = Path(req["job_dir"])
        token = req.get("token") or "-"
        (job_dir / EXIT_FILE).unlink(missing_ok=True)  # a token file always goes with a fresh status
        go_r, go_w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(ready_r)
            os.setsid()  # its own session and group before the server can know its pid (cancel)
            os.write(ready_w, b"1")
            os.close(ready_w)
            raise _Child({**req, "go": go_r})
        os.close(go_r)
        os.close(ready_w)
        self.children[pid] = job_dir
        try:
            os.read(ready_r, 1)  # its session is made (or it died: it then runs nothing)
            os.close(ready_r)
            _write_atomic(job_dir / LAUNCH_TOKEN_FILE, f"{token} {pid}\n")
        finally:
            os.write(go_w, b"1")
            os.close(go_w)
        return pid

    def reap(self) -> None:
        """Record each ended child's exit status, then reap it.

        The status is written while the child is still a zombie (``WNOWAIT``): whoever sees the
        process gone (the server's poll) finds its ``exit_code`` already there.
        """
        while self.children:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                self.children.clear()
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            code = info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status
            job_dir = self.children.pop(pid, None)
            # Killed (a cancel, a timeout, a kill of its group): no status, as the shell starter,
            # killed with its group, left none; the backend knows why it killed it, and an
            # unexplained kill is a lost job. A crash (SIGSEGV, SIGABRT …) is recorded as the
            # shell recorded it.
            killed = info.si_code == os.CLD_KILLED and info.si_status in KILL_SIGNALS
            if job_dir is not None and not killed:
                try:
                    _write_atomic(job_dir / EXIT_FILE, f"{code}\n")
                except OSError:
                    pass  # the directory went (a deleted job): nothing to record it in
            os.waitpid(pid, 0)
            self.send({"exit": pid, "code": code})


class _Child(Exception):
    """Raised in a freshly forked child: unwinds the fork server's frames before the job runs."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__()
        self.request = request


def run_child(req: dict[str, Any]) -> int:
    """In the child: wait for the launch token, become the job's process, run the executor."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # as a fresh interpreter has them
    signal.signal(signal.SIGINT, signal.default_int_handler)
    job_dir = Path(req["job_dir"])
    os.read(req["go"], 1)  # b"1", or nothing when the fork server died first
    os.close(req["go"])
    if read_launch_token(job_dir) != (req.get("token") or "-", str(os.getpid())):
        return 3  # the launch was never recorded: run nothing (the next launch will)
    log = os.open(job_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(devnull)
    sys.stdout.reconfigure(line_buffering=True)  # as PYTHONUNBUFFERED did for the shell's child
    sys.stderr.reconfigure(line_buffering=True)
    os.chdir(job_dir)
    os.nice(max(0, min(19, int(req.get("nice", 0)))))
    os.environ.clear()
    os.environ.update(req.get("env") or {})
    sys.argv = [executor_main.__file__, str(job_dir)]
    return executor_main.main([str(job_dir)])


def main() -> None:
    server = ForkServer(sys.stdin.fileno(), sys.stdout.fileno())
    request = server.serve()
    if request is None:
        return
    os.close(server.wake_r)
    os.close(server.wake_w)
    code = run_child(request)
    gc.freeze()  # as the executor's own entry point: skip the final collections
    sys.exit(code)


if __name__ == "__main__":
    main()
