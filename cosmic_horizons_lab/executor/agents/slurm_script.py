"""The SlurmScript agent: a user's existing sbatch script run as a job, and followed like any other.

How it fits the backends: the Slurm backend submits our own batch script, as for every agent,
and the executor it starts inside the allocation runs the user's script with ``bash``. So the
job has the same job directory, events, exit code and log (``stdout.log``, the allocation's
output file: the script's output lands there) as every other job, and cancel, dependencies,
restarts and exactly-once launch work unchanged. The script's own ``#SBATCH`` lines are not
lost: ``sbatch`` reads directives only from the script it is given, so the backend copies them
into ours (``backends/slurm/user_script.py``), after our defaults and before the operator's
``extra_directives``; the ones that would take the job away from us (its output file, name,
comment, dependencies, array) are left out.

The script runs from its own folder (where a user would run ``sbatch``), with ``SLURM_*`` of the
allocation in its environment. Outside a Slurm allocation (the local backend) it is refused at
run time: the submission contract says 422, which the submission validator gives where the
server knows its backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from cosmic_horizons_lab.executor.agent import Agent
from cosmic_horizons_lab.executor.context import JobContext
from cosmic_horizons_lab.executor.script import ScriptRefused, open_inside

class SlurmScriptAgent(Agent):
    name = "SlurmScript"
    description = ("Run an existing sbatch script from the server's root directory as a job on the Slurm "
                   "cluster (its #SBATCH lines apply); slurm backend only.")
    requires_dataset = False
    root_file_param = "path"
    backends = ("slurm",)
    params_schema = {
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "description": "Path of the batch script, relative to the server's root directory.",
            },
            "arguments": {
                "type": "array",
                "items": {"type": "string"},
                "maxItems": 256,
                "default": [],
                "description": "Arguments for the script ($1, $2, …), as sbatch passes them after the script.",
            },
        },
        "required": ["path"],
    }

    def run(self, job: JobContext) -> dict[str, Any]:
        if not os.environ.get("SLURM_JOB_ID"):
            raise ScriptRefused("SlurmScript runs only inside a Slurm allocation (the slurm backend)")
        root = job.server_root
        if root is None:
            raise ScriptRefused("the job names no server root to find the script under")
        script, source = open_inside(root, job.params["path"])
        # bash runs the text that was checked (a copy in the job directory, kept as a record),
        # not whatever the path names by the time bash opens it.
        copy = job.job_dir / "user-script.sh"
        copy.write_bytes(source)
        arguments = [str(a) for a in job.params.get("arguments") or []]
        job.report(progress=0.0)
        sys.stdout.flush()
        # Inherits stdout/stderr: the script's output is the job's log, as with sbatch itself.
        code = subprocess.run(["bash", str(copy), *arguments], cwd=script.parent, check=False).returncode
        if code != 0:
            raise SystemExit(code)
        job.report(progress=1.0)
        return {"script": job.params["path"], "exit_code": code}
