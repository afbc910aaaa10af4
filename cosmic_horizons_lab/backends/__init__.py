"""Execution backends: where jobs run (see :mod:`.base` for the interface)."""

from cosmic_horizons_lab.backends.base import Backend, BackendJobState, BackendUnavailable, GpuPool, LaunchSpec

__all__ = ["Backend", "BackendJobState", "BackendUnavailable", "GpuPool", "LaunchSpec"]
