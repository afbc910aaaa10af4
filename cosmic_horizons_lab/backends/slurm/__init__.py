"""The Slurm backend (``c.CosmicHorizons.backend = "slurm"``): see ``backend.py``.

The package re-exports what code outside it imports, so that it may be
rearranged inside without those imports changing.
"""

from cosmic_horizons_lab.backends.slurm.backend import SlurmBackend
from cosmic_horizons_lab.backends.slurm.commands import SlurmPermissionError, SlurmSubmitError
from cosmic_horizons_lab.backends.slurm.parsing import (
    QueueSnapshot,
    _node_usable,
    parse_exit_status,
    parse_gres,
    parse_sacct,
    parse_squeue_json,
    sacct_lookup,
)
from cosmic_horizons_lab.backends.slurm.states import map_slurm_state

# ``--time`` is the project's duration rule (protocol.durations), known here by its old name.
from cosmic_horizons_lab.protocol.durations import format_slurm_time as format_time_limit

__all__ = [
    "QueueSnapshot",
    "SlurmBackend",
    "SlurmPermissionError",
    "SlurmSubmitError",
    "_node_usable",
    "format_time_limit",
    "map_slurm_state",
    "parse_exit_status",
    "parse_gres",
    "parse_sacct",
    "parse_squeue_json",
    "sacct_lookup",
]
