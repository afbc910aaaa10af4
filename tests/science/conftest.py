"""Shared fixtures of the science tests: small synthetic observations and job directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cosmic_horizons_lab.data import DEMO_DATASETS

REPO = Path(__file__).resolve().parents[2]


def run_job(job_dir: Path, agent: str, params: dict[str, Any], dataset: dict[str, Any] | None = None,
            inputs: list[Path] | None = None, timeout: float = 240) -> tuple[int, list[dict[str, Any]]]:
    """Run one job through the executor entry point, as a backend would; return (exit code, records)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps({
        "id": job_dir.name, "agent": agent, "params": params, "dataset": dataset,
        "inputs": [str(p) for p in inputs or []],
    }))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "cosmic_horizons_lab.executor", str(job_dir)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    events = job_dir / "events.jsonl"
    records = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:])
    return proc.returncode, records


@pytest.fixture(scope="session")
def demo_path() -> Path:
    return DEMO_DATASETS["VLA.TDEM0003.1src"]


@pytest.fixture(scope="session")
def sim_rfi():
    from cosmic_horizons_lab.science.simulate import preset, simulate

    return simulate(preset("SIM.rfi"))


@pytest.fixture(scope="session")
def sim_sky():
    from cosmic_horizons_lab.science.simulate import preset, simulate

    return simulate(preset("SIM.sky"))
