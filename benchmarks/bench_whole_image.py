"""A whole dirty image, as a user gets it, against WSClean: Measurement Set in, FITS out.

    python benchmarks/bench_whole_image.py                 # 512² and 2048², best of 3
    python benchmarks/bench_whole_image.py --sizes 512 --repeat 2

The data: a VLA observation (the 19 antennas of the demo, 171 baselines, 4 linear
polarisations, ``--times`` integrations of 30 s through transit, ``--channels`` channels
in L band) laid out by pyuvdata and written by it as a Measurement Set; the visibilities
are a few point sources plus noise, computed here with numpy (the speed of imaging does
not depend on what the sky is). Both sides image the same MS to the same grid (size,
cell), natural weighting, Stokes I, ``niter 0``, a dirty image and its PSF as FITS:

* ours: a fresh ``python`` process doing what the ImageReconstruction agent does with
  ``niter 0`` (``read_visibilities(writable=False)`` → ``make_images`` → ``write_fits`` of ``dirty.fits``
  and ``psf.fits``), imports included, ending as the executor's job process does
  (``gc.freeze()``, so that the interpreter's teardown does not collect every object
  torch and numba made);
* ``--as-job``: ours as the product runs it: an ImageReconstruction job (``niter 0``,
  the agent's defaults: ε 1e-4) submitted to the local backend, whose fork
  server hands it to its warm spare (``executor/warmup.py``: torch, numba and the science
  imported, the compiled loops loaded, before the job came). Timed from ``submit`` to the
  backend seeing the job end, with the job's own records, resource sampling and trace;
  before each run the bench waits for the next spare to be warm, as it is when a user looks
  at one image before asking for the next;
* WSClean: ``wsclean -niter 0 -make-psf -size N N -scale … -weight natural -pol I -j
  <CPUs>`` on the same MS: its default w-stacking gridder, which is faster than its
  w-gridder and differs from it (and from ours) by ~6 % rms, mostly toward the edges (the
  last column); ``--wsclean-wgridder`` adds ``-use-wgridder``, the algorithm ours implements,
  at its default accuracy 1e-4 (ours's default too).

Each is timed from the start of its process to its end, alternately (ours, WSClean,
ours, WSClean …), best of ``--repeat``, with the load average next to each. Ours also
prints where its time went (the trace of its own stages).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

C = 299_792_458.0


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def make_ms(path: Path, n_times: int, n_channels: int, seed: int = 3) -> tuple[Path, int, float]:
    """The observation as a Measurement Set; returns it, its Stokes I sample count and the
    cell (arcsec) that samples its longest baseline's fringe 4×, as ours chooses by default."""
    from tests.science import external as ext

    freqs = 1.3e9 + 1e6 * np.arange(n_channels)
    band = ext.Band("L", tuple(float(f) for f in freqs), cell_arcsec=8.0, npix=512)
    uv = ext.empty_observation(band, n_times=n_times, integration_s=30.0)
    rng = np.random.default_rng(seed)
    lam = C / freqs
    u = uv.uvw_array[:, None, 0] / lam[None, :]
    v = uv.uvw_array[:, None, 1] / lam[None, :]
    arcmin = np.pi / 180 / 60
    vis = np.zeros((uv.Nblts, n_channels), np.complex128)
    for l_am, m_am, flux in ((0.0, 0.0, 1.0), (8.0, -5.0, 0.5), (-12.0, 9.0, 0.3)):
        vis += flux * np.exp(-2j * np.pi * (u * l_am * arcmin + v * m_am * arcmin))
    shape = uv.data_array.shape  # (Nblts, Nfreqs, Npols)
    data = np.zeros(shape, np.complex64)
    noise = 0.5 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    # linear feeds: XX = YY = I, so I = (XX + YY) / 2 as ours and WSClean take it
    data[..., 0] = vis
    data[..., 1] = vis
    uv.data_array = (data + noise).astype(np.complex64)
    uv.flag_array[:] = False
    uv.nsample_array[:] = 1.0
    ext.write(uv, path)
    uvmax = float(np.abs(uv.uvw_array[:, :2]).max() / lam.min())
    return path, uv.Nblts * n_channels, float(np.degrees(1.0 / (4.0 * uvmax)) * 3600)


