"""Datasets on disk: the formats we know by name, and what a dataset's files are.

The one home of the dataset vocabulary: the server lists and stages datasets
with it, the science reads them with it. A dataset is a file, or a folder (a
Measurement Set is a folder of casacore tables); a folder is never followed
through a symbolic link.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: File extensions we know, longest first, and the format each means.
FORMATS: dict[str, str] = {
    ".uvfits": "uvfits",
    ".uvf": "uvfits",
    ".uvh5": "uvh5",
    ".miriad": "miriad",
    ".ms": "measurement_set",
    ".fits": "fits",
    ".fit": "fits",
    ".h5": "uvh5",
    ".npz": "npz",
    ".csv": "csv",
}

#: Channels per chunk of a dataset converted for GPU processing (UVH5, baseline-time order):
#: enough for SumThreshold's frequency windows. The conversion writes it, the advice names it.
CONVERTED_CHANNEL_CHUNK = 128

#: Formats that hold visibilities (what the calibration and imaging agents read).
VISIBILITY_FORMATS = frozenset({"uvfits", "uvh5", "miriad", "measurement_set"})


def split_name(name: str) -> tuple[str, str]:
    """``(id, format)`` of a file or folder name: ``"x.uvfits"`` → ``("x", "uvfits")``."""
    lower = name.lower()
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], fmt
    stem, _, ext = name.rpartition(".")
    return (stem, ext.lower() or "unknown") if stem else (name, "unknown")


def format_of(path: str | Path) -> str:
    """The format a path's name says (``unknown`` when none)."""
    return split_name(Path(path).name)[1]


class UnsafeDataset(ValueError):
    """A folder dataset holds a symbolic link: following it could lead out of the archive."""


def dataset_files(path: Path) -> list[Path]:
    """The files a dataset is made of, in a stable order: the file itself, or every file in its folder.

    Staging copies and checksums a folder file by file, in this order (sorted by
    relative path, so two copies list alike). A symbolic link inside the folder
    raises :class:`UnsafeDataset` rather than be followed.
    """
    if not path.is_dir():
        return [path]
    top = str(path)
    rels: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        prefix = os.path.relpath(dirpath, top)
        prefix = "" if prefix == "." else prefix + "/"
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise UnsafeDataset(f"{prefix}{name} in {path.name} is a symbolic link")
        rels.extend(prefix + name for name in filenames)
    return [path / rel for rel in sorted(rels)]


def dataset_bytes(path: Path) -> int:
    """Bytes in a dataset's files (links inside a folder are not followed, nor counted)."""
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total
