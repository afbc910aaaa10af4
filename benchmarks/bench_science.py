"""Throughput of the science agents against the reference implementations, on the same data.

    python benchmarks/bench_science.py            # 1e6 and 1e7 visibilities, 1024² and 2048²
    python benchmarks/bench_science.py --quick    # 1e6 only

Every figure is the best of ``--repeat`` runs after a warm-up, each side measured
the same way; a measurement stops repeating once its runs have used ``--budget``
seconds (at least one run always completes), so the whole benchmark fits in about
ten minutes on a 2-core machine. The load average is printed next to each figure:
on a shared machine it is what makes single runs vary by 2-3x.

* Flagging: our SumThreshold flagger (``medium``) vs AOFlagger's generic
  strategy (the ``aoflagger`` PyPI package), both on the same synthetic VLA
  visibilities with injected RFI, at equal threads (``--threads``, default all
  CPUs); precision and recall against the injected mask are printed alongside.
  AOFlagger's Python API flags one baseline per call and does not release the
  GIL (two Python threads took as long as one: 0.30 s against 0.28 s for 1e6
  visibilities), and its command-line tool, which runs ``-j`` baselines side by
  side, is not installed; so AOFlagger gets ``--threads`` forked worker
  processes, each with its own AOFlagger and strategy loaded once, splitting the
  baselines between them, which is what ``aoflagger -j N`` does with threads.
  Its time is the wall time of the whole pool (the data are inherited by the
  fork, the flags come back pickled), ours of ``flag_visibilities`` on the same
  number of torch threads.
* Gridding + FFT: our dirty image vs ducc0's ``wgridder.vis2dirty``, same
  visibilities, same accuracy (epsilon), w-correction on, all CPU threads.
* On a CUDA machine, also the rate of each agent stage on the GPU and the
  fraction of the card's memory bandwidth that rate implies, with the bytes
  per visibility assumed printed next to it.

aoflagger and ducc0 are GPL: they are benchmark/test references only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmic_horizons_lab.science.flagging import flag_visibilities  # noqa: E402
from cosmic_horizons_lab.science.gridding import ImageGeometry, dirty_image  # noqa: E402
from cosmic_horizons_lab.science.imaging import visibility_rows  # noqa: E402
from cosmic_horizons_lab.science.simulate import RFIConfig, SimConfig, Source, simulate  # noqa: E402

ARCSEC = np.pi / 180 / 3600
# Peak memory bandwidth of cards we may meet, bytes/s (vendor figures).
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "V100": 0.9e12, "L40S": 0.864e12}


def observation(n_vis: float, seed: int = 1):
    """A VLA L-band observation of about ``n_vis`` visibilities (171 baselines, RR/LL) with RFI."""
    n_channels = 64 if n_vis <= 2e6 else 128
    n_times = int(round(n_vis / (171 * 2 * n_channels)))
    cfg = SimConfig(n_times=n_times, integration_s=10.0, n_channels=n_channels,
                    freq_start_hz=1.3e9, channel_width_hz=1e6, noise_jy=0.4, seed=seed,
                    hour_angle_start_h=-2.0, delay_ns=1.0,
                    sources=(Source(0, 0, 1.0), Source(-400 * ARCSEC, 300 * ARCSEC, 0.5)),
                    rfi=RFIConfig(channel_stripes=6, time_bursts=6, blobs=6))
    return simulate(cfg)


_AO: dict = {}  # per worker process: the AOFlagger, its strategy and image set


def _aoflagger_baselines(vis: np.ndarray, baselines: range) -> np.ndarray:
    """AOFlagger's generic strategy on some baselines of a (B, T, F, P) cube, one at a time."""
    import aoflagger

    nb, nt, nf, npol = vis.shape
    if _AO.get("shape") != (nt, nf, npol):
        flagger = aoflagger.AOFlagger()
        _AO.update(shape=(nt, nf, npol), flagger=flagger,
                   strategy=flagger.load_strategy_file(flagger.find_strategy_file(aoflagger.TelescopeId.Generic)),
                   images=flagger.make_image_set(nt, nf, 2 * npol))
    images, strategy = _AO["images"], _AO["strategy"]
    out = np.zeros((len(baselines), nt, nf), bool)
    for j, b in enumerate(baselines):
        for p in range(npol):
            # AOFlagger images are channels (rows) × times (columns)
            images.set_image_buffer(2 * p, np.ascontiguousarray(vis[b, :, :, p].real.T, np.float64))
            images.set_image_buffer(2 * p + 1, np.ascontiguousarray(vis[b, :, :, p].imag.T, np.float64))
        out[j] = strategy.run(images).get_buffer().T
    return out


