"""Notebook jobs against a real server and local backend, checked against papermill.

Papermill is the tool notebook users know for parameterised runs; nobody here
wrote it. The same notebook with the same parameters, run by papermill and as a
``Notebook`` job, must put the injected cell at the same place and print the same
outputs cell for cell.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from cosmic_horizons_lab.protocol.jobdir import job_dir

PARAMETERS = {"alpha": 21, "name": "3C286", "bands": ["L", "S"], "deep": True, "limit": None}


def write_notebook(root: Path, name: str, cells: list[tuple[str, str, list[str]]]) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, source, tags in cells:
        cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(root / name))
    return name


ANALYSIS = [
    ("markdown", "# A parameterised analysis", []),
    ("code", "import os\nprint('before', os.getcwd() != '')", []),
    ("code", "alpha = 1\nname = 'nothing'\nbands = []\ndeep = False\nlimit = 5", ["parameters"]),
    ("code", "print(alpha * 2, name, bands, deep, limit)", []),
    ("code", "from cosmic_horizons_lab.executor import report\nreport(progress=0.5, custom_metric=7)\n"
             "print(sorted(k for k in ('alpha', 'name') if k in globals()))", []),
    ("code", "{'sum': alpha + len(bands)}", []),
]


def text_outputs(nb) -> list[list[str]]:
    """Each code cell's printed and displayed text, in order (what a reader compares)."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        # A stream may arrive in several chunks, split anywhere: compare what it printed, joined.
        printed = "".join(o["text"] for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        shown = [o["data"]["text/plain"] for o in cell.get("outputs", []) if "text/plain" in o.get("data", {})]
        out.append(([printed] if printed else []) + shown)
    return out


def injected_index(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if "injected-parameters" in c.get("metadata", {}).get("tags", []))


@pytest.mark.timeout(240)
async def test_a_parameterised_notebook_runs_as_papermill_runs_it(api, jp_root_dir, work_dir, tmp_path):
    import papermill

    root = Path(jp_root_dir)
    path = write_notebook(root, "analysis/x.ipynb", ANALYSIS)
    code, job, _ = await api.post("jobs/submit", {"agent": "Notebook", "params": {"path": path, "parameters": PARAMETERS}})
    assert code == 201, job
    done = await api.wait_for(job["id"], timeout=180)
    assert done["status"] == "COMPLETED", done
    assert done["result"]["executed"] == "x.ipynb" and done["result"]["cells_executed"] == 6
    # report() inside the notebook reached the job, and each cell counted as progress.
    assert done["metrics"]["custom_metric"] == 7 and done["metrics"]["cells_total"] == 6
    _, events, _ = await api.get(f"jobs/{job['id']}/events")
    per_cell = [e for e in events["events"] if e["type"] == "job.progress" and "cells_executed" in (e["payload"].get("metrics") or {})]
    # (the server may fold progress records that arrive together into one event)
    assert per_cell and per_cell[-1]["payload"]["metrics"]["cells_executed"] == 6
    _, logs, _ = await api.get(f"jobs/{job['id']}/logs")
    text = logs["data"]
    assert all(f"({n} of 6)" in text for n in range(1, 7)), logs
    # The executed notebook is an output of the job.
    _, outputs, _ = await api.get(f"jobs/{job['id']}/outputs")
    listed = outputs if isinstance(outputs, list) else outputs.get("files", [])
    assert any(o.get("name", o.get("path")) == "x.ipynb" for o in listed), outputs
    ours = nbformat.read(str(job_dir(work_dir, "astro", job["id"]) / "outputs" / "x.ipynb"), as_version=4)

    theirs = papermill.execute_notebook(str(root / path), str(tmp_path / "papermill.ipynb"),
                                        parameters=PARAMETERS, kernel_name="python3", progress_bar=False,
                                        cwd=str(root / "analysis"))
    assert injected_index(ours) == injected_index(theirs) == 3
    ours_text, theirs_text = text_outputs(ours), text_outputs(theirs)
    assert ours_text == theirs_text, (ours_text, theirs_text)
    assert ours_text[3] == ["42 3C286 ['L', 'S'] True None\n"]


@pytest.mark.timeout(180)
async def test_a_failing_cell_fails_the_job_with_its_index_and_traceback(api, jp_root_dir, work_dir):
    path = write_notebook(Path(jp_root_dir), "broken.ipynb", [
        ("code", "x = 1", []),
        ("markdown", "then it breaks", []),
        ("code", "def calibrate(flux):\n    raise ValueError(f'bad flux {flux}')\ncalibrate(-1)", []),
        ("code", "print('never')", []),
    ])
    _, job, _ = await api.post("jobs/submit", {"agent": "Notebook", "params": {"path": path}})
    done = await api.wait_for(job["id"], timeout=150)
    assert done["status"] == "FAILED", done
    # Index 3: the injected parameters cell comes first in a notebook without a parameters cell.
    assert "cell 3 failed: ValueError: bad flux -1" in done["error"], done["error"]
    assert "calibrate(-1)" in done["error"] and "\x1b[" not in done["error"]
    executed = nbformat.read(str(job_dir(work_dir, "astro", job["id"]) / "outputs" / "broken.ipynb"), as_version=4)
    assert executed.cells[3].outputs[0]["ename"] == "ValueError"
    assert not executed.cells[4].get("outputs")


@pytest.mark.parametrize("params, field", [
    ({"path": "../outside.ipynb"}, "params.path"),
    ({"path": "x.py"}, "params.path"),
    ({"path": "x.ipynb", "parameters": {"not valid": 1}}, "params.parameters"),
    ({"path": "x.ipynb", "kernel": ""}, "params.kernel"),
])
async def test_bad_notebook_parameters_are_refused_naming_the_field(api, params, field):
    code, body, _ = await api.post("jobs/submit", {"agent": "Notebook", "params": params})
    assert code in (400, 422), body
    assert body["field"].startswith(field), body


def test_injected_parameters_read_back_as_the_same_values() -> None:
    from cosmic_horizons_lab.executor.agents.notebook import parameter_source

    namespace: dict = {}
    exec(parameter_source(PARAMETERS), namespace)
    assert {k: namespace[k] for k in PARAMETERS} == json.loads(json.dumps(PARAMETERS))
