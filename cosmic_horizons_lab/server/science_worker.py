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


def run_science(module: str, args: list[str], timeout: float = TIMEOUT_S) -> Any:
    """Run ``cosmic_horizons_lab.science.<module>`` with ``args``; its JSON answer (blocking:
    call from a thread)."""
    if not science_installed():
        raise ScienceUnavailable("reading datasets needs the 'science' extra "
                                 "(pip install 'cosmic-horizons-lab[science]')")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(_limited([sys.executable, "-m", f"cosmic_horizons_lab.science.{module}", *args]),
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ScienceUnavailable(f"{module} took over {timeout:.0f} s") from exc
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise ScienceUnavailable(f"{module} failed: {last[0][:500]}")
    return json.loads(proc.stdout)
