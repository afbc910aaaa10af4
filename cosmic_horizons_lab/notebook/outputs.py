"""A job's output files as Python objects: ``job.outputs()`` and ``job.output(name)``.

Reading a file is the kernel's business, not the server's: the server lists
and serves the bytes; here a file is read from the shared filesystem when the
kernel can see it (no copy over HTTP), and turned into the object its
extension suggests (FITS → HDUList, ``.npz`` → numpy, ``.ecsv`` → Table, …).
"""

from __future__ import annotations

import io
import json
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.lab import Lab

__all__ = ["Output", "Outputs"]


class Output:
    """One output file of a job: ``name``, ``size``, ``sha256``, ``url``; ``load()`` reads it."""

    def __init__(self, lab: "Lab", job_id: str, entry: dict[str, Any], directory: str | None = None) -> None:
        self.lab = lab
        self.job_id = job_id
        self.entry = entry
        #: Path below the job's outputs/ folder.
        self.name: str = str(entry.get("path") or entry.get("name") or "")
        self.size: int | None = entry.get("size_bytes", entry.get("size"))
        self.sha256: str | None = entry.get("sha256")
        self.url: str | None = entry.get("url") or entry.get("download_url")
        self.directory = directory

    def __repr__(self) -> str:
        return f"<Output {self.name} ({self.size} bytes) of job {self.job_id}>"

    def local_path(self) -> Path | None:
        """The file itself, when this kernel shares the server's filesystem."""
        if not self.directory:
            return None
        candidate = Path(self.directory) / self.name
        return candidate if candidate.is_file() else None

    def read_bytes(self) -> bytes:
        local = self.local_path()
        if local is not None:
            return local.read_bytes()
        job = urllib.parse.quote(str(self.job_id), safe="")
        return self.lab.client.request("GET", f"jobs/{job}/outputs/{urllib.parse.quote(self.name)}", raw=True)

    def load(self) -> Any:
        """The file as a Python object: JSON → dict/list, FITS → astropy HDUList,
        .npy/.npz → numpy, .csv/.ecsv/.vot → astropy Table, text → str, else bytes."""
        name = self.name.lower()
        data = self.read_bytes()
        if name.endswith(".json"):
            return json.loads(data)
        if name.endswith(".jsonl"):
            return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        if name.endswith((".fits", ".fit", ".fits.gz", ".fts")):
            from astropy.io import fits

            return fits.open(io.BytesIO(data))
        if name.endswith((".npy", ".npz")):
            import numpy as np

            return np.load(io.BytesIO(data), allow_pickle=False)
        if name.endswith((".ecsv", ".csv", ".vot", ".xml")):
            from astropy.table import Table

            fmt = {"ecsv": "ascii.ecsv", "csv": "ascii.csv"}.get(name.rsplit(".", 1)[-1], "votable")
            return Table.read(io.BytesIO(data) if fmt == "votable" else data.decode(), format=fmt)
        if name.endswith((".txt", ".log", ".md", ".py")):
            return data.decode()
        return data


class Outputs(list):
    """A job's outputs: a list of :class:`Output`, also indexable by file name."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for output in self:
                if output.name == key or output.name.endswith("/" + key):
                    return output
            raise KeyError(key)
        return super().__getitem__(key)

    def names(self) -> list[str]:
        return [o.name for o in self]
