"""The server's one way to run science: a child process with limits, answering JSON."""

from __future__ import annotations

import pytest

from cosmic_horizons_lab.data import DEMO_DATASETS
from cosmic_horizons_lab.server import science_worker
from cosmic_horizons_lab.server.science_worker import ScienceUnavailable, run_science

DEMO = str(DEMO_DATASETS["VLA.TDEM0003.1src"])


def test_describe_reads_the_shape_in_a_child_process():
    from pyuvdata import UVData

    (shape,) = run_science("inspection", ["describe", DEMO])
    uv = UVData.from_file(DEMO, read_data=False)  # what pyuvdata itself says of the file
    assert shape == {"baselines": uv.Nbls, "times": uv.Ntimes, "channels": uv.Nfreqs,
                     "polarizations": uv.Npols, "visibilities": uv.Nblts * uv.Nfreqs * uv.Npols}


def test_a_worker_over_its_memory_limit_fails_cleanly(monkeypatch):
    """Reading must not take the server's machine down: the child is capped, and the server
    gets an answer it can serve (no shape, or an error), not a crash and not the shape."""
    monkeypatch.setattr(science_worker, "MEMORY_BYTES", 400 * 1024**2)  # too little to read it
    try:
        answer = run_science("inspection", ["describe", DEMO], timeout=60)
    except ScienceUnavailable:
        return
    assert answer == [None]


def test_a_worker_over_its_time_limit_fails_cleanly():
    with pytest.raises(ScienceUnavailable, match="took over"):
        run_science("inspection", ["describe", DEMO], timeout=0.01)