_SHARED: dict = {}  # the cube the forked AOFlagger workers inherit


def _ao_worker(part: tuple[int, int]) -> np.ndarray:
    return _aoflagger_baselines(_SHARED["vis"], range(*part))


def aoflagger_flags(vis: np.ndarray, pool: concurrent.futures.Executor | None, workers: int
                    ) -> tuple[np.ndarray, float]:
    """AOFlagger's flags of a (B, T, F, P) cube on ``workers`` processes, and the wall time.

    ``pool`` is a pool of ``workers`` processes forked after ``_SHARED["vis"]`` was set
    to ``vis``; ``None`` runs in this process, single-threaded.
    """
    nb = vis.shape[0]
    t0 = time.perf_counter()
    if pool is None:
        out = _aoflagger_baselines(vis, range(nb))
    else:
        step = -(-nb // workers)
        out = np.concatenate(list(pool.map(_ao_worker, [(s, min(nb, s + step)) for s in range(0, nb, step)])))
    return out, time.perf_counter() - t0


def timed(fn, repeat: int, budget: float, device: torch.device):
    """Best wall time of up to ``repeat`` calls of ``fn`` (stopping once ``budget`` s are
    spent), the last result, and the number of runs."""
    best, spent, runs, result = float("inf"), 0.0, 0, None
    while runs < repeat and (runs == 0 or spent < budget):
        t0 = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best, result, runs


def load() -> str:
    return "load %.1f" % os.getloadavg()[0]


def score(flags: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = float((flags & truth).sum())
    return tp / max(flags.sum(), 1), tp / max(truth.sum(), 1)


def bench_flagging(sim, device: torch.device, repeat: int = 3, budget: float = 30.0,
                   threads: int | None = None) -> dict:
    """Ours and AOFlagger alternately (ours, AOFlagger, ours, …), best of each, on
    ``threads`` threads each (torch intra-op threads for ours, processes for AOFlagger)."""
    vs = sim.data
    n = vs.vis.size
    threads = threads or os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {"n_vis": n, "ours_threads": torch.get_num_threads(), "ao_threads": threads}
    pool = None
    try:
        flag_visibilities(vs.vis[:4], vs.flags[:4], "medium", device)  # warm-up
        ours_t, ao_t, spent, runs = [], [], 0.0, 0
        if device.type == "cpu":
            _SHARED["vis"] = vs.vis
            if threads > 1:
                pool = concurrent.futures.ProcessPoolExecutor(threads, mp_context=multiprocessing.get_context("fork"))
            aoflagger_flags(vs.vis[: 4 * threads], pool, threads)  # warm-up: load the strategies
        while runs < repeat and (runs == 0 or spent < 2 * budget):
            t0 = time.perf_counter()
            ours = flag_visibilities(vs.vis, vs.flags, "medium", device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ours_t.append((time.perf_counter() - t0, load()))
            spent += ours_t[-1][0]
            if device.type == "cpu":
                ao, dt = aoflagger_flags(vs.vis, pool, threads)
                ao_t.append((dt, load()))
                spent += dt
            runs += 1
    finally:
        torch.set_num_threads(before)
        if pool is not None:
            pool.shutdown()
    t_ours, ours_load = min(ours_t)
    out.update(ours_s=t_ours, ours_rate=n / t_ours, ours_runs=runs,
               ours_pr=score(ours[..., 0], sim.rfi_mask), ours_load=ours_load)
    if ao_t:
        t_ao, ao_load = min(ao_t)
        out.update(ao_s=t_ao, ao_rate=n / t_ao, ao_runs=runs, ao_pr=score(ao, sim.rfi_mask),
                   ao_load=ao_load)
    return out


def bench_flagging_cpu_time(sim, repeat: int = 5) -> dict:
    """Process CPU time on one thread, ours and AOFlagger alternately in this process (best
    of ``repeat`` each): steadier than wall time on a shared host, where the other jobs'
    load moves the wall-clock ratio by ±30 %."""
    vs = sim.data
    cpu = torch.device("cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flag_visibilities(vs.vis[:4], vs.flags[:4], "medium", cpu)  # warm-up
        _aoflagger_baselines(vs.vis[:2], range(2))
        ours, ao = [], []
        for _ in range(repeat):
            t0 = time.process_time()
            flag_visibilities(vs.vis, vs.flags, "medium", cpu)
            ours.append(time.process_time() - t0)
            t0 = time.process_time()
            _aoflagger_baselines(vs.vis, range(vs.vis.shape[0]))
            ao.append(time.process_time() - t0)
    finally:
        torch.set_num_threads(before)
    return {"ours_cpu_s": min(ours), "ao_cpu_s": min(ao), "load": load()}


def bench_gridding(sim, npix: int, device: torch.device, epsilon: float, repeat: int = 3,
                   budget: float = 60.0) -> dict:
    """Ours and ducc0 (on the CPU) timed alternately, ours then ducc0, best of ``repeat``
    each: on a shared machine the load then weighs on both alike."""
    uvw, vis, weight = visibility_rows(sim.data)
    cell = 1.0 / (4 * np.abs(uvw[:, :2]).max())
    geom = ImageGeometry(npix, npix, cell, cell)
    dirty_image(uvw[:20000], vis[:20000], weight[:20000], geom, device, epsilon=epsilon)  # warm-up

    def ours():
        return dirty_image(uvw, vis, weight, geom, device, epsilon=epsilon)

    def ducc():
        import ducc0

        return ducc0.wgridder.experimental.vis2dirty(
            uvw=uvw, freq=np.array([299_792_458.0]), vis=vis.astype(np.complex64)[:, None],
            wgt=weight.astype(np.float32)[:, None], npix_x=npix, npix_y=npix, pixsize_x=cell,
            pixsize_y=cell, epsilon=epsilon, do_wgridding=True, divide_by_n=False,
            flip_v=True, nthreads=os.cpu_count() or 1).T

    sides = {"ours": ours, "ducc": ducc} if device.type == "cpu" else {"ours": ours}
    best = {k: float("inf") for k in sides}
    loads = {k: "" for k in sides}
    results: dict = {}
    spent, runs = 0.0, 0
    while runs < repeat and (runs == 0 or spent < 2 * budget):
        for name, fn in sides.items():
            dt, results[name], _ = timed(fn, 1, budget, device)
            if dt < best[name]:
                best[name], loads[name] = dt, load()
            spent += dt
        runs += 1
    out = {"n_vis": len(vis), "npix": npix, "ours_s": best["ours"],
           "ours_rate": len(vis) / best["ours"], "ours_runs": runs, "ours_load": loads["ours"]}
    if "ducc" in sides:
        ref = results["ducc"]
        rel = float(np.sqrt(np.mean((results["ours"] - ref) ** 2)) / np.sqrt(np.mean(ref**2)))
        out.update(ducc_s=best["ducc"], ducc_rate=len(vis) / best["ducc"], ducc_runs=runs,
                   rel_rms=rel, ducc_load=loads["ducc"])
    return out


def bench_gpu_agents(sim, device: torch.device) -> list[tuple[str, float, float]]:
    """Rates of the agent stages on the GPU and the bandwidth they imply."""
    from cosmic_horizons_lab.science.calibration import solve_gains

    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BANDWIDTH.items() if k in name), None)
    vs = sim.data
    n = vs.vis.size
    rows = []
    t0 = time.perf_counter()
    flag_visibilities(vs.vis, vs.flags, "medium", device)
    torch.cuda.synchronize()
    # per pass: the amplitude plane (4 B) read and written ~12 times by smoothing and
    # SumThreshold, plus the complex64 input (8 B) once: ~60 B per visibility and pass, 3 passes
    rows.append(("flagging", n / (time.perf_counter() - t0), 8 + 3 * 60))
    t0 = time.perf_counter()
    solve_gains(vs, vs.flags, sim.model, device, solution_interval=1, channel_bin=1)
    torch.cuda.synchronize()
    rows.append(("calibration", n / (time.perf_counter() - t0), 3 * 8 * 2))
    uvw, vis, weight = visibility_rows(vs)
    geom = ImageGeometry(1024, 1024, 1.0 / (4 * np.abs(uvw[:, :2]).max()), 1.0 / (4 * np.abs(uvw[:, :2]).max()))
    t0 = time.perf_counter()
    dirty_image(uvw, vis, weight, geom, device, epsilon=1e-5)
    torch.cuda.synchronize()
    rows.append(("gridding+FFT 1024²", len(vis) / (time.perf_counter() - t0), 8 * 8 * 8))
    print(f"\nGPU: {name}; peak bandwidth {peak / 1e12 if peak else float('nan'):.2f} TB/s")
    print(f"{'stage':<22}{'vis/s':>14}{'B/vis assumed':>15}{'% of bandwidth':>16}")
    for stage, rate, bpv in rows:
        frac = rate * bpv / peak * 100 if peak else float("nan")
        print(f"{stage:<22}{rate:>14.3e}{bpv:>15d}{frac:>15.2f}%")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1e6 visibilities only")
    ap.add_argument("--epsilon", type=float, default=1e-4, help="gridding accuracy for both gridders")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs per figure")
    ap.add_argument("--budget", type=float, default=45.0,
                    help="seconds after which a figure stops repeating (one run always completes)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for each flagger (default: all CPUs)")
    ap.add_argument("--flagging-only", action="store_true", help="skip the gridding figures")
    ap.add_argument("--gridding-only", action="store_true", help="skip the flagging figures")
    ap.add_argument("--cpu-time", action="store_true",
                    help="also flagging's process CPU time on one thread, ours against AOFlagger")
    args = ap.parse_args()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    print(f"device: {device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{os.cpu_count()} CPUs; {load()}")
    sizes = [1e6] if args.quick else [1e6, 1e7]
    for n in sizes:
        t0 = time.perf_counter()
        sim = observation(n)
        print(f"\n== {sim.data.vis.size:.3e} visibilities {sim.data.shape} "
              f"(generated in {time.perf_counter() - t0:.1f} s)")
        f = None if args.gridding_only else bench_flagging(sim, device, args.repeat, args.budget,
                                                            args.threads)
        if f is not None:
            print(f"flagging   ours {f['ours_rate']:.3e} vis/s on {f['ours_threads']} threads "
                  f"({f['ours_s']:.2f} s, best of "
                  f"{f['ours_runs']}, {f['ours_load']}) precision/recall "
                  f"{f['ours_pr'][0]:.3f}/{f['ours_pr'][1]:.3f}")
        if f is not None and "ao_rate" in f:
            print(f"           AOFlagger {f['ao_rate']:.3e} vis/s on {f['ao_threads']} processes "
                  f"({f['ao_s']:.2f} s, best of "
                  f"{f['ao_runs']}, {f['ao_load']}) precision/recall "
                  f"{f['ao_pr'][0]:.3f}/{f['ao_pr'][1]:.3f}")
            print(f"           ratio ours/AOFlagger = {f['ours_rate'] / f['ao_rate']:.2f}")
        if args.cpu_time and device.type == "cpu" and not args.gridding_only:
            c = bench_flagging_cpu_time(sim, args.repeat)
            print(f"           one thread, process CPU: ours {c['ours_cpu_s']:.3f} s, AOFlagger "
                  f"{c['ao_cpu_s']:.3f} s, ratio {c['ao_cpu_s'] / c['ours_cpu_s']:.2f} ({c['load']})")
        for npix in () if args.flagging_only else (1024, 2048):
            g = bench_gridding(sim, npix, device, args.epsilon, args.repeat, args.budget)
            line = (f"grid+FFT {npix}²  ours {g['ours_rate']:.3e} vis/s ({g['ours_s']:.2f} s, "
                    f"best of {g['ours_runs']}, {g['ours_load']})")
            if "ducc_rate" in g:
                line += (f"; ducc0 {g['ducc_rate']:.3e} vis/s ({g['ducc_s']:.2f} s, best of "
                         f"{g['ducc_runs']}, {g['ducc_load']}); "
                         f"ratio ours/ducc0 = {g['ours_rate'] / g['ducc_rate']:.3f}; "
                         f"rel. rms difference {g['rel_rms']:.1e}")
            print(line, flush=True)
        if device.type == "cuda":
            bench_gpu_agents(sim, device)


if __name__ == "__main__":
    main()
