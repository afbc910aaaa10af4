"""The Notebook agent: a notebook under the server's root run top to bottom as a job.

Parameters follow papermill's convention, which notebook users already know:
the values are written as a new cell right after the cell tagged
``parameters`` (or first, when no cell carries the tag), tagged
``injected-parameters``. The notebook runs with nbclient in a kernel this job
process starts, so it runs the same on the local backend and on a Slurm
node. Each executed cell reports progress; ``report()`` inside the notebook
works too (the kernel inherits the job directory through the environment).

The executed notebook, outputs and all, is written to the job's outputs even
when a cell fails, so the failing cell can be read where it failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.executor.agent import Agent
from cosmic_horizons_lab.executor.context import JobContext
from cosmic_horizons_lab.executor.script import open_inside

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


class NotebookCellFailed(Exception):
    """A cell raised: the job fails with the cell's index (0-based, in the notebook as run) and traceback."""


def parameter_source(parameters: dict[str, Any]) -> str:
    """The injected cell's Python: one assignment per parameter, values as Python literals.

    Values come from JSON, so ``repr`` of what ``json`` decoded is a literal Python reads
    back as the same value (true/false/null become True/False/None).
    """
    lines = ["# Parameters injected by Cosmic Horizons"]
    for name, value in parameters.items():
        lines.append(f"{name} = {value!r}")
    return "\n".join(lines) + "\n"


def inject_parameters(nb: Any, parameters: dict[str, Any]) -> int:
    """Insert the parameters cell after the one tagged ``parameters`` (papermill's rule); its index."""
    import nbformat

    cell = nbformat.v4.new_code_cell(parameter_source(parameters))
    cell.metadata["tags"] = [INJECTED_TAG]
    # A notebook run before keeps its old injected cell out: the new values replace it.
    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    tagged = [i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    at = tagged[0] + 1 if tagged else 0
    nb.cells.insert(at, cell)
    return at


class NotebookAgent(Agent):
    name = "Notebook"
    description = ("Run a Jupyter notebook from the server's root directory as a job, with parameters "
                   "injected after its cell tagged 'parameters' (papermill's convention).")
    requires_dataset = False
    extra = "notebook"
    root_file_param = "path"
    params_schema = {
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "pattern": r"\.ipynb$",
                "description": "Path of the notebook, relative to the server's root directory.",
            },
            "parameters": {
                "type": "object",
                "description": "Values for the notebook's parameters cell (names to JSON values).",
                "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                "default": {},
            },
            "kernel": {
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "description": "Kernel to run it with; default: the notebook's own kernelspec, else python3.",
            },
            "cell_timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": 604800,
                "description": "Seconds one cell may run; default: no limit (the job's max_runtime still holds).",
            },
        },
        "required": ["path"],
    }

    def run(self, job: JobContext) -> dict[str, Any]:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError

        root = job.server_root or Path.cwd()
        path, source = open_inside(root, job.params["path"])
        nb = nbformat.reads(source.decode("utf-8"), as_version=4)
        parameters = dict(job.params.get("parameters") or {})
        injected_at = inject_parameters(nb, parameters)
        kernel = job.params.get("kernel") or nb.metadata.get("kernelspec", {}).get("name") or "python3"
        code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        done = 0

        def on_cell_executed(cell: Any, cell_index: int, **_: Any) -> None:
            nonlocal done
            if cell.cell_type != "code":
                return
            done += 1
            job.report(progress=min(0.99, done / max(1, len(code_cells))), stage=f"cell {cell_index}",
                       cells_executed=done, cells_total=len(code_cells))
            print(f"executed cell {cell_index} ({done} of {len(code_cells)})", flush=True)

        client = NotebookClient(
            nb,
            kernel_name=kernel,
            timeout=job.params.get("cell_timeout"),
            resources={"metadata": {"path": str(path.parent)}},  # the kernel's cwd: beside the notebook
            on_cell_executed=on_cell_executed,
        )
        out = job.outputs / path.name
        job.report(progress=0.0, stage="starting kernel", kernel=kernel, cells_total=len(code_cells))
        try:
            client.execute()
        except CellExecutionError as exc:
            failed = _failed_cell(nb)
            raise NotebookCellFailed(f"cell {failed} failed: {exc.ename}: {exc.evalue}\n{_traceback(nb, failed)}") from None
        finally:
            nbformat.write(nb, str(out))
        return {"notebook": job.params["path"], "executed": out.name, "cells_executed": done,
                "parameters": json.loads(json.dumps(parameters, default=str)),
                "injected_cell": injected_at, "kernel": kernel}


def _failed_cell(nb: Any) -> int | None:
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return i
    return None


def _traceback(nb: Any, index: int | None) -> str:
    """The failing cell's traceback as plain text (nbclient keeps it with ANSI colours)."""
    import re

    if index is None:
        return ""
    for output in nb.cells[index].get("outputs", []):
        if output.get("output_type") == "error":
            text = "\n".join(output.get("traceback", []))
            return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)[-3000:]
    return ""
