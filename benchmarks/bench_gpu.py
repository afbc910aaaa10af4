"""GPU benchmarks of the agent stages, chunking under a 16 GB card's memory, and mixed precision.

    python benchmarks/bench_gpu.py --out DIR              # on a card (about 5 minutes on an H200)
    python benchmarks/bench_gpu.py --dry-run --out DIR    # the same steps, small, on the CPU

``benchmarks/gpu_check.sh`` runs it (with the CUDA tests first); without a card
it runs the dry run. Sections, each written to ``DIR/gpu_check.json`` and
``DIR/gpu_check.md`` as soon as it is done (a run cut short keeps what it had):

1. ``bandwidth``: the card's memory bandwidth, measured (a device-to-device copy,
   bytes read plus written) and the vendor's figure: the ceiling the stage rates
   are read against.
2. ``stages``: visibilities/s of each agent stage on a VLA observation
   (``bench_science.observation``): flagging, calibration, gridding+FFT, each as
   the agent calls it (numpy in, numpy out: the host↔device copies included), and
   flagging's kernel alone on data already on the card. Each rate is turned into a
   fraction of the bandwidth with two byte counts per visibility, both stated:
   ``min`` (each input read once, each output written once) and ``model`` (the
   passes the algorithm makes over the data, from its structure).
3. ``streaming``: host→device streaming rate of :mod:`.streaming` (pinned
   double buffer, copy overlapping compute), complex64 against float16 storage.
4. ``precision``: float16/bfloat16 storage with float32 arithmetic against float64:
   per-sample error, a uv-grid accumulation, the dirty image (against ducc0 where
   it is installed, else against the complex64 input) and the flags.
5. ``big``: Seed 002, Sprint 7.3. The card is limited to 16 GB with
   ``torch.cuda.set_per_process_memory_fraction`` (on the CPU dry run: a small
   ``COSMIC_HORIZONS_MEMORY_LIMIT_BYTES``), and 1e9 visibilities (VLA: 351
   baselines, 512 channels, RR/LL; noise and RFI) are flagged from host memory,
   once as the agent does it and once streamed, and gridded (1e8 on a card).
   Each size is cut down, and the result says so, when a smaller first run
   predicts it would not fit the time budget.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_science import PEAK_BANDWIDTH, observation
from gpu_check_report import GOAL_BANDWIDTH, GOAL_RATE, markdown, tests_summary

from cosmic_horizons_lab.science import device as dev
from cosmic_horizons_lab.science.calibration import solve_gains
from cosmic_horizons_lab.science.flagging import STRATEGIES, flag_planes, flag_visibilities
from cosmic_horizons_lab.science.gridding import ImageGeometry, Kernel, dirty_image
from cosmic_horizons_lab.science.imaging import visibility_rows
from cosmic_horizons_lab.science.precision import (
    PrecisionPolicy,
    from_storage,
    to_storage,
    unit_roundoff,
)
from cosmic_horizons_lab.science.streaming import (
    flag_streamed,
    flagging_bytes_per_baseline,
    stream_chunks,
    streaming_plan,
)

EMULATED_CARD = 16 << 30  # bytes: Sprint 7.3's card
DRY_LIMIT = 48 << 20  # bytes: the dry run's memory limit on the CPU

#: sizes per mode: stage observation, streaming test, precision subset, big flagging, big gridding
SIZES = {
    "gpu": {"stage_vis": 1e7, "stream_vis": 4e8, "precision_vis": 2e6, "big_flag": 1e9,
            "big_grid": 1e8, "npix": 1024, "big_nf": 512, "big_nb": 351, "repeat": 5,
            "cal_cell": (1, 1)},
    "dry": {"stage_vis": 8e4, "stream_vis": 2e6, "precision_vis": 5e4, "big_flag": 1.5e6,
            "big_grid": 1e5, "npix": 256, "big_nf": 64, "big_nb": 24, "repeat": 1,
            "cal_cell": (4, 16)},
}


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


class Clock:
    """The benchmark's time budget: sections ask how much is left before sizing themselves."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def timed(fn: Callable[[], Any], device: torch.device, repeat: int, budget_s: float
          ) -> tuple[float, Any, int]:
    """Median wall time of up to ``repeat`` calls after one warm-up call (stopping once
    ``budget_s`` is spent), the last result and the number of timed runs."""
    result = fn()
    dev.synchronize(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < repeat and (not times or spent < budget_s):
        t0 = time.perf_counter()
        result = fn()
        dev.synchronize(device)
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return float(np.median(times)), result, len(times)


def vendor_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BANDWIDTH.items() if k in name), None)


