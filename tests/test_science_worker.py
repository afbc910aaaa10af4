"""The server's one way to run science: a child process with limits, answering JSON."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest

from cosmic_horizons_lab.data import DEMO_DATASETS
from cosmic_horizons_lab.server import datasets as datasets_module
from cosmic_horizons_lab.server import science_worker
from cosmic_horizons_lab.server.science_worker import BACKGROUND_NICENESS, ScienceUnavailable, run_science

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


def _worker_niceness(**kwargs) -> list[int]:
    """The niceness of the worker's Python process, sampled from outside (psutil) while
    ``run_science`` describes the demo, and the answer checked."""
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        me = psutil.Process()
        while not done.is_set():
            for child in me.children(recursive=True):
                try:
                    cmd = child.cmdline()
                    if cmd and Path(cmd[0]).name.startswith("python") and "cosmic_horizons_lab.science.inspection" in cmd:
                        seen.append(child.nice())
                except psutil.Error:  # it ended between the listing and the look
                    pass
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        (shape,) = run_science("inspection", ["describe", DEMO], **kwargs)
    finally:
        done.set()
        watcher.join()
    assert shape["visibilities"] == 348160
    assert seen, "the worker was never seen running"
    return seen


def test_a_background_worker_yields_the_cpu_and_a_waited_on_one_does_not():
    """The start-up's dataset warm-up took a third of this machine's two cores from the first
    submissions; work nobody waits on now runs niced, work a request waits on does not."""
    own = os.nice(0)
    assert set(_worker_niceness(background=True)) == {min(19, own + BACKGROUND_NICENESS)}
    assert set(_worker_niceness()) == {own}


def test_the_start_up_warm_up_reads_in_a_background_worker(tmp_path, monkeypatch):
    """The warm-up reads the archive's files in a niced worker; the demo's and the presets'
    shapes ship with the package (data.BUILTIN_SHAPES), so it starts none for them."""
    import shutil

    from cosmic_horizons_lab.server.datasets import DatasetRegistry

    shutil.copy(DEMO, tmp_path / "mine.uvfits")
    registry = DatasetRegistry(tmp_path, tmp_path / "sim")
    calls: list[tuple[list[str], bool]] = []
    original = science_worker.run_science

    def recording(module: str, args: list[str], **kwargs):
        calls.append((args, kwargs.get("background", False)))
        return original(module, args, **kwargs)

    monkeypatch.setattr(datasets_module, "run_science", recording)
    registry.warm()
    assert calls == [(["describe", str(tmp_path / "mine.uvfits")], True)]
    # and a listing is then served from what it read, with no worker of its own
    shapes = {d.id: shape for d, shape in zip(registry.list(), registry.describe_many(registry.list()))}
    assert len(calls) == 1
    assert shapes["mine"] == shapes["VLA.TDEM0003.1src"] == {
        "baselines": 153, "times": 15, "channels": 64, "polarizations": 4, "visibilities": 348160}
    assert shapes["SIM.small"]["channels"] == 32  # not generated yet, and listed with its shape
