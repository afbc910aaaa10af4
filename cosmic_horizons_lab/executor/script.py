"""The Script agent: a user's Python script run as a job.

The script runs in this process (``runpy``), as ``__main__``, with its
``args`` in ``cosmic_horizons_lab.executor.args`` and on ``sys.argv`` as
``--key=value`` pairs, so argparse-based scripts work unchanged.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.executor.agent import Agent
from cosmic_horizons_lab.executor.context import JobContext


class ScriptAgent(Agent):
    name = "Script"
    description = "Run a Python script from the server's root directory as a job."
    requires_dataset = False
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
        script = (root / job.params["path"]).resolve()
        args: dict[str, Any] = job.params.get("args") or {}
        argv = [str(script)] + [f"--{k}={v}" for k, v in args.items()]
        sys.argv = argv
        sys.path.insert(0, str(script.parent))
        job.report(progress=0.0)
        namespace = runpy.run_path(str(script), run_name="__main__")
        result = namespace.get("result")
        return {"script": job.params["path"], "result": result if _is_json(result) else repr(result)}


def _is_json(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