OURS = r"""
import sys, time, json
t0 = time.perf_counter()
from pathlib import Path
import torch
from cosmic_horizons_lab.science.imaging import make_images, write_fits
from cosmic_horizons_lab.science.visibilities import read_visibilities
t1 = time.perf_counter()
ms, out, npix, cell = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
try:
    vs = read_visibilities(ms, writable=False)
except TypeError:  # a checkout from before the direct MS reader (--package-root)
    vs = read_visibilities(ms)
t2 = time.perf_counter()
result = make_images(vs, torch.device("cpu"), npix=npix, cell_arcsec=cell, niter=0)
t3 = time.perf_counter()
write_fits(out / "dirty.fits", result.dirty, result)
write_fits(out / "psf.fits", result.psf, result)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "read": t2 - t1, "image": t3 - t2, "write": t4 - t3}), flush=True)
if len(sys.argv) > 5:
    # --freeze-at-exit (the default): skip the interpreter's final garbage collections over
    # every object torch and numba made (2-10 s of teardown on this shared machine, measured
    # with gdb in Py_FinalizeEx -> finalize_modules -> gc_collect_main), as the executor does
    import gc
    gc.freeze()
"""


def run_ours(ms: Path, out: Path, npix: int, cell: float, root: Path = ROOT, freeze: bool = False
             ) -> tuple[float, dict]:
    out.mkdir(parents=True, exist_ok=True)
    t, cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run([sys.executable, "-c", OURS, str(ms), str(out), str(npix), str(cell),
                           *(["freeze"] if freeze else [])],
                          check=True, capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    wall = time.perf_counter() - t
    return wall, {**json.loads(proc.stdout.strip().splitlines()[-1]), "cpu": children_cpu() - cpu}


class AsJob:
    """Ours as an ImageReconstruction job on the local backend, started by its warm spare."""

    def __init__(self, root: Path, package_root: Path) -> None:
        import asyncio

        sys.path.insert(0, str(package_root))
        from cosmic_horizons_lab.backends.local import LocalBackend

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.loop = asyncio.new_event_loop()
        self.backend = LocalBackend(slots=1, gpus=[], work_dir=root / "jobs", python=sys.executable)
        self.log = root / "jobs" / "forkserver.log"
        self.runs = 0

    def _wait_for_spare(self, timeout: float = 300.0) -> None:
        """Until the fork server's log says one more spare is warm than jobs were run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text() if self.log.exists() else ""
            if sum(": warm (" in line for line in text.splitlines()) > self.runs:
                return
            time.sleep(0.05)
        raise TimeoutError(f"no warm spare in {timeout} s:\n{text}")

    def run(self, ms: Path, out: Path, npix: int, cell: float) -> tuple[float, dict]:
        import asyncio
        import uuid

        from cosmic_horizons_lab.backends.base import LaunchSpec
        from cosmic_horizons_lab.protocol import jobdir

        async def one() -> tuple[float, Path, str]:
            job_id = uuid.uuid4().hex
            job_dir = jobdir.job_dir(self.root / "jobs", "bench", job_id)
            jobdir.write_job_file(job_dir, {
                "id": job_id, "agent": "ImageReconstruction",
                "params": {"npix": npix, "cell_arcsec": cell, "niter": 0, "gpu_count": 0},
                "dataset": {"id": "bench", "path": str(ms), "format": "ms"}, "inputs": [],
                "correlation_id": job_id, "user": "bench", "server_root": str(self.root), "attempt": 1,
                "sample_interval": 1.0,
                # a trace, so that the job writes its stages' spans (read, grid, write)
                jobdir.TRACEPARENT_KEY: f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
            })
            spec = LaunchSpec(job_id=job_id, job_dir=job_dir, agent="ImageReconstruction", user="bench",
                              gpu_count=0, max_runtime_seconds=None, correlation_id=job_id,
                              launch_token="bench" + job_id)
            t = time.perf_counter()
            bid = await self.backend.submit(spec)
            while (state := (await self.backend.poll([bid]))[bid]).status == "RUNNING":
                await asyncio.sleep(0.01)
            return time.perf_counter() - t, job_dir, state.status

        self._start()
        self._wait_for_spare()
        wall, job_dir, status = self.loop.run_until_complete(one())
        self.runs += 1
        if status != "COMPLETED":
            raise RuntimeError(f"the job ended {status}: {(job_dir / 'job.log').read_text()[-2000:]}")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("dirty.fits", "psf.fits"):
            shutil.copy(job_dir / "outputs" / name, out / name)
        # the job's stages from its own spans; its process is the fork server's child, not
        # ours, so its CPU time is not counted here
        spans = {}
        for line in (job_dir / jobdir.SPANS_FILE).read_text().splitlines():
            span = json.loads(line)
            spans[span["name"]] = spans.get(span["name"], 0.0) + (span["end_ns"] - span["start_ns"]) / 1e9
        stages = {"import": 0.0, "read": spans.get("read", float("nan")),
                  "image": spans.get("grid", 0.0) + spans.get("clean", 0.0), "write": spans.get("write", float("nan"))}
        return wall, {**stages, "job": spans.get("executor.run", float("nan")), "cpu": float("nan")}

    def _start(self) -> None:
        """Start the fork server (and so its first spare) with a throwaway Script job."""
        if self.backend._forker is not None:
            return
        import asyncio
        import uuid

        from cosmic_horizons_lab.backends.base import LaunchSpec
        from cosmic_horizons_lab.protocol import jobdir

        async def first() -> None:
            job_id = uuid.uuid4().hex
            job_dir = jobdir.job_dir(self.root / "jobs", "bench", job_id)
            (self.root / "noop.py").write_text("pass\n")
            jobdir.write_job_file(job_dir, {
                "id": job_id, "agent": "Script", "params": {"path": "noop.py"}, "dataset": None, "inputs": [],
                "correlation_id": job_id, "user": "bench", "server_root": str(self.root), "attempt": 1,
                "sample_interval": 1.0,
            })
            bid = await self.backend.submit(LaunchSpec(
                job_id=job_id, job_dir=job_dir, agent="Script", user="bench", gpu_count=0,
                max_runtime_seconds=None, correlation_id=job_id, launch_token="bench" + job_id))
            while (await self.backend.poll([bid]))[bid].status == "RUNNING":
                await asyncio.sleep(0.05)

        self.loop.run_until_complete(first())

    def close(self) -> None:
        self.loop.run_until_complete(self.backend.stop())
        self.loop.close()


def children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far: next to the wall
    time, a figure the other jobs on a shared 2-core host disturb much less."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wsclean(ms: Path, out: Path, npix: int, cell: float, wgridder: bool = False) -> float:
    out.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("wsclean")
    if exe is None:
        raise RuntimeError("wsclean is not installed (Debian package 'wsclean')")
    cmd = [exe, "-quiet", "-size", str(npix), str(npix), "-scale", f"{cell}asec", "-weight", "natural",
           "-pol", "I", "-j", str(os.cpu_count() or 1), "-niter", "0", "-make-psf",
           *(["-use-wgridder"] if wgridder else []),
           "-name", str(out / "ws"), str(ms)]
    t, cpu = time.perf_counter(), children_cpu()
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    return time.perf_counter() - t, children_cpu() - cpu


def compare(ours_dir: Path, ws_dir: Path) -> float:
    """Relative rms difference of our dirty image from WSClean's (a check that both imaged
    the same thing, not an accuracy figure: tests/science/test_references.py holds those)."""
    from astropy.io import fits

    a = np.squeeze(fits.getdata(ours_dir / "dirty.fits")).astype(np.float64)
    b = np.squeeze(fits.getdata(ws_dir / "ws-dirty.fits")).astype(np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--times", type=int, default=240, help="integrations of 30 s")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--freeze-at-exit", action=argparse.BooleanOptionalAction, default=True,
                    help="ours calls gc.freeze() before exiting, as the executor's job process "
                         "does (cosmic_horizons_lab/executor/__main__.py) to skip the "
                         "interpreter's teardown collections; --no-freeze-at-exit times them too")
    ap.add_argument("--package-root", type=Path, default=ROOT,
                    help="run ours from this checkout (e.g. `git archive HEAD | tar -x -C DIR` "
                         "for a before/after comparison)")
    ap.add_argument("--baseline-root", type=Path, default=None,
                    help="also run ours from this checkout, in the same alternation (baseline, "
                         "ours, WSClean, …), for a before/after comparison at the same load")
    ap.add_argument("--wsclean-wgridder", action="store_true",
                    help="WSClean with -use-wgridder (its w-gridder, ours's algorithm, at its "
                         "default accuracy 1e-4) instead of its default w-stacking gridder")
    ap.add_argument("--as-job", action="store_true",
                    help="ours as an ImageReconstruction job on the local backend, handed to the "
                         "fork server's warm spare (the product's path), instead of a fresh process")
    ap.add_argument("--ms", type=Path, default=None,
                    help="keep the Measurement Set here and reuse it when it is already there "
                         "(made with the same --times and --channels)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_whole_image_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        ms_path = args.ms or root / "obs.ms"
        sidecar = ms_path.with_name(ms_path.name + ".bench.json")  # its sample count and cell
        if ms_path.exists() and sidecar.exists():
            ms, (n_vis, cell) = ms_path, json.loads(sidecar.read_text())
            made = f"reused from {ms_path}"
        else:
            ms, n_vis, cell = make_ms(ms_path, args.times, args.channels)
            sidecar.write_text(json.dumps([n_vis, cell]))
            made = f"made in {time.perf_counter() - t:.1f} s"
        print(f"{n_vis:.3e} Stokes I visibilities (171 baselines × {args.times} times × "
              f"{args.channels} channels, 4 pols) as a Measurement Set, {made}; "
              f"{os.cpu_count()} CPUs; load {load()}; "
              f"ours from {args.package_root}{', gc.freeze() at exit' if args.freeze_at_exit else ''}; "
              f"WSClean's {'w-gridder (-use-wgridder)' if args.wsclean_wgridder else 'default gridder'}")
        rows = []
        ours_by_size, base_by_size, ws_by_size = {}, {}, {}
        as_job = AsJob(root / "asjob", args.package_root) if args.as_job else None
        for npix in args.sizes:
            c = cell * 512 / npix if npix > 512 else cell  # 2048² covers the same field 4× finer
            ours_runs, ws_runs, base_runs = [], [], []
            for i in range(args.repeat):
                if args.baseline_root is not None:
                    wall, stages = run_ours(ms, root / f"base{npix}", npix, c, args.baseline_root,
                                            args.freeze_at_exit)
                    base_runs.append((wall, load(), stages))
                    print(f"  {npix}² base    {wall:6.2f} s (load {base_runs[-1][1]}) "
                          + " ".join(f"{k} {v:.2f}" for k, v in stages.items()), flush=True)
                if as_job is not None:
                    wall, stages = as_job.run(ms, root / f"ours{npix}", npix, c)
                else:
                    wall, stages = run_ours(ms, root / f"ours{npix}", npix, c, args.package_root,
                                            args.freeze_at_exit)
                ours_runs.append((wall, load(), stages))
                print(f"  {npix}² ours    {wall:6.2f} s (load {ours_runs[-1][1]}) "
                      + " ".join(f"{k} {v:.2f}" for k, v in stages.items()), flush=True)
                wall, cpu = run_wsclean(ms, root / f"ws{npix}", npix, c, args.wsclean_wgridder)
                ws_runs.append((wall, load(), cpu))
                print(f"  {npix}² WSClean {wall:6.2f} s (load {ws_runs[-1][1]}) cpu {cpu:.2f}",
                      flush=True)
            ours_by_size[npix], base_by_size[npix], ws_by_size[npix] = ours_runs, base_runs, ws_runs
            best_o, best_w = min(ours_runs, key=lambda r: r[0]), min(ws_runs)
            rows.append((npix, c, best_o, best_w, compare(root / f"ours{npix}", root / f"ws{npix}")))
            if base_runs:
                best_b = min(base_runs, key=lambda r: r[0])
                rows.append((npix, c, best_b, best_w, compare(root / f"base{npix}", root / f"ws{npix}"),
                             "baseline"))
        print("\n| grid | cell | ours (s) | load | WSClean (s) | load | ours / WSClean | "
              "ours: import / read / image / write (s) | CPU s, ours / WSClean (best) | "
              "dirty rel. rms vs WSClean |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for npix, c, (o, ol, st), (w, wl, _), rel, *which in rows:
            name = f"{npix}² ({which[0]}: {args.baseline_root})" if which else f"{npix}²"
            runs = base_by_size[npix] if which else ours_by_size[npix]
            cpu_o, cpu_w = min(r[2]["cpu"] for r in runs), min(r[2] for r in ws_by_size[npix])
            print(f"| {name} | {c:.2f}\" | {o:.2f} | {ol} | {w:.2f} | {wl} | **{o / w:.2f}** | "
                  + " / ".join(f"{st[k]:.2f}" for k in ("import", "read", "image", "write"))
                  + f" | {cpu_o:.2f} / {cpu_w:.2f} | {rel:.1e} |")
        if as_job is not None:
            as_job.close()
            print("\nours: an ImageReconstruction job handed to the fork server's warm spare "
                  "(--as-job), timed from submit to its end; its stages and CPU time are the job's own")


if __name__ == "__main__":
    main()
