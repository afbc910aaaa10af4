"""Benchmark of dataset staging against a plain ``cp`` of the same file on the same disk.

Against a real ``jupyter server`` process (the embedded defaults: SQLite,
default ``tacc_scratch`` target under work_dir, 8 MiB chunks), for one file of
``--size-mb`` random bytes in the archive:

- ``cp`` of the file into the target folder (best of ``--repeat``; fsync'd, as
  staging fsyncs before the rename);
- staging with verification off: the copy phase alone (``copy_seconds``);
- staging with verification on (the default): copy, then the read-back
  SHA-256 of the staged copy (``verify_seconds``), end to end;
- the first staging of a file, whose archive checksum is not known yet and
  is computed while copying;
- a folder dataset (``--ms-copies`` copies of the demo observation written as a
  real Measurement Set, side by side in one ``.ms`` folder: thousands of
  casacore table files, large and small) against ``cp -r``: the per-file
  costs of staging a folder.

    python benchmarks/bench_staging.py [--size-mb 512] [--repeat 3] [--ms-copies 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.services import LabServer  # noqa: E402


def stage(client, dataset_id: str) -> dict:
    st = client.request("POST", "jobs/dataset/stage", {"dataset_id": dataset_id, "force": True})
    while True:
        status = client.request("GET", f"jobs/dataset/{dataset_id}/staging-status")
        if status["transfer_id"] == st["transfer_id"] and status["status"] in ("completed", "failed", "cancelled"):
            assert status["status"] == "completed", status
            break
        time.sleep(0.02)
    started = datetime.fromisoformat(status["started_at"])
    ended = datetime.fromisoformat(status["completed_at"])
    return {**status, "wall": (ended - started).total_seconds()}


def transfer_figures(server: LabServer, transfer_id: str) -> tuple[float, float]:
    import sqlite3

    db = sqlite3.connect(server.config["db_url"].split("///", 1)[1])
    try:
        return db.execute("SELECT copy_seconds, coalesce(verify_seconds, 0) FROM transfers WHERE id = ?",
                          (transfer_id,)).fetchone()
    finally:
        db.close()


def make_ms_folder(folder: Path, copies: int) -> tuple[int, int]:
    """``copies`` of the demo Measurement Set inside ``folder``; (files, bytes)."""
    import shutil

    from pyuvdata import UVData

    from cosmic_horizons_lab.data import DEMO_DATASETS
    from cosmic_horizons_lab.science.visibilities import quiet

    one = folder.parent / "demo-one.ms"
    with quiet():
        UVData.from_file(str(DEMO_DATASETS["VLA.TDEM0003.1src"])).write_ms(str(one))
    folder.mkdir()
    for i in range(copies):
        shutil.copytree(one, folder / f"part{i:03d}.ms")
    shutil.rmtree(one)
    files = [f for f in folder.rglob("*") if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files)


def bench_folder(root: Path, copies: int, repeat: int) -> None:
    """cp -r and staging alternate, so both meet the same state of the disk's write-back
    (which on a shared machine moves either by a factor of several); ratios are per pair."""
    src = root / "datasets" / "benchms.ms"
    nfiles, nbytes = make_ms_folder(src, copies)
    target = root / "jobs" / "staging" / "tacc_scratch"
    server = LabServer(root, config={"owner": "bench"}).start()
    pairs = []
    try:
        client = server.client()
        first = transfer_figures(server, stage(client, "benchms")["transfer_id"])  # also hashes the archive
        for _ in range(repeat):
            dest = target / "cp-copy.ms"
            subprocess.run(["sync"], check=True)
            t = time.perf_counter()
            subprocess.run(["cp", "-r", str(src), str(dest)], check=True)
            subprocess.run(["sync", "-f", str(dest)], check=True)
            cp = time.perf_counter() - t
            subprocess.run(["rm", "-rf", str(dest)], check=True)
            subprocess.run(["sync"], check=True)
            copy_s, verify_s = transfer_figures(server, stage(client, "benchms")["transfer_id"])
            pairs.append((cp, copy_s, verify_s))
    finally:
        server.stop()
    mb = nbytes / 1e6
    pairs.sort(key=lambda p: p[0] / p[1])
    cp, copy_s, verify_s = pairs[len(pairs) // 2]  # the median pair by ratio
    print(f"\nfolder: {copies} copies of the demo Measurement Set, {nfiles} files, {mb:.1f} MB; "
          f"median of {repeat} alternating pairs")
    print(f"cp -r (+sync -f):                {cp:7.3f} s  {mb / cp:8.1f} MB/s")
    print(f"staging: copy                    {copy_s:7.3f} s  {mb / copy_s:8.1f} MB/s  = {cp / copy_s:.2f} × cp -r")
    print(f"         copy+verify             {copy_s + verify_s:7.3f} s  {mb / (copy_s + verify_s):8.1f} MB/s  "
          f"= {cp / (copy_s + verify_s):.2f} × cp -r; verification overhead {100 * verify_s / copy_s:.0f}% of the copy")
    print("ratios of each pair (copy / cp -r): " + ", ".join(f"{c / s:.2f}" for c, s, _ in pairs))
    print(f"first staging (manifest hashed while copying): copy {first[0]:.3f} s ({mb / first[0]:.1f} MB/s), "
          f"verify {first[1]:.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ms-copies", type=int, default=64, help="0 skips the folder benchmark")
    args = ap.parse_args()
    size = args.size_mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-staging-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp) / "root"
        (root / "datasets").mkdir(parents=True)
        src = root / "datasets" / "bench.h5"
        with open(src, "wb") as fh:
            for _ in range(args.size_mb):
                fh.write(os.urandom(1024 * 1024))
        target = root / "jobs" / "staging" / "tacc_scratch"
        target.mkdir(parents=True)
        cp_times = []
        for _ in range(args.repeat):
            dest = target / "cp-copy.h5"
            t = time.perf_counter()
            subprocess.run(["cp", str(src), str(dest)], check=True)
            fd = os.open(dest, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            cp_times.append(time.perf_counter() - t)
            dest.unlink()
        cp = min(cp_times)

        results = {}
        for verify in (True, False):
            server = LabServer(root, config={"staging_verify": verify, "owner": "bench"}).start()
            try:
                client = server.client()
                runs = []
                for i in range(args.repeat + (1 if verify else 0)):
                    status = stage(client, "bench")
                    copy_s, verify_s = transfer_figures(server, status["transfer_id"])
                    runs.append((copy_s, verify_s, status["wall"]))
                if verify:
                    results["first"] = runs.pop(0)
                results[verify] = min(runs, key=lambda r: r[0] + r[1])
            finally:
                server.stop()

        mb = size / 1e6
        on_copy, on_verify, on_wall = results[True]
        off_copy, _, off_wall = results[False]
        first_copy, first_verify, _ = results["first"]
        print(f"file: {args.size_mb} MiB on {src.parent} (same filesystem as the target); best of {args.repeat}")
        print(f"cp (+fsync):                     {cp:7.3f} s  {mb / cp:8.1f} MB/s")
        print(f"staging, verify off (copy):      {off_copy:7.3f} s  {mb / off_copy:8.1f} MB/s  "
              f"= {cp / off_copy:.2f} × cp")
        print(f"staging, verify on: copy         {on_copy:7.3f} s  {mb / on_copy:8.1f} MB/s  = {cp / on_copy:.2f} × cp")
        print(f"                    read-back    {on_verify:7.3f} s  (SHA-256 of the staged copy)")
        print(f"                    copy+verify  {on_copy + on_verify:7.3f} s  {mb / (on_copy + on_verify):8.1f} MB/s  "
              f"= {cp / (on_copy + on_verify):.2f} × cp; verification overhead "
              f"{100 * on_verify / on_copy:.0f}% of the copy")
        print(f"first staging (archive checksum computed while copying): copy {first_copy:.3f} s "
              f"({mb / first_copy:.1f} MB/s), verify {first_verify:.3f} s")
        print(f"end to end incl. queue and events: verify on {on_wall:.3f} s, off {off_wall:.3f} s")
        if args.ms_copies:
            bench_folder(root, args.ms_copies, args.repeat)


if __name__ == "__main__":
    main()
