"""The local backend: GPU slots on this machine, one OS process per job.

Each job runs as ``/bin/sh -c '<python> -m cosmic_horizons_lab.executor <dir>;
echo $? > <dir>/exit_code'`` in its own session, so it outlives a server
restart and its exit status is on disk even when nobody waited for it. What a
new server needs to re-attach (pid, process start time, slots) is in
``<dir>/local.json``. By default (``LocalBackend.fork_server``) a fork server that imported the
executor once (``executor/forkserver.py``) starts each job instead, with the same contract: its
own session, the launch token with its pid before anything runs, the exit status on disk.

Exactly once: the server commits the launch's token before calling :meth:`submit`; the
token is on the starter's command line, and the starter's first act is to write it with its
pid into the job directory (``jobdir.LAUNCH_TOKEN_FILE``). A server killed before it recorded
the launch finds the process by that file or, in the instant before it is written, by its
command line (:meth:`LocalBackend.find_launch`), instead of starting the job again.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from traitlets import Bool, Float, Int

from cosmic_horizons_lab.backends.base import (
    Backend,
    BackendJobState,
    BackendUnavailable,
    GpuPool,
    LaunchSpec,
)
from cosmic_horizons_lab.protocol.jobdir import (
    EXIT_FILE,
    LAUNCH_TOKEN_FILE,
    LOG_FILE,
    read_launch_token,
)

logger = logging.getLogger(__name__)

LAUNCH_FILE = "local.json"
# The shell records the executor's exit status atomically; a job killed as a
# group (cancel, timeout) leaves none, and the backend knows why it killed it.
# Its first act (before anything can run) records the launch token and its pid: removing a
# previous attempt's exit status first, so a token file always goes with a fresh exit status.
WRAPPER = (
    f'rm -f "$1/{EXIT_FILE}"; printf "%s %s\\n" "${{3:--}}" "$$" > "$1/.{LAUNCH_TOKEN_FILE}.tmp" && '
    f'mv -f "$1/.{LAUNCH_TOKEN_FILE}.tmp" "$1/{LAUNCH_TOKEN_FILE}" || exit 2; '
    'cd "$1" && nice -n "$2" "$0" -m cosmic_horizons_lab.executor "$1"; '
    'echo $? > "$1/.exit_code.tmp" && mv "$1/.exit_code.tmp" "$1/exit_code"'
)


@dataclass
class _Running:
    job_dir: Path
    pid: int
    create_time: float
    slots: list[int]
    started: float
    max_runtime: int | None
    proc: asyncio.subprocess.Process | None = None
    #: the launch token on the starter's command line (tells a reused pid from ours)
    token: str = ""
    killed_for: str | None = None
    kill_task: asyncio.Task | None = field(default=None, repr=False)


class LocalBackend(Backend):
    """Runs jobs as processes in GPU (or CPU) slots of this machine."""

    name = "local"

    kill_grace_seconds = Float(
        5.0, help="Seconds between SIGTERM and SIGKILL when a job is cancelled or times out."
    ).tag(config=True)

    nice = Int(
        10,
        help="Niceness of job processes (0-19): jobs yield the CPU to the server, so the Lab, the "
        "API and the live event stream stay responsive while jobs compute on the same cores.",
    ).tag(config=True)

    fork_server = Bool(
        True,
        help="Start job processes by forking a process that has imported the executor once "
        "(cosmic_horizons_lab.executor.forkserver) rather than a fresh interpreter each: a trivial "
        "job then costs milliseconds of CPU, not ~0.15 s. Off: one 'sh -c … python -m "
        "cosmic_horizons_lab.executor' per job. Either keeps exactly-once launching and the exit status.",
    ).tag(config=True)

    warm_spare = Bool(
        True,
        help="With the fork server: keep one spare job process that has imported the science "
        "(torch, numba) and loaded its compiled loops, and hand it the next science job "
        "(cosmic_horizons_lab.executor.warmup). A science job then starts in milliseconds instead "
        "of 2-3 s of imports, at the price of one idle process (~0.45 GB) waiting. It warms only "
        "while no job runs (paused while one does), so it never slows a job. Script jobs never "
        "use it.",
    ).tag(config=True)

    def __init__(self, *, slots: int, gpus: list[dict[str, Any]], on_exit: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: One entry per slot: the GPU index it owns, or None for a CPU slot.
        self.gpus = gpus
        self.slot_count = slots
        self._free: list[int] = list(range(slots))
        self._jobs: dict[str, _Running] = {}
        self._on_exit = on_exit
        self._forker: ForkServerClient | None = None

    # -- capacity -----------------------------------------------------------------
    def _slots_needed(self, gpu_count: int) -> int:
        # On a GPU machine a job takes one slot per GPU; on a CPU machine one slot.
        return max(1, gpu_count) if self.gpus else 1

    def free_slots(self, gpu_count: int) -> int | None:
        return len(self._free) // self._slots_needed(gpu_count)

    def max_gpus(self) -> int | None:
        """The most GPUs one job can get here; None on a CPU-only machine (it runs on the CPU)."""
        return self.slot_count if self.gpus else None

    def supported_features(self) -> set[str]:
        return {"cancel", "gpu_slots", "timeout"}

    # -- lifecycle ----------------------------------------------------------------
    async def submit(self, spec: LaunchSpec) -> str:
        need = self._slots_needed(spec.gpu_count)
        if len(self._free) < need:
            raise RuntimeError("no free slot: the orchestrator must check free_slots() first")
        slots, self._free = self._free[:need], self._free[need:]
        env = dict(os.environ)
        env.update(spec.env)
        env["COSMIC_HORIZONS_CORRELATION_ID"] = spec.correlation_id
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(self.gpus[s]["index"]) for s in slots) if self.gpus else ""
        env["PYTHONUNBUFFERED"] = "1"
        proc: asyncio.subprocess.Process | None = None
        try:
            pid = await self._fork(spec, env)
            if pid is None:
                proc = await self._spawn(spec, env)
                pid = proc.pid
        except Exception:
            self._free.extend(slots)
            raise
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            create_time = 0.0
        run = _Running(spec.job_dir, pid, create_time, slots, time.time(), spec.max_runtime_seconds, proc,
                       token=spec.launch_token)
        (spec.job_dir / LAUNCH_FILE).write_text(json.dumps(
            {"pid": pid, "create_time": create_time, "slots": slots, "started": run.started,
             "token": spec.launch_token}
        ))
        backend_id = str(pid)
        self._jobs[backend_id] = run
        if proc is not None:
            asyncio.get_running_loop().create_task(self._reap(proc))
        return backend_id

    async def _fork(self, spec: LaunchSpec, env: dict[str, str]) -> int | None:
        """The job's pid, started by the fork server; None when there is none (start it the slow way)."""
        if not self.fork_server:
            return None
        if self._forker is None or not self._forker.alive:
            spare = ["--spare", "--spare-nice", str(max(0, min(19, self.nice)))] if self.warm_spare else []
            self._forker = ForkServerClient(self.python, self.work_dir / "forkserver.log", self._notify_exit,
                                            spare)
            try:
                await self._forker.start()
            except Exception:
                logger.exception("the fork server did not start; jobs start as fresh interpreters")
                self.fork_server = False
                return None
        try:
            return await self._forker.launch(str(spec.job_dir), spec.launch_token, max(0, min(19, self.nice)), env,
                                             spec.agent)
        except ForkServerGone:
            logger.warning("the fork server went; this job starts as a fresh interpreter")
            return None

    async def _spawn(self, spec: LaunchSpec, env: dict[str, str]) -> asyncio.subprocess.Process:
        log = open(spec.job_dir / LOG_FILE, "ab")
        try:
            return await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", WRAPPER, self.python, str(spec.job_dir), str(max(0, min(19, self.nice))),
                spec.launch_token,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                env=env, start_new_session=True,
            )
        finally:
            log.close()

    def _notify_exit(self) -> None:
        if self._on_exit is not None:
            self._on_exit()

    async def stop(self) -> None:
        """Tell the fork server to start nothing more (it waits for its jobs, which keep running)."""
        if self._forker is not None:
            self._forker.close()

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        if self._on_exit is not None:
            self._on_exit()

    async def adopt(self, backend_id: str, spec: LaunchSpec) -> None:
        """Re-attach to a job a previous server started (its process may be gone)."""
        if backend_id in self._jobs:
            return
        pid = int(backend_id)
        try:
            info = json.loads((spec.job_dir / LAUNCH_FILE).read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("pid") != pid:
            # The server died before it wrote local.json for this process: ask the process.
            try:
                create_time = psutil.Process(pid).create_time()
            except psutil.Error:
                create_time = 0.0
            info = {"pid": pid, "create_time": create_time, "slots": None, "started": create_time or time.time()}
        wanted = info.get("slots")
        if wanted is None:  # unknown: it holds as many slots as it needs, whichever are free
            wanted = self._free[: self._slots_needed(spec.gpu_count)]
        slots = [s for s in wanted if s in self._free]
        self._free = [s for s in self._free if s not in slots]
        self._jobs[backend_id] = _Running(
            spec.job_dir, pid, info.get("create_time", 0.0), slots,
            info.get("started", time.time()), spec.max_runtime_seconds,
            token=spec.launch_token or info.get("token") or "",
        )

    async def find_launch(self, spec: LaunchSpec) -> str | None:
        """The pid the launch with ``spec.launch_token`` started (now adopted), or None if none did.

        Read the job directory's token file, then look for a live process with the token on
        its command line (a starter not yet at its first act), then read the file again (a
        starter that wrote it and ended between the two looks). Neither: no process with the
        token exists or ever wrote the file, so none will: nothing started.
        """
        token = spec.launch_token
        if not token:
            return None

        def look() -> int | None:
            for attempt in range(2):
                found = read_launch_token(spec.job_dir)
                if found is not None and found[0] == token and found[1].isdigit():
                    return int(found[1])
                if attempt == 0:
                    pid = _pid_with_token(token)
                    if pid is not None:
                        return pid
            return None

        pid = await asyncio.to_thread(look)
        if pid is None:
            return None
        await self.adopt(str(pid), spec)
        return str(pid)

    def _alive(self, run: _Running) -> bool:
        if run.proc is not None:
            return run.proc.returncode is None
        try:
            p = psutil.Process(run.pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                # The fork server writes a child's exit status while it is a zombie, then reaps
                # it: until then the end is not recorded yet, and reading it now would say lost.
                return not (run.job_dir / EXIT_FILE).exists() and run.killed_for is None
            if run.create_time:
                return abs(p.create_time() - run.create_time) < 1.0
            # No start time to compare: the token on its command line tells ours from a reused pid.
            return not run.token or run.token in p.cmdline()
        except psutil.Error:
            return False

    async def poll(self, backend_ids: list[str]) -> dict[str, BackendJobState]:
        states: dict[str, BackendJobState] = {}
        now = time.time()
        for bid in backend_ids:
            run = self._jobs.get(bid)
            if run is None:
                continue
            if self._alive(run):
                if run.max_runtime and now - run.started > run.max_runtime and run.killed_for is None:
                    self._kill(run, "timeout")
                states[bid] = BackendJobState("RUNNING")
                continue
            states[bid] = self._ended(run)
            self._release(bid)
        return states

    def _ended(self, run: _Running) -> BackendJobState:
        code: int | None = None
        try:
            code = int((run.job_dir / EXIT_FILE).read_text().strip())
        except (OSError, ValueError):
            if run.proc is not None and run.proc.returncode is not None and run.killed_for is None:
                code = run.proc.returncode
        if run.killed_for == "cancelled":
            return BackendJobState("CANCELLED", code, "cancelled")
        if run.killed_for == "timeout":
            return BackendJobState("FAILED", code, "timeout", {"max_runtime_seconds": run.max_runtime})
        if code is None:
            return BackendJobState("FAILED", None, "lost", {"detail": "the job's process ended without an exit status"})
        if code == 0:
            return BackendJobState("COMPLETED", 0)
        return BackendJobState("FAILED", code, "exit_code", {"exit_code": code})

    def _release(self, bid: str) -> None:
        run = self._jobs.pop(bid, None)
        if run is None:
            return
        if run.kill_task is not None:
            run.kill_task.cancel()
        self._free.extend(s for s in run.slots if s not in self._free)
        self._free.sort()

    def _kill(self, run: _Running, why: str) -> None:
        run.killed_for = why
        try:
            os.killpg(run.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        run.kill_task = asyncio.get_running_loop().create_task(self._kill_later(run))

    async def _kill_later(self, run: _Running) -> None:
        await asyncio.sleep(self.kill_grace_seconds)
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def cancel(self, backend_id: str) -> None:
        run = self._jobs.get(backend_id)
        if run is not None and run.killed_for is None:
            self._kill(run, "cancelled")

    async def resources(self) -> list[GpuPool]:
        if not self.gpus:
            return [
                # No GPU: the pool is the CPU job slots, counted as such (a pool of 0 read as
                # "nothing can run" where every slot was free).
                GpuPool(
                    name="local-cpu", backend=self.name, gpu_model="none (CPU)",
                    total=self.slot_count, free=len(self._free),
                    detail={"unit": "CPU job slots", "cpu_slots": self.slot_count, "cpu_slots_free": len(self._free)},
                )
            ]
        models = {g["name"] for g in self.gpus}
        return [
            GpuPool(
                name="local", backend=self.name, gpu_model=", ".join(sorted(models)),
                total=self.slot_count, free=len(self._free),
                memory_mb=int(min(g["memory_total_mb"] for g in self.gpus)),
            )
        ]

    async def health(self) -> dict[str, Any]:
        return {"ok": True, "slots": self.slot_count, "free": len(self._free), "running": len(self._jobs)}


class ForkServerGone(Exception):
    """The fork server ended or stopped answering; the job was not started by it."""


class ForkServerClient:
    """The server's end of ``cosmic_horizons_lab.executor.forkserver``: requests answered in order.

    A plain ``Popen`` read through the event loop, not an asyncio subprocess: closing an asyncio
    subprocess kills it, and the fork server must outlive the server to record its jobs' ends.
    """

    def __init__(self, python: str, log_path: Path, on_exit: Any, args: list[str] | None = None) -> None:
        self.python = python
        self.args = list(args or [])
        self.log_path = log_path
        self.on_exit = on_exit
        self.proc: subprocess.Popen | None = None
        self._replies: collections.deque[asyncio.Future] = collections.deque()
        self._buf = b""
        self.alive = False

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # its own session: it outlives the server to record its jobs' exit statuses
            self.proc = subprocess.Popen(
                [self.python, "-m", "cosmic_horizons_lab.executor.forkserver", *self.args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            )
        assert self.proc.stdout is not None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.proc.stdout.fileno(), self._readable)
        self.alive = True

    def _readable(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._gone()
            return
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            msg = json.loads(line)
            if "exit" in msg:
                self.on_exit()
            elif self._replies:
                fut = self._replies.popleft()
                if not fut.done():
                    fut.set_result(msg)

    def _gone(self) -> None:
        self.alive = False
        if self.proc is not None and self.proc.stdout is not None:
            self._loop.remove_reader(self.proc.stdout.fileno())
            self.proc.stdout.close()
            self.proc.poll()
        while self._replies:
            fut = self._replies.popleft()
            if not fut.done():
                # it may have started the job before it went: the launch's intent stays, and
                # reconciliation looks for what its token left (never a second start here)
                fut.set_exception(BackendUnavailable("the fork server ended before it answered"))

    async def launch(self, job_dir: str, token: str, nice: int, env: dict[str, str], agent: str = "") -> int:
        """Start one job; its pid. ForkServerGone when the fork server cannot have started it.
        ``agent`` lets the fork server hand a science job to its warm spare."""
        if not self.alive or self.proc is None or self.proc.stdin is None:
            raise ForkServerGone("the fork server is not running")
        line = (json.dumps({"job_dir": job_dir, "token": token, "nice": nice, "env": env, "agent": agent})
                + "\n").encode()
        try:
            # a few kB into a pipe its reader empties at once: written whole, without waiting
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except OSError as exc:  # nothing or part of a line: it never parses a part as a request
            self._gone()
            raise ForkServerGone(f"the fork server is gone: {exc}") from None
        fut: asyncio.Future = self._loop.create_future()
        self._replies.append(fut)
        msg = await fut
        if "error" in msg:
            raise RuntimeError(f"the fork server could not start the job: {msg['error']}")
        return int(msg["pid"])

    def close(self) -> None:
        """Start nothing more; the fork server waits for its jobs and records their ends."""
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if self.alive:
            self._gone()


def _pid_with_token(token: str) -> int | None:
    """The live process with ``token`` as an argument (a job's starter), if there is one."""
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and token in (proc.info["cmdline"] or ()):
                return proc.pid
        except psutil.Error:
            continue
    return None
