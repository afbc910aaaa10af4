"""The one way the server runs science: a child process, with limits, that answers JSON.

Reading a dataset's shape, validating it and converting it need numpy and
pyuvdata, and may read gigabytes. None of that belongs in the server process
(it must start, and serve jobs, without the science extra; and a big read must
not take it down), so each runs as ``python -m cosmic_horizons_lab.science.<module>``
with a wall-clock and an address-space limit, and prints its answer as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from typing import Any

#: Limits of one worker: reading a dataset must not take the server's machine down.
TIMEOUT_S = 600.0
MEMORY_BYTES = 8 * 1024**3
#: The niceness (nice(1)) of a worker nobody waits on: the start-up's dataset warm-up, the
#: footprints of ended jobs. Unniced, the warm-up's seconds of imports took a third of this
#: machine's two cores from the server's requests and the jobs while the first submissions
#: arrived; at 10 it gets about a tenth of a core that others want, and all of an idle one.
BACKGROUND_NICENESS = 10


class ScienceUnavailable(RuntimeError):
    """The worker could not do its work: the science extra is missing, or it failed, or it ran
    out of time or memory. The message says which, for the user."""


def science_installed() -> bool:
    """Whether the science extra's readers are importable here (checked without importing)."""
    return all(importlib.util.find_spec(m) is not None for m in ("numpy", "pyuvdata"))


def _limited(command: list[str]) -> list[str]:
    """``command`` under an address-space limit, through util-linux's ``prlimit`` where there
    is one (a ``preexec_fn`` would do it too, but is unsafe in a server with threads)."""
    prlimit = shutil.which("prlimit")
    return [prlimit, f"--as={MEMORY_BYTES}", "--", *command] if prlimit else command


def _niced(command: list[str]) -> list[str]:
    """``command`` at :data:`BACKGROUND_NICENESS`, through coreutils' ``nice`` where there is one."""
    nice = shutil.which("nice")
    return [nice, "-n", str(BACKGROUND_NICENESS), *command] if nice else command


def run_science(module: str, args: list[str], timeout: float = TIMEOUT_S, *, background: bool = False) -> Any:
    """Run ``cosmic_horizons_lab.science.<module>`` with ``args``; its JSON answer (blocking:
    call from a thread). ``background``: nobody waits on the answer, so the worker yields the
    CPU to the server and the jobs (:data:`BACKGROUND_NICENESS`)."""
    if not science_installed():
        raise ScienceUnavailable("reading datasets needs the 'science' extra "
                                 "(pip install 'cosmic-horizons-lab[science]')")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        command = [sys.executable, "-m", f"cosmic_horizons_lab.science.{module}", *args]
        proc = subprocess.run(_limited(_niced(command) if background else command),
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ScienceUnavailable(f"{module} took over {timeout:.0f} s") from exc
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise ScienceUnavailable(f"{module} failed: {last[0][:500]}")
    return json.loads(proc.stdout)
