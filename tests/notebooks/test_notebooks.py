"""The notebooks in notebooks/ run top to bottom against a real server (nbval, lax).

A JupyterLab with the extension is started (temporary root, the demo dataset
in its datasets folder); each notebook then runs under nbval in a kernel that
finds that server through ``COSMIC_HORIZONS_URL``/``COSMIC_HORIZONS_TOKEN``, the
way ``Lab()`` is pointed at a server from outside it. ``--nbval-lax``: outputs
carry addresses, ids and timings, so only errors fail a notebook.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from ..ui.conftest import LabServer, start_lab, stop_lab

import nbval  # noqa: F401  (the test extra installs it)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture
def jp_asyncio_loop() -> Iterator[object]:  # see tests/ui/conftest.py: no asyncio here
    import asyncio

    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    from cosmic_horizons_lab.data import DEMO_DATASETS

    base = tmp_path_factory.mktemp("notebooks")
    root, datasets = base / "root", base / "datasets"
    root.mkdir()
    datasets.mkdir()
    for dataset_id, path in DEMO_DATASETS.items():
        shutil.copy(path, datasets / f"{dataset_id}{Path(path).suffix}")
    lab = start_lab(root, base / "state", [f"--CosmicHorizons.datasets_dir={datasets}"])
    yield lab
    stop_lab(lab)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(notebook: Path, server: LabServer, tmp_path: Path) -> None:
    env = {**os.environ, "COSMIC_HORIZONS_URL": server.url, "COSMIC_HORIZONS_TOKEN": server.token,
           "MPLBACKEND": "Agg"}
    # A copy: nbval runs the notebook where it lies, and the repository's copy stays clean.
    copy = tmp_path / notebook.name
    shutil.copy(notebook, copy)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
         "--nbval-cell-timeout=300", "--rootdir", str(tmp_path), str(copy)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
