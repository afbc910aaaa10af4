"""The GPU code paths, run on the CPU in CI (and on a card too where one is visible):
chunk planning from free memory, streaming host → device, 16-bit storage.

A card is what these paths are for, but CI has none; every test here runs the
same planning, the same chunk loop and the same dtype handling on the CPU, with
a small memory budget forced so that a small problem is cut into many chunks.
``benchmarks/gpu_check.sh`` runs this file again on a card (the ``cuda``
parameters), and the same stages at 1e9 visibilities under a 16 GB limit.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cosmic_horizons_lab.science import device as dev
from cosmic_horizons_lab.science.flagging import STRATEGIES, flag_planes, flag_visibilities
from cosmic_horizons_lab.science.gridding import ImageGeometry, dirty_image
from cosmic_horizons_lab.science.imaging import visibility_rows
from cosmic_horizons_lab.science.precision import (
    PrecisionPolicy,
    from_storage,
    policy_for,
    to_storage,
    unit_roundoff,
)
from cosmic_horizons_lab.science.streaming import (
    flag_streamed,
    flagging_bytes_per_baseline,
    map_chunks,
    stream_chunks,
    streaming_plan,
)

DEVICES = [torch.device("cpu")] + ([torch.device("cuda", 0)] if torch.cuda.is_available() else [])
on_each_device = pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.type)


# -- planning -------------------------------------------------------------------------------

@pytest.mark.parametrize("n_items,per_item,fixed,budget", [
    (1, 10, 0, 100), (1000, 7, 0, 100), (1000, 7, 50, 100), (10**9, 112, 3 << 30, 16 << 30),
    (999_983, 1 << 20, 0, 16 << 30), (5, 10, 0, 10**6),
])
def test_plan_covers_every_item_once_within_the_budget(n_items, per_item, fixed, budget):
    plan = dev.plan_chunks(n_items, per_item, torch.device("cpu"), fixed_bytes=fixed,
                           budget_bytes=budget)
    ranges = list(plan.ranges())
    assert ranges[0][0] == 0 and ranges[-1][1] == n_items
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous, no overlap
    assert len(ranges) == plan.n_chunks
    assert max(stop - start for start, stop in ranges) * per_item + fixed <= budget
    assert plan.fits and plan.working_set_bytes <= budget
    # as large as the budget allows: one more item per chunk would not fit (or all are in one)
    assert plan.items_per_chunk == n_items or fixed + (plan.items_per_chunk + 1) * per_item > budget


def test_plan_keeps_to_a_maximum_chunk_and_handles_nothing_to_do():
    plan = dev.plan_chunks(1000, 8, torch.device("cpu"), budget_bytes=1 << 20, maximum=64)
    assert plan.items_per_chunk == 64 and plan.n_chunks == 16
    empty = dev.plan_chunks(0, 8, torch.device("cpu"), budget_bytes=1 << 20)
    assert list(empty.ranges()) == [] and empty.n_chunks == 0
    assert list(stream_chunks([np.zeros(0)], empty, torch.device("cpu"))) == []


def test_plan_refuses_up_front_when_one_item_does_not_fit():
    with pytest.raises(MemoryError, match="budget"):
        dev.plan_chunks(10, 100, torch.device("cpu"), fixed_bytes=950, budget_bytes=1000)


def test_a_billion_visibilities_plan_on_a_16_gb_card():
    """Seed 002, Sprint 7.3's case as arithmetic: flagging 1e9 visibilities (VLA, 351
    baselines, 512 channels, RR/LL) with the budget a 16 GB card gives a chunk."""
    nb, nf, npol = 351, 512, 2
    nt = int(1e9 // (nb * nf * npol)) + 1
    vis = np.lib.stride_tricks.as_strided(np.zeros(1, np.complex64), (nb, nt, nf, npol),
                                          (0, 0, 0, 0), writeable=False)
    flags = np.lib.stride_tricks.as_strided(np.zeros(1, bool), (nb, nt, nf, npol), (0, 0, 0, 0),
                                            writeable=False)
    card = 16 << 30
    budget = min(int(card * dev.MEMORY_FRACTION), dev.MAX_CHUNK_BYTES["cuda"])
    plan = streaming_plan([vis, flags], flagging_bytes_per_baseline(nt, nf, npol),
                          torch.device("cpu"), budget_bytes=budget)
    assert plan.n_chunks > 1 and plan.fits
    assert plan.working_set_bytes <= card
    assert nb * nt * nf * npol >= 1e9


def test_memory_limit_caps_the_free_memory_and_the_chunks(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(dev.MEMORY_LIMIT_ENV, raising=False)
    unlimited = dev.free_memory_bytes(cpu)
    monkeypatch.setenv(dev.MEMORY_LIMIT_ENV, str(8 << 20))
    assert dev.memory_limit_bytes(cpu) == 8 << 20
    assert dev.free_memory_bytes(cpu) == min(unlimited, 8 << 20)
    assert dev.chunk_size(1024, cpu) == int((8 << 20) * dev.MEMORY_FRACTION) // 1024
    assert dev.plan_chunks(10**6, 1024, cpu).budget_bytes == int((8 << 20) * dev.MEMORY_FRACTION)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a card's per-process fraction")
def test_per_process_fraction_bounds_what_the_plan_may_use():
    """On a big card limited to 16 GB (as gpu_check emulates a small card), the driver
    still reports the whole card free; the plan must see the 16 GB."""
    cuda = torch.device("cuda", 0)
    total = torch.cuda.get_device_properties(cuda).total_memory
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if get_fraction is None:
        pytest.fail(f"torch {torch.__version__} cannot report the per-process memory fraction: "
                    f"set {dev.MEMORY_LIMIT_ENV} to emulate a small card instead")
    before = get_fraction(cuda)
    torch.cuda.set_per_process_memory_fraction(min(1.0, (16 << 30) / total), cuda)
    try:
        assert dev.free_memory_bytes(cuda) <= 16 << 30
        assert dev.chunk_budget_bytes(cuda) <= int((16 << 30) * dev.MEMORY_FRACTION)
    finally:
        torch.cuda.set_per_process_memory_fraction(before, cuda)


# -- streaming ------------------------------------------------------------------------------

@on_each_device
def test_streamed_flagging_under_a_small_budget_equals_flagging_unchunked(sim_rfi, device):
    n = 16  # baselines: a test, not a benchmark
    vis, flags, truth = sim_rfi.data.vis[:n], sim_rfi.data.flags[:n], sim_rfi.rfi_mask[:n]
    nb, nt, nf, npol = vis.shape
    per_baseline = 2 * (vis[:1].nbytes + flags[:1].nbytes) + flagging_bytes_per_baseline(
        nt, nf, npol)
    budget = 3 * per_baseline  # three baselines a chunk: many chunks, a ragged last one
    streamed = flag_streamed(vis, flags, "medium", device, budget_bytes=budget)
    # the whole cube at once, through the same kernel
    x = torch.view_as_real(torch.from_numpy(vis)).permute(0, 3, 4, 1, 2).reshape(
        nb, 2 * npol, nt, nf).to(device)
    initial = torch.from_numpy(flags).to(device).any(dim=-1) | (x == 0).all(dim=1)
    whole = flag_planes(x, initial, STRATEGIES["medium"]).cpu().numpy()[..., None] | flags
    agent = flag_visibilities(vis, flags, "medium", device)
    if device.type == "cpu":
        np.testing.assert_array_equal(streamed, whole)
        np.testing.assert_array_equal(streamed, agent)
    else:
        # a card's matrix products may round differently for another batch size, which can
        # move a sample sitting on the threshold: a few in a million, not a pattern
        assert (streamed != whole).mean() <= 1e-4 and (streamed != agent).mean() <= 1e-4
    # and it finds the injected RFI (the comparison above is not between two empty masks)
    tp = (streamed[..., 0] & truth).sum()
    assert truth.sum() > 0 and tp / truth.sum() > 0.9


@on_each_device
def test_streamed_accumulation_equals_one_pass_and_stays_in_budget(device):
    """A gridding-shaped reduction (scatter-add of weighted visibilities onto cells)
    over chunks equals the same sum in one pass."""
    rng = np.random.default_rng(7)
    n, cells = 200_003, 4096
    vis = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex128)
    cell = rng.integers(0, cells, n)
    weight = rng.uniform(0.5, 2.0, n)
    plan = streaming_plan([vis, cell, weight], 64, device, fixed_bytes=cells * 16,
                          budget_bytes=cells * 16 + 7000 * (2 * (16 + 8 + 8) + 64))
    assert plan.n_chunks >= 20 and plan.fits
    grid = torch.zeros(cells, dtype=torch.complex128, device=device)
    seen = []
    for start, stop, (v, c, w) in stream_chunks([vis, cell, weight], plan, device):
        assert v.device.type == device.type and len(v) == stop - start <= plan.items_per_chunk
        grid.index_add_(0, c, v * w)
        seen.append((start, stop))
    expected = np.zeros(cells, np.complex128)
    np.add.at(expected, cell, vis * weight)
    np.testing.assert_allclose(grid.cpu().numpy(), expected, rtol=1e-12, atol=1e-12)
    assert seen == list(plan.ranges())


def test_map_chunks_writes_every_row_and_checks_shapes():
    a = np.arange(103, dtype=np.float32)
    plan = dev.plan_chunks(len(a), 4, torch.device("cpu"), budget_bytes=40)
    out = np.full(len(a), np.nan, np.float32)
    map_chunks(lambda t: t * 2, [a], out, plan, torch.device("cpu"))
    np.testing.assert_array_equal(out, 2 * a)
    with pytest.raises(ValueError):
        next(stream_chunks([a, a[:-1]], plan, torch.device("cpu")))


# -- precision ------------------------------------------------------------------------------

def test_policy_takes_16_bits_only_where_the_tolerance_allows():
    assert policy_for(1e-3).storage == torch.float16
    assert policy_for(unit_roundoff(torch.float16)).storage == torch.float16
    assert policy_for(1e-4).storage == torch.float32
    assert policy_for(1e-4).relative_error == 0.0
    assert policy_for(1e-3).bytes_per_visibility == 4
    assert PrecisionPolicy().bytes_per_visibility == 8


@on_each_device
@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16, torch.float32])
def test_storage_round_trip_error_is_within_unit_roundoff(device, storage):
    rng = np.random.default_rng(3)
    # a dynamic range of 1e3 and a peak far beyond float16's range (65504)
    mag = 10.0 ** rng.uniform(3, 6, 50_000)
    ref = mag * np.exp(2j * np.pi * rng.uniform(size=mag.size))
    v = torch.from_numpy(ref).to(device)
    policy = PrecisionPolicy(storage=storage)
    stored, scale = to_storage(v, policy)
    assert stored.dtype == storage and stored.shape == (mag.size, 2)
    assert scale == 2.0 ** round(np.log2(scale))  # a power of two: scaling is exact
    back = from_storage(stored, scale, policy)
    assert back.dtype == torch.complex64
    err = np.abs(torch.view_as_real(back).cpu().numpy().astype(np.float64)
                 - np.stack([ref.real, ref.imag], -1)) / np.abs(np.stack([ref.real, ref.imag], -1))
    u = unit_roundoff(storage)
    # float32 compute adds its own rounding of the division by the scale
    assert float(err.max()) <= u + 2 * unit_roundoff(torch.float32), (float(err.max()), u)
    assert float(err.max()) > u / 100  # it did round: the comparison is not vacuous


@on_each_device
def test_storage_keeps_non_finite_values_and_zeros(device):
    v = torch.tensor([1 + 1j, complex("nan"), complex("inf"), 0j], dtype=torch.complex64,
                     device=device)
    policy = PrecisionPolicy(storage=torch.float16)
    back = from_storage(*to_storage(v, policy), policy).cpu()
    assert back[0] == 1 + 1j and back[3] == 0
    assert torch.isnan(back[1].real) and torch.isinf(back[2].real)
    zeros = from_storage(*to_storage(torch.zeros(3, dtype=torch.complex64), policy), policy)
    assert (zeros == 0).all()


def test_float16_storage_keeps_the_dirty_image_within_the_gridders_accuracy(sim_sky):
    """Against ducc0's wgridder (the reference) on the same float64 visibilities: storing
    them in float16 adds less than the gridding's own epsilon of 1e-4."""
    ducc0 = pytest.importorskip("ducc0")
    uvw, vis, weight = visibility_rows(sim_sky.data)
    cell = 1.0 / (4 * np.abs(uvw[:, :2]).max())
    npix = 256
    geom = ImageGeometry(npix, npix, cell, cell)
    policy = PrecisionPolicy(storage=torch.float16)
    rounded = from_storage(*to_storage(torch.from_numpy(vis.astype(np.complex128)), policy),
                           policy).numpy()
    ref = ducc0.wgridder.experimental.vis2dirty(
        uvw=uvw, freq=np.array([299_792_458.0]), vis=vis.astype(np.complex128)[:, None],
        wgt=weight.astype(np.float64)[:, None], npix_x=npix, npix_y=npix, pixsize_x=cell,
        pixsize_y=cell,
        epsilon=1e-7, do_wgridding=True, divide_by_n=False, flip_v=True, nthreads=1).T
    cpu = torch.device("cpu")
    rms = lambda a: float(np.sqrt(np.mean(a**2)))
    full = dirty_image(uvw, vis, weight, geom, cpu, epsilon=1e-4)
    half = dirty_image(uvw, rounded, weight, geom, cpu, epsilon=1e-4)
    err_full, err_half = rms(full - ref) / rms(ref), rms(half - ref) / rms(ref)
    assert err_full <= 1e-4 and err_half <= 1e-4, (err_full, err_half)
    assert rms(half - full) / rms(ref) <= unit_roundoff(torch.float16)


