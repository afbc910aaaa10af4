"""The executor: the process that runs one job inside a slot or an allocation.

``python -m cosmic_horizons_lab.executor <job-dir>`` reads ``job.json``, runs
the agent, appends records to ``events.jsonl`` and writes ``outputs/``. It
needs no database and no network. Inside a job, scripts call :func:`report`.
"""

from typing import Any

from cosmic_horizons_lab.executor.context import JobContext, report

#: The ``args`` of a Script job, for scripts that prefer a dict to argv.
args: dict[str, Any] = {}

__all__ = ["JobContext", "args", "report"]
