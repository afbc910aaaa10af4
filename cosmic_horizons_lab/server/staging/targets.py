"""Staging targets: the named places (scratch filesystems) datasets may be copied to.

Why names: a request names a target, never a path, so only places an
operator configured can be written to. Why a purge age: $SCRATCH on TACC
deletes files untouched for ``purge_days`` (10 there), so a staged copy
older than that may be partly gone and is not trusted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """A named place datasets can be staged to (only configured names are accepted)."""

    name: str
    root: Path
    purge_days: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.root), "purge_days": self.purge_days}

    def is_stale(self, path: Path) -> bool:
        """Whether the copy at ``path`` (in this target) is gone or older than the purge age."""
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > self.purge_days * 86400


def targets_from_settings(configured: dict[str, Any], default_root: Path, purge_days: float) -> dict[str, Target]:
    """Targets from ``staging_targets`` (``{name: path}`` or ``{name: {"path", "purge_days"}}``).

    ``tacc_scratch`` always exists: ``<work_dir>/staging/tacc_scratch`` unless configured.
    """
    out = {"tacc_scratch": Target("tacc_scratch", default_root / "tacc_scratch", purge_days)}
    for name, spec in (configured or {}).items():
        if isinstance(spec, str):
            spec = {"path": spec}
        root = Path(os.path.expandvars(os.path.expanduser(spec["path"])))
        out[name] = Target(name, root, float(spec.get("purge_days", purge_days)))
    for t in out.values():
        t.root.mkdir(parents=True, exist_ok=True)
    return out