def measure_bandwidth(device: torch.device, n_bytes: int) -> float:
    """Bytes/s of a large copy on the device (read + write counted), median of several."""
    src = torch.randn(n_bytes // 4, device=device)  # random: zeros can run faster
    dst = torch.empty_like(src)
    t, _, _ = timed(lambda: dst.copy_(src), device, 10, 5.0)
    return 2 * src.numel() * 4 / t


def stage_row(stage: str, n_vis: int, seconds: float, runs: int, min_bpv: float, model_bpv: float,
              bandwidth: float, vendor: float | None, note: str = "") -> dict:
    rate = n_vis / seconds
    return {"stage": stage, "n_vis": int(n_vis), "seconds": seconds, "runs": runs,
            "vis_per_s": rate, "bytes_per_vis_min": min_bpv, "bytes_per_vis_model": model_bpv,
            "bandwidth_frac_min": rate * min_bpv / bandwidth,
            "bandwidth_frac_model": rate * model_bpv / bandwidth,
            "vendor_frac_model": rate * model_bpv / vendor if vendor else None,
            "load": loadavg(), "note": note}


def bench_stages(sim, device: torch.device, npix: int, repeat: int, bandwidth: float,
                 clock: Clock, cal_cell: tuple[int, int] = (1, 1)) -> list[dict]:
    vs = sim.data
    nb, nt, nf, npol = vs.shape
    n = vs.vis.size
    vendor = vendor_bandwidth(device)
    per = max(5.0, clock.left() / 12)  # seconds one figure may repeat for
    strat = STRATEGIES["medium"]
    rows = []
    # flagging as the agent runs it: complex64 in (8 B), flags in and out (1 B each per
    # visibility); the model counts each pass's ~12 reads and writes of the 4-byte
    # plane per real part, the input once (bench_science's 60 B per pass)
    t, _, runs = timed(lambda: flag_visibilities(vs.vis, vs.flags, "medium", device), device,
                       repeat, per)
    rows.append(stage_row("flagging (agent, host in/out)", n, t, runs, 10, 10 + strat.passes * 60,
                          bandwidth, vendor))
    # flagging's kernel on data already on the device
    x = torch.view_as_real(torch.from_numpy(vs.vis)).permute(0, 3, 4, 1, 2).reshape(
        nb, 2 * npol, nt, nf).to(device)
    initial = torch.from_numpy(vs.flags).to(device).any(dim=-1)
    step = dev.chunk_size(nt * nf * (4 * 2 * npol * 4 + 48), device, maximum=nb)

    def kernel_only() -> None:
        for s in range(0, nb, step):
            flag_planes(x[s:s + step], initial[s:s + step], strat)

    t, _, runs = timed(kernel_only, device, repeat, per)
    rows.append(stage_row("flagging (kernel, on device)", n, t, runs, 8 + 1 / npol,
                          8 + strat.passes * 60, bandwidth, vendor))
    # calibration: vis and model (8 B each), flags; StEFCal iterates over vis and model
    si, cb = cal_cell  # integrations × channels per solution cell
    t, cal, runs = timed(lambda: solve_gains(vs, vs.flags, sim.model, device, solution_interval=si,
                                             channel_bin=cb), device, repeat, per)
    rows.append(stage_row("calibration (StEFCal, agent)", n, t, runs, 8 + 8 / npol + 1,
                          8 + 8 / npol + 1 + cal.iterations * 24, bandwidth, vendor,
                          f"{cal.iterations} iterations, cells of {si}×{cb}"))
    # gridding + FFT: uvw (24 B), vis and weight (8 + 8 B) in; the model counts the
    # scatter's read-modify-write of W² complex64 cells (16 B) plus its 4-byte index
    uvw, vis, weight = visibility_rows(vs)
    cell = 1.0 / (4 * np.abs(uvw[:, :2]).max())
    geom = ImageGeometry(npix, npix, cell, cell)
    support = Kernel.for_accuracy(1e-4).support
    t, _, runs = timed(lambda: dirty_image(uvw, vis, weight, geom, device, epsilon=1e-4), device,
                       repeat, per)
    rows.append(stage_row(f"gridding+FFT {npix}² (agent)", len(vis), t, runs, 40,
                          40 + support**2 * 20, bandwidth, vendor, f"epsilon 1e-4, W={support}, "
                          "w-stacking"))
    return rows


def bench_streaming(device: torch.device, n_vis: int, repeat: int, clock: Clock) -> list[dict]:
    """Rate of streaming host visibilities through the device (a sum per chunk), as
    complex64 and as float16 storage (half the bytes on the bus)."""
    rng = np.random.default_rng(5)
    n = int(n_vis)
    base = (rng.standard_normal(min(n, 1 << 22), np.float32)).astype(np.float32)
    host64 = np.resize(base, 2 * n).view(np.complex64)  # generated once, tiled: cheap
    rows = []
    for name, arr in (("complex64", host64),
                      ("float16 storage", np.resize(base.astype(np.float16), (n, 2)))):
        plan = streaming_plan([arr], 16, device)

        def run(arr: np.ndarray = arr, plan=plan) -> float:
            total = torch.zeros((), dtype=torch.float64, device=device)
            for _s, _e, (t,) in stream_chunks([arr], plan, device):
                real = torch.view_as_real(t) if t.is_complex() else t
                total += real.to(torch.float32).sum()
            return float(total)

        t, _, runs = timed(run, device, repeat, max(3.0, clock.left() / 20))
        rows.append({"storage": name, "n_vis": n, "seconds": t, "runs": runs, "vis_per_s": n / t,
                     "host_bytes_per_s": arr.nbytes / t, "chunks": plan.n_chunks,
                     "chunk_vis": plan.items_per_chunk, "load": loadavg()})
    return rows


def bench_precision(sim, device: torch.device, n_vis: int) -> list[dict]:
    """Errors of 16-bit storage with float32 arithmetic, against float64."""
    uvw, vis, weight = visibility_rows(sim.data)
    keep = np.flatnonzero(weight > 0)[: int(n_vis)]
    uvw, vis, weight = uvw[keep], vis[keep].astype(np.complex128), weight[keep].astype(np.float64)
    rms = lambda a: float(np.sqrt(np.mean(np.abs(a) ** 2)))
    npix = 256
    cell = 1.0 / (4 * np.abs(uvw[:, :2]).max())
    geom = ImageGeometry(npix, npix, cell, cell)
    try:
        import ducc0

        ref_image = ducc0.wgridder.experimental.vis2dirty(
            uvw=uvw, freq=np.array([299_792_458.0]), vis=vis[:, None], wgt=weight[:, None],
            npix_x=npix, npix_y=npix, pixsize_x=cell, pixsize_y=cell, epsilon=1e-7,
            do_wgridding=True, divide_by_n=False, flip_v=True, nthreads=os.cpu_count() or 1).T
        image_ref = "ducc0 wgridder, float64, epsilon 1e-7"
    except ImportError:
        ref_image = dirty_image(uvw, vis.astype(np.complex64), weight, geom, device, epsilon=1e-4)
        image_ref = "our gridder on complex64 input (ducc0 not installed)"
    # a uv-grid accumulation: every visibility into its nearest cell of a 1024² grid
    cells = 1024
    iu = np.clip(np.round(uvw[:, 0] / (2 * np.abs(uvw[:, 0]).max()) * (cells - 1)
                          + cells / 2).astype(np.int64), 0, cells - 1)
    iv = np.clip(np.round(uvw[:, 1] / (2 * np.abs(uvw[:, 1]).max()) * (cells - 1)
                          + cells / 2).astype(np.int64), 0, cells - 1)
    idx = torch.from_numpy(iv * cells + iu).to(device)
    grid_ref = np.zeros(cells * cells, np.complex128)
    np.add.at(grid_ref, iv * cells + iu, vis * weight)
    wt32 = torch.from_numpy(weight.astype(np.float32)).to(device)
    fl = sim.data
    nfl = min(fl.shape[0], 24)
    flags_ref = flag_visibilities(fl.vis[:nfl], fl.flags[:nfl], "medium", device)
    rows = []
    for storage in (torch.float32, torch.float16, torch.bfloat16):
        policy = PrecisionPolicy(storage=storage)
        stored, scale = to_storage(torch.from_numpy(vis).to(device), policy)
        back = from_storage(stored, scale, policy)  # complex64: float32 arithmetic from here
        per_sample = rms(back.cpu().numpy().astype(np.complex128) - vis) / rms(vis)
        grid = torch.zeros(cells * cells, dtype=torch.complex64, device=device)
        grid.index_add_(0, idx, back * wt32)
        grid_err = rms(grid.cpu().numpy() - grid_ref) / rms(grid_ref)
        image = dirty_image(uvw, back.cpu().numpy(), weight, geom, device, epsilon=1e-4)
        image_err = rms(image - ref_image) / rms(ref_image)
        fv = from_storage(*to_storage(torch.from_numpy(fl.vis[:nfl]).to(device), policy),
                          policy).cpu().numpy()
        flags = flag_visibilities(fv, fl.flags[:nfl], "medium", device)
        rows.append({"storage": str(storage).replace("torch.", ""), "compute": "float32",
                     "unit_roundoff": unit_roundoff(storage) if storage != torch.float32 else
                     unit_roundoff(torch.float32), "per_sample_rel_rms": per_sample,
                     "grid_accumulation_rel_rms": grid_err, "dirty_image_rel_rms": image_err,
                     "image_reference": image_ref,
                     "flags_differing_frac": float((flags != flags_ref).mean()),
                     "n_vis": len(vis)})
    return rows


def big_observation(n_vis: float, nb: int, nf: int, device: torch.device, seed: int = 11
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host (B, T, F, 2) visibilities of noise (σ = 1) on a 10 Jy sky with RFI: six channel
    stripes and four time bursts, 4-30σ; made on the device in pieces (fast) and copied
    to the host. Returns vis, flags and the RFI mask (T, F)."""
    nt = max(8, math.ceil(n_vis / (nb * nf * 2)))
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    mask = np.zeros((nt, nf), bool)
    mask[:, rng.choice(nf, 6, replace=False)] = True
    for t0 in rng.choice(max(1, nt - 4), 4, replace=False):
        mask[t0:t0 + 3] = True
    rfi_amp = torch.from_numpy(np.where(mask, rng.uniform(4, 30, mask.shape), 0)
                               .astype(np.float32)).to(device)
    vis = np.empty((nb, nt, nf, 2), np.complex64)
    step = max(1, (256 << 20) // (nt * nf * 2 * 8))
    for s in range(0, nb, step):
        e = min(nb, s + step)
        v = torch.randn((e - s, nt, nf, 2), dtype=torch.complex64, device=device, generator=gen)
        v += 10.0
        phase = torch.rand((e - s, 1, 1, 1), device=device, generator=gen) * 2 * math.pi
        v += (rfi_amp[None, :, :, None] * torch.polar(torch.ones_like(phase), phase))
        vis[s:e] = v.cpu().numpy()
    return vis, np.zeros(vis.shape, bool), mask


@contextlib.contextmanager
def limited_memory(device: torch.device, limit: int) -> Iterator[dict]:
    """Emulate a card of ``limit`` bytes inside the block: the allocator refuses beyond it
    (on a card), and the chunk plans see it (:func:`.device.memory_limit_bytes`, which
    reads both the fraction and the environment limit set here)."""
    before_env = os.environ.get(dev.MEMORY_LIMIT_ENV)
    os.environ[dev.MEMORY_LIMIT_ENV] = str(limit)
    info: dict[str, Any] = {"how": dev.MEMORY_LIMIT_ENV, "limit_bytes": limit}
    before_fraction = None
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        # (torch before 2.8 cannot read the fraction back; 1.0 is its default)
        get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        before_fraction = get_fraction(device) if get_fraction else 1.0
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
        info = {"how": "torch.cuda.set_per_process_memory_fraction", "card_bytes": total,
                "limit_bytes": limit}
    try:
        yield info
    finally:
        if before_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(before_fraction, device)
        if before_env is None:
            os.environ.pop(dev.MEMORY_LIMIT_ENV, None)
        else:
            os.environ[dev.MEMORY_LIMIT_ENV] = before_env


def run_measured(fn: Callable[[], Any], device: torch.device, limit: int | None = None
                 ) -> tuple[Any, dict]:
    dev.reset_peak_memory(device)
    t0 = time.perf_counter()
    try:
        result = fn()
        dev.synchronize(device)
        ok, error = True, None
    except torch.cuda.OutOfMemoryError as exc:  # the failure Sprint 7.3 is about
        result, ok, error = None, False, f"out of memory: {str(exc)[:300]}"
    seconds = time.perf_counter() - t0
    peak = dev.peak_memory_bytes(device) if device.type == "cuda" else None
    return result, {"ok": ok, "error": error, "seconds": seconds, "peak_device_bytes": peak,
                    "peak_within_limit": None if peak is None or limit is None else peak <= limit,
                    "load": loadavg()}


def bench_big(device: torch.device, sizes: dict, clock: Clock) -> dict:
    limit = EMULATED_CARD if device.type == "cuda" else DRY_LIMIT
    with limited_memory(device, limit) as memory:
        return _bench_big(device, sizes, clock, {"memory": memory})


def _bench_big(device: torch.device, sizes: dict, clock: Clock, out: dict) -> dict:
    limit = out["memory"]["limit_bytes"]
    nb, nf = sizes["big_nb"], sizes["big_nf"]
    t0 = time.perf_counter()
    vis, flags, mask = big_observation(sizes["big_flag"], nb, nf, device)
    out["generated_s"] = time.perf_counter() - t0
    nt = vis.shape[1]
    per_baseline = nt * nf * 2
    # a first run on a tenth of the baselines predicts the whole; cut down to fit the time
    probe = max(1, nb // 10)
    flag_visibilities(vis[:1], flags[:1], "medium", device)  # warm-up: library handles, plans
    _, m = run_measured(lambda: flag_visibilities(vis[:probe], flags[:probe], "medium", device),
                        device, limit)
    rate = probe * per_baseline / max(m["seconds"], 1e-6)
    allowed = 0.12 * clock.budget  # each of the agent run and the streamed run
    nb_run = int(min(nb, max(probe, allowed * rate // per_baseline)))
    out["flagging_probe"] = {**m, "n_vis": probe * per_baseline, "vis_per_s": rate}
    n_run = nb_run * per_baseline
    out["flagging_target_vis"] = int(nb * per_baseline)
    out["flagging_vis"] = int(n_run)
    out["flagging_cut"] = nb_run < nb
    agent, m = run_measured(lambda: flag_visibilities(vis[:nb_run], flags[:nb_run], "medium",
                                                      device), device, limit)
    out["flagging_agent"] = {**m, "vis_per_s": n_run / m["seconds"] if m["ok"] else None}
    streamed, m = run_measured(lambda: flag_streamed(vis[:nb_run], flags[:nb_run], "medium",
                                                     device), device, limit)
    out["flagging_streamed"] = {**m, "vis_per_s": n_run / m["seconds"] if m["ok"] else None}
    # what the plan expected the peak to be (device.py's budget now, as flag_streamed made it):
    # the measured peak over this calibrates streaming.FLAGGING_TEMPORARIES
    plan = streaming_plan([vis[:nb_run], flags[:nb_run]],
                          flagging_bytes_per_baseline(nt, nf, 2), device)
    out["flagging_streamed_plan"] = {"baselines_per_chunk": plan.items_per_chunk,
                                     "chunks": plan.n_chunks,
                                     "planned_working_set_bytes": plan.working_set_bytes,
                                     "budget_bytes": plan.budget_bytes}
    if agent is not None and streamed is not None:
        out["flagging_streamed_equals_agent"] = bool(np.array_equal(agent, streamed))
        out["flagging_streamed_differing_frac"] = float((agent != streamed).mean())
        k = min(nb_run, 8)
        hit = (agent[:k, ..., 0] & mask).sum()
        out["flagging_recall_first_baselines"] = float(hit / (mask.sum() * k))
        out["flagging_flagged_frac"] = float(agent[:k].mean())
    # gridding of random baselines (uniform in a disc, w up to a tenth of |uv|) on a grid
    n = int(sizes["big_grid"])
    npix = sizes["npix"]
    probe_n = max(1000, n // 10)
    rng = np.random.default_rng(3)
    r = 5000 * np.sqrt(rng.uniform(size=n))
    th = rng.uniform(0, 2 * np.pi, n)
    uvw = np.stack([r * np.cos(th), r * np.sin(th), rng.uniform(-500, 500, n)], 1)
    gvis = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)
    wgt = np.ones(n, np.float32)
    cell = 1.0 / (4 * 5000)
    geom = ImageGeometry(npix, npix, cell, cell)
    dirty_image(uvw[:1000], gvis[:1000], wgt[:1000], geom, device, epsilon=1e-4)  # warm-up
    _, m = run_measured(lambda: dirty_image(uvw[:probe_n], gvis[:probe_n], wgt[:probe_n], geom,
                                            device, epsilon=1e-4), device, limit)
    rate = probe_n / max(m["seconds"], 1e-6)
    n_run = int(min(n, max(probe_n, 0.12 * clock.budget * rate)))
    out["gridding_target_vis"], out["gridding_vis"], out["gridding_cut"] = n, n_run, n_run < n
    _, m = run_measured(lambda: dirty_image(uvw[:n_run], gvis[:n_run], wgt[:n_run], geom, device,
                                            epsilon=1e-4), device, limit)
    out["gridding"] = {**m, "npix": npix, "vis_per_s": n_run / m["seconds"] if m["ok"] else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="small sizes on the CPU")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                    help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds the whole benchmark may take (default 330 on a card, 60 dry)")
    ap.add_argument("--junit", type=Path, default=None,
                    help="the CUDA tests' JUnit XML (gpu_check.sh), summarised in the results")
    ap.add_argument("--tests-rc", type=int, default=None, help="the CUDA tests' exit status")
    args = ap.parse_args()
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu") if dry else torch.device("cuda", 0)
    sizes = SIZES["dry" if dry else "gpu"]
    clock = Clock(args.time_budget or (60.0 if dry else 330.0))
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"mode": "dry-run (CPU)" if dry else "GPU", "device":
                           dev.device_description(device), "torch": torch.__version__,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           "load_start": loadavg(), "sizes": sizes, "errors": [],
                           "goals": {"vis_per_s": GOAL_RATE, "bandwidth_frac": GOAL_BANDWIDTH}}
    if args.junit is not None:
        res["tests"] = tests_summary(args.junit, args.tests_rc)

    def save() -> None:
        res["elapsed_s"] = round(clock.budget - clock.left(), 1)
        (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
        (args.out / "gpu_check.md").write_text(markdown(res))

    def section(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as exc:  # noqa: BLE001 - keep the other sections' figures
            res["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
        print(f"[{name}] {time.perf_counter() - t0:.1f} s, load {loadavg()}", flush=True)
        save()

    copy_bytes = (2 << 30) if not dry else (64 << 20)
    section("bandwidth", lambda: {"measured_bytes_per_s": measure_bandwidth(device, copy_bytes),
                                  "copy_bytes": copy_bytes,
                                  "vendor_bytes_per_s": vendor_bandwidth(device)})
    bandwidth = (res.get("bandwidth") or {}).get("measured_bytes_per_s") or 1.0
    # the 16 GB case first: it is the one Sprint 7.3 asks for, and it sizes itself to the budget
    section("big", lambda: bench_big(device, sizes, clock))
    t0 = time.perf_counter()
    sim = observation(sizes["stage_vis"])
    res["stage_observation"] = {"shape": list(sim.data.shape),
                                "generated_s": time.perf_counter() - t0}
    section("stages", lambda: bench_stages(sim, device, sizes["npix"], sizes["repeat"], bandwidth,
                                           clock, tuple(sizes["cal_cell"])))
    section("streaming", lambda: bench_streaming(device, sizes["stream_vis"], sizes["repeat"],
                                                 clock))
    section("precision", lambda: bench_precision(sim, device, sizes["precision_vis"]))
    print(markdown(res))
    sys.exit(1 if res["errors"] else 0)


if __name__ == "__main__":
    main()