def test_float16_storage_changes_hardly_any_flag(sim_rfi):
    n = 24
    vis, flags, truth = sim_rfi.data.vis[:n], sim_rfi.data.flags[:n], sim_rfi.rfi_mask[:n]
    cpu = torch.device("cpu")
    policy = PrecisionPolicy(storage=torch.float16)
    rounded = from_storage(*to_storage(torch.from_numpy(vis), policy), policy).numpy()
    assert not np.array_equal(rounded, vis)
    full = flag_visibilities(vis, flags, "medium", cpu)
    half = flag_visibilities(rounded, flags, "medium", cpu)
    assert (full != half).mean() <= 1e-3
    tp = (half[..., 0] & truth).sum()
    assert tp / half[..., 0].sum() >= 0.95 and tp / truth.sum() >= 0.95


# -- the agents' own GPU paths (on a card only: their CPU paths are test_imaging's and
# -- test_calibration's, against ducc0 and the simulated gains) --------------------------

needs_card = pytest.mark.skipif(not torch.cuda.is_available(), reason="the card's path of an agent")


@needs_card
def test_dirty_image_on_the_card_matches_the_cpu_one(sim_sky):
    uvw, vis, weight = visibility_rows(sim_sky.data)
    cell = 1.0 / (4 * np.abs(uvw[:, :2]).max())
    geom = ImageGeometry(256, 256, cell, cell)
    cpu = dirty_image(uvw, vis, weight, geom, torch.device("cpu"), epsilon=1e-4)
    card = dirty_image(uvw, vis, weight, geom, torch.device("cuda", 0), epsilon=1e-4)
    rms = lambda a: float(np.sqrt(np.mean(a**2)))
    # two implementations, each within 1e-4 of the truth (the CPU one checked against ducc0)
    assert rms(card - cpu) / rms(cpu) <= 2e-4


@needs_card
def test_noiseless_gains_recovered_on_the_card():
    from cosmic_horizons_lab.science.calibration import expand_gains, solve_gains
    from cosmic_horizons_lab.science.simulate import preset, simulate

    sim = simulate(preset("SIM.small", noise_jy=0.0))
    cal = solve_gains(sim.data, sim.data.flags, sim.model, torch.device("cuda", 0),
                      solution_interval=1, channel_bin=1)
    _nb, nt, nf, _ = sim.data.shape
    g, ok = expand_gains(cal, nt, nf)
    ref = list(cal.antennas).index(cal.ref_antenna)
    truth = sim.gains * np.exp(-1j * np.angle(sim.gains[:, :, ref:ref + 1, :]))
    assert ok.all()
    assert (np.abs(g - truth) / np.abs(truth)).max() < 1e-4
