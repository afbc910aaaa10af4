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

With ``--spare`` it also keeps one warm *spare* (``executor/warmup.py``): a child forked ahead of
demand that imported the science and loaded its compiled loops, then waits. A science job
(an agent whose ``extra`` is ``"science"``) whose environment agrees with the spare's is handed
to it instead of a fresh fork, under the same contract: the launch token names the spare's
pid before the spare is told which job it runs. A new spare is made when no job runs, at
``--spare-nice`` (the jobs' niceness, below the server's), and is stopped while a job runs
(:meth:`ForkServer.pace_spare`), so warming never takes a core or cache a job wants.

Protocol on stdin/stdout, one JSON object a line. In: ``{"job_dir", "token", "nice", "env",
"agent"}`` (``agent`` optional).
Out: ``{"pid": n}`` or ``{"error": "…"}`` for each request, in order, and ``{"exit": n,
"code": c}`` when a child ended. When the server goes (stdin closes, or this process is
re-parented) it starts nothing more, waits for its children and writes their exit statuses,
then exits. It runs in a session of its own for that reason.
"""

from __future__ import annotations

import argparse
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
from cosmic_horizons_lab.executor import warmup
from cosmic_horizons_lab.executor.registry import get_agent
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


def _fork_in_session() -> tuple[int, int, int]:
    """Fork a child in a session (and process group) of its own, with a pipe each way.

    The parent gets ``(pid, to_child, from_child)``, the child ``(0, from_parent, to_parent)``.
    The child makes its session before anything else; a parent that waits for the child's first
    byte before it names the pid (:meth:`ForkServer.start`) knows that a cancel killing the
    group of that pid reaches the whole job.
    """
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(down_w)
        os.close(up_r)
        os.setsid()
        return 0, down_r, up_w
    os.close(down_r)
    os.close(up_w)
    return pid, down_w, up_r


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Spare:
    """The fork server's end of a warm spare: its pid, the pipe it reads its one job from, and
    the pipe on which it says it is warm."""

    def __init__(self, pid: int, request_w: int, ready_r: int) -> None:
        self.pid = pid
        self.request_w = request_w
        self.ready_r = ready_r
        self.ready = False
        self.stopped = False

    def pause(self, stop: bool) -> None:
        """Stop or continue its warming (SIGSTOP / SIGCONT)."""
        if stop != self.stopped:
            try:
                os.kill(self.pid, signal.SIGSTOP if stop else signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.stopped = stop

    def close(self) -> None:
        self.pause(False)  # a stopped spare must run to read the end of its pipe and exit
        for fd in (self.request_w, self.ready_r):
            try:
                os.close(fd)
            except OSError:
                pass


class ForkServer:
    def __init__(self, inp: int, out: int, spare: bool = False, spare_nice: int = 0) -> None:
        self.inp = inp
        self.out = out
        self.parent = os.getppid()
        #: pid -> job directory of each child not yet reaped
        self.children: dict[int, Path] = {}
        self.closed = False
        self.want_spare = spare
        self.spare_nice = max(0, min(19, spare_nice))
        self.spare: Spare | None = None
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
            if self.closed and self.spare is not None:
                self.drop_spare()  # its job will not come: it reads the end of its pipe and exits
            fds = [self.wake_r] + ([] if self.closed else [self.inp])
            if self.spare is not None and not self.spare.ready:
                fds.append(self.spare.ready_r)
            try:
                ready, _, _ = select.select(fds, [], [], REAP_SECONDS)
            except InterruptedError:
                ready = []
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
            if self.spare is not None and self.spare.ready_r in ready:
                self.spare.ready = os.read(self.spare.ready_r, 1) == b"1"
                if not self.spare.ready:  # it could not warm up: jobs start fresh from now on
                    self.drop_spare()
                    self.want_spare = False
            self.reap()
            self.pace_spare()
            if not ready and not self.closed and self.want_spare and self.spare is None and not self.children:
                try:
                    self.make_spare()  # idle, no job running: warm the next science job's process now
                except _Child as child:
                    return child.request
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

    def make_spare(self) -> None:
        pid, request, ready = _fork_in_session()
        if pid == 0:
            raise _Child({"spare": True, "request": request, "ready": ready, "nice": self.spare_nice})
        self.spare = Spare(pid, request, ready)

    def pace_spare(self) -> None:
        """A spare still warming up waits while any job runs, and warms while none does.

        Warming is ~3 s of imports and loading compiled code. Beside a running job it slowed the
        job (2.1-3.5 s of gridding instead of 1.3-1.9 s for a 512² image on this 2-core host,
        ``benchmarks/bench_whole_image.py --as-job``), even under ``SCHED_IDLE``, which was
        measured and dropped: the two cores share caches and memory bandwidth, which a
        scheduling policy does not divide. (If the
        fork server is killed meanwhile, the kernel continues and hangs up the orphaned spare.)
        """
        if self.spare is not None and not self.spare.ready:
            self.spare.pause(bool(self.children))

    def drop_spare(self) -> None:
        if self.spare is not None:
            self.spare.close()
            self.spare = None

    def fits_spare(self, req: dict[str, Any]) -> bool:
        """Whether this request may go to the warm spare: a science agent, a niceness the spare
        can reach (it can only lower its priority), and the environment it warmed up in."""
        if self.spare is None or not self.spare.ready or not req.get("agent"):
            return False
        if int(req.get("nice", 0)) < self.spare_nice or not warmup.compatible(req.get("env") or {}):
            return False
        try:
            agent = get_agent(str(req["agent"]))
        except Exception:  # an agent that does not import fails in the job, with its traceback
            return False
        return getattr(agent, "extra", None) == "science"

    def start(self, req: dict[str, Any]) -> int:
        job_dir = Path(req["job_dir"])
        token = req.get("token") or "-"
        (job_dir / EXIT_FILE).unlink(missing_ok=True)  # a token file always goes with a fresh status
        if self.fits_spare(req):
            return self.hand_to_spare(req, job_dir, token)
        pid, go, ready = _fork_in_session()
        if pid == 0:
            os.write(ready, b"1")
            os.close(ready)
            raise _Child({**req, "go": go})
        self.children[pid] = job_dir
        self.pace_spare()
        try:
            os.read(ready, 1)  # its session is made (or it died: it then runs nothing)
            os.close(ready)
            _write_atomic(job_dir / LAUNCH_TOKEN_FILE, f"{token} {pid}\n")
        finally:
            os.write(go, b"1")
            os.close(go)
        return pid

    def hand_to_spare(self, req: dict[str, Any], job_dir: Path, token: str) -> int:
        spare, self.spare = self.spare, None
        assert spare is not None
        self.children[spare.pid] = job_dir
        try:
            _write_atomic(job_dir / LAUNCH_TOKEN_FILE, f"{token} {spare.pid}\n")
            os.write(spare.request_w, (json.dumps({**req, "nice": int(req.get("nice", 0)) - self.spare_nice})
                                       + "\n").encode())
        finally:
            spare.close()  # the spare reads its request, or the end of the pipe and exits
        return spare.pid

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
            if self.spare is not None and pid == self.spare.pid:  # it ended before it had a job
                if not self.spare.ready:
                    self.want_spare = False  # it could not warm up: no crash loop, jobs start fresh
                self.drop_spare()
                os.waitpid(pid, 0)
                continue
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
    if req.get("go") is not None:  # a spare's token was written before it got its request
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


def run_spare(spare: dict[str, Any]) -> int:
    """In a spare: warm up, say so, then run the one job the fork server hands over (or none)."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # nothing it prints while warming may reach the fork server's protocol
    os.nice(spare["nice"])
    try:
        loaded = warmup.warm()
    except BaseException as exc:
        print(f"spare {os.getpid()}: warming up failed, jobs start fresh: {exc!r}", file=sys.stderr, flush=True)
        os.write(spare["ready"], b"0")
        return 0
    print(f"spare {os.getpid()}: warm ({loaded} compiled loops loaded)", file=sys.stderr, flush=True)
    os.write(spare["ready"], b"1")
    os.close(spare["ready"])
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(spare["request"], 65536)
        if not chunk:
            return 0  # no job for it: the fork server went or made it redundant
        line += chunk
    os.close(spare["request"])
    return run_child({**json.loads(line), "go": None})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cosmic_horizons_lab.executor.forkserver")
    ap.add_argument("--spare", action="store_true", help="keep a warm spare for science jobs")
    ap.add_argument("--spare-nice", type=int, default=0, help="the spare's niceness while it warms up")
    args = ap.parse_args(argv)
    server = ForkServer(sys.stdin.fileno(), sys.stdout.fileno(), spare=args.spare, spare_nice=args.spare_nice)
    request = server.serve()
    if request is None:
        return
    os.close(server.wake_r)
    os.close(server.wake_w)
    if server.spare is not None:  # a job's process holds no end of the spare's pipes
        server.spare.close()
    code = run_spare(request) if request.get("spare") else run_child(request)
    gc.freeze()  # as the executor's own entry point: skip the final collections
    sys.exit(code)


if __name__ == "__main__":
    main()
