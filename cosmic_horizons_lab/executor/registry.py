"""Where agent names resolve to classes.

Built-in agents are listed by import path and loaded on first use; other
packages add agents through the ``cosmic_horizons_lab.agents`` entry-point
group, so a lab can ship its own workload without forking this one.
"""

from __future__ import annotations

import importlib
from functools import cache

from cosmic_horizons_lab.executor.agent import Agent

BUILTIN_AGENTS: dict[str, str] = {
    "Script": "cosmic_horizons_lab.executor.script:ScriptAgent",
    "AlphaCal": "cosmic_horizons_lab.executor.agents.alphacal:AlphaCalAgent",
    "ImageReconstruction": "cosmic_horizons_lab.executor.agents.reconstruction:ImageReconstructionAgent",
    "AnomalyDetection": "cosmic_horizons_lab.executor.agents.anomaly:AnomalyDetectionAgent",
    "Notebook": "cosmic_horizons_lab.executor.agents.notebook:NotebookAgent",
    "SlurmScript": "cosmic_horizons_lab.executor.agents.slurm_script:SlurmScriptAgent",
}


def _load(ref: str) -> type[Agent]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@cache
def agents() -> dict[str, type[Agent]]:
    """All agents by name, built-ins first; an entry point cannot shadow a built-in."""
    from importlib.metadata import entry_points  # 20-40 ms: only when every agent is wanted

    found = {name: _load(ref) for name, ref in BUILTIN_AGENTS.items()}
    for ep in entry_points(group="cosmic_horizons_lab.agents"):
        found.setdefault(ep.name, ep.load())
    return found


def get_agent(name: str) -> type[Agent] | None:
    """The agent called ``name``. A built-in one is imported alone: a job runs one agent,
    and a short job's start-up is mostly imports (every agent and the entry-point scan
    cost it tens of milliseconds)."""
    if name in BUILTIN_AGENTS:
        return _load(BUILTIN_AGENTS[name])
    return agents().get(name)
