"""A user's own sbatch script's ``#SBATCH`` lines, carried into the batch script we submit.

The SlurmScript agent runs a user's existing batch script inside an allocation that our own
script asked for. ``sbatch`` reads directives only from the script it is handed, so without
this the user's ``#SBATCH --mem=…`` would be a comment. Read as ``sbatch`` reads them: from the
top of the file until the first line that is neither blank nor a comment. Left out: the options
that would take the job away from us (its output and error files, name, comment, working
directory, dependencies, array, and ``--wrap``): the job's log, launch token, and place in a
pipeline are ours to set.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from cosmic_horizons_lab.protocol.jobdir import JOB_FILE

#: The agent whose scripts carry the user's directives.
AGENT = "SlurmScript"

#: Options we set ourselves (long names, and their short forms).
RESERVED = {
    "output", "error", "job-name", "comment", "chdir", "dependency", "array", "wrap", "open-mode",
    "o", "e", "J", "D", "d", "a",
}


def _option(token: str) -> str:
    """``--mem=4G`` → ``mem``; ``-N`` → ``N``; ``-N2`` → ``N``."""
    if token.startswith("--"):
        return token[2:].split("=", 1)[0]
    return token[1:2]


def read_directives(text: str) -> list[str]:
    """The script's ``#SBATCH`` options (each as written after ``#SBATCH``), reserved ones left out."""
    found: list[str] = []
    for number, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if number == 0 and stripped.startswith("#!"):
            continue
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break  # sbatch stops reading directives at the first command
        if not stripped.startswith("#SBATCH"):
            continue
        rest = stripped[len("#SBATCH"):].split("#", 1)[0].strip()  # a trailing comment is not an option
        try:
            tokens = shlex.split(rest)
        except ValueError:
            continue
        if tokens and tokens[0].startswith("-") and _option(tokens[0]) not in RESERVED:
            found.append(rest)
    return found


def user_script_directives(job_dir: Path) -> list[str]:
    """The directives of the script a SlurmScript job names (job.json's ``params.path`` under its
    ``server_root``); none when the file cannot be read or lies outside the root (the agent then
    fails the job with the reason)."""
    try:
        job = json.loads((Path(job_dir) / JOB_FILE).read_text(encoding="utf-8"))
        root = Path(os.path.realpath(job["server_root"]))
        script = Path(os.path.realpath(root / job["params"]["path"]))
        if not script.is_relative_to(root):
            return []
        return read_directives(script.read_text(encoding="utf-8"))
    except (OSError, KeyError, TypeError, ValueError):
        return []


def with_user_directives(rendered: str, directives: list[str], operator_lines: int) -> str:
    """``rendered`` (our batch script) with ``directives`` as ``#SBATCH`` lines placed after our
    own options and before the last ``operator_lines`` of them (the operator's
    ``extra_directives``, which keep the last word)."""
    if not directives:
        return rendered
    lines = rendered.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH") or i == 0)
    at = last + 1 - operator_lines
    added = ["# From the user's script:"] + [f"#SBATCH {d}" for d in directives]
    return "\n".join(lines[:at] + added + lines[at:]) + "\n"
