"""The Script agent: a user's Python script run as a job.

The script runs in this process, as ``__main__``, with its
``args`` in ``cosmic_horizons_lab.executor.args`` and on ``sys.argv`` as
``--key=value`` pairs, so argparse-based scripts work unchanged.
"""

from __future__ import annotations

import builtins
import os
import sys
import types
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.executor.agent import Agent
from cosmic_horizons_lab.executor.context import JobContext


class ScriptRefused(Exception):
    """The script's path does not lead to a file inside the server's root (now, at run time)."""


def open_inside(root: Path, relative: str) -> tuple[Path, bytes]:
    """The script at ``relative`` under ``root``, read through one open file: (its real path, its source).

    Submission checked the path once, but the file may have been replaced since (by a symlink
    out of the root, say). So the check is made again here, on what is actually read: the
    path is resolved with every symlink followed, must lie inside the root, and the file
    opened must still be the one that resolved path names (no swap between check and read).
    """
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / relative))
    if not real.is_relative_to(real_root):
        raise ScriptRefused(f"the script path {relative!r} resolves to {str(real)!r}, outside the server root "
                            f"{str(real_root)!r}; refused at run time")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ScriptRefused(f"the script {relative!r} cannot be opened inside the server root: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        opened = os.fstat(fh.fileno())
        again = Path(os.path.realpath(real_root / relative))
        try:
            now = os.stat(again)
        except OSError:
            now = None
        if (now is None or not again.is_relative_to(real_root)
                or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)):
            raise ScriptRefused(f"the script {relative!r} changed while it was being opened; refused at run time")
        if not os.path.isfile(again):
            raise ScriptRefused(f"the script {relative!r} is not a regular file")
        source = fh.read()
    return real, source  # bytes: compile() honours the file's own coding declaration


def run_as_main(path: Path, source: bytes) -> dict[str, Any]:
    """Run ``source`` as ``__main__`` (as ``runpy.run_path`` would), from the text already checked."""
    module = types.ModuleType("__main__")
    module.__file__ = str(path)
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    module.__spec__ = module.__loader__ = module.__package__ = None  # as runpy.run_path leaves them
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    try:
        code = compile(source, str(path), "exec")
        exec(code, module.__dict__)  # noqa: S102 (running the user's script is the point)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved
    return module.__dict__


class ScriptAgent(Agent):
    name = "Script"
    description = "Run a Python script from the server's root directory as a job."
    requires_dataset = False
    root_file_param = "path"
    params_schema = {
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "pattern": r"\.py$",
                "description": "Path of the script, relative to the server's root directory.",
            },
            "args": {
                "type": "object",
                "description": "Arguments for the script, passed as --key=value.",
                "default": {},
            },
        },
        "required": ["path"],
    }

    def run(self, job: JobContext) -> dict[str, Any]:
        root = job.server_root or Path.cwd()
        script, source = open_inside(root, job.params["path"])
        args: dict[str, Any] = job.params.get("args") or {}
        argv = [str(script)] + [f"--{k}={v}" for k, v in args.items()]
        sys.argv = argv
        sys.path.insert(0, str(script.parent))
        job.report(progress=0.0)
        namespace = run_as_main(script, source)
        result = namespace.get("result")
        return {"script": job.params["path"], "result": result if _is_json(result) else repr(result)}


def _is_json(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
