"""Rewriting visibility files in the layout GPU processing reads fastest.

Run by the server's staging in a child process
(``python -m cosmic_horizons_lab.science.conversion uvh5 SRC DST``), so that
pyuvdata and a whole dataset in memory stay out of the server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.protocol.datasets import CONVERTED_CHANNEL_CHUNK
from cosmic_horizons_lab.science.visibilities import quiet



def convert_to_uvh5(src: Path, dst: Path) -> dict[str, Any]:
    """Rewrite a visibility file as UVH5 in baseline-time order with chunked channels.

    Baseline-time order puts each baseline's time × channel plane in one
    contiguous, chunked block: what flagging and calibration read on a GPU.
    Returns the layout written; raises ValueError if it does not read back.
    """
    from pyuvdata import UVData

    with quiet():
        uv = UVData.from_file(str(src))
        uv.reorder_blts(order="baseline", minor_order="time")
        chunks = (max(1, uv.Ntimes), min(uv.Nfreqs, CONVERTED_CHANNEL_CHUNK), uv.Npols)
        uv.write_uvh5(str(dst), clobber=True, chunks=chunks, run_check=False)
        back = UVData.from_file(str(dst), file_type="uvh5", read_data=False)
    if (back.Nblts, back.Nfreqs, back.Npols) != (uv.Nblts, uv.Nfreqs, uv.Npols):
        raise ValueError("the converted file does not read back with the source's shape")
    return {"blt_order": "baseline-time", "chunks": list(chunks)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "uvh5":
        print("usage: python -m cosmic_horizons_lab.science.conversion uvh5 SRC DST", file=sys.stderr)
        return 2
    json.dump(convert_to_uvh5(Path(args[1]), Path(args[2])), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
