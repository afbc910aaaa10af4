"""RFI flagging against the injected mask of ``SIM.rfi``."""

import numpy as np
import pytest
import torch

from cosmic_horizons_lab.science.flagging import (DEFAULT_STRATEGY, STRATEGIES, flag_visibilities,
                                                   sir_operator, sum_threshold)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def flagged(sim_rfi):
    vs = sim_rfi.data
    return {name: flag_visibilities(vs.vis, vs.flags, name, CPU) for name in STRATEGIES}


def test_default_strategy_precision_and_recall(sim_rfi, flagged):
    truth = sim_rfi.rfi_mask
    assert truth.mean() > 0.05  # the test means something
    flags = flagged[DEFAULT_STRATEGY][..., 0]
    tp = (flags & truth).sum()
    precision, recall = tp / flags.sum(), tp / truth.sum()
    assert precision >= 0.95, precision
    assert recall >= 0.95, recall


def test_all_polarisations_flagged_together(flagged):
    f = flagged[DEFAULT_STRATEGY]
    assert (f == f[..., :1]).all()


def test_strategies_are_ordered_by_sensitivity(sim_rfi, flagged):
    counts = [flagged[name].sum() for name in ("low", "medium", "high_sensitivity")]
    assert counts[0] <= counts[1] <= counts[2]
    # even the least sensitive level finds most of the injected RFI
    tp = (flagged["low"][..., 0] & sim_rfi.rfi_mask).sum()
    assert tp / sim_rfi.rfi_mask.sum() > 0.8


def test_existing_flags_are_kept(sim_rfi):
    vs = sim_rfi.data
    prior = np.zeros(vs.vis.shape, bool)
    prior[3, 5:9, 10:20, :] = True
    out = flag_visibilities(vs.vis, prior, "low", CPU)
    assert out[prior].all()


def test_noise_alone_is_hardly_flagged():
    rng = np.random.default_rng(1)
    shape = (8, 64, 64, 2)
    vis = (1 + 0.3 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))).astype(np.complex64)
    out = flag_visibilities(vis, np.zeros(shape, bool), DEFAULT_STRATEGY, CPU)
    assert out.mean() < 0.01


def test_sum_threshold_finds_a_faint_broad_stripe():
    x = torch.zeros((1, 64, 32))
    x[0, :, 7] = 1.5  # 1.5 σ: invisible sample by sample, obvious over 64 samples
    flags = sum_threshold(x, torch.zeros_like(x, dtype=torch.bool), 6.0, (1, 2, 4, 8, 16, 32, 64), 1.5)
    assert flags[0, :, 7].all() and flags.sum() == 64


def test_sir_operator_fills_gaps_in_proportion():
    f = torch.zeros((1, 1, 20), dtype=torch.bool)
    f[0, 0, 5:10] = True
    f[0, 0, 11:16] = True  # a one-sample gap in a 11-sample region
    out = sir_operator(f, 0.2)
    assert out[0, 0, 10] and out[0, 0, 5:16].all()
    assert not out[0, 0, 0] and not out[0, 0, 19]


def _sum_threshold_reference(x, flags, m, chi):
    """SumThreshold along the last axis by explicit loops over windows (tiny inputs only)."""
    out = flags.clone()
    val = torch.where(flags, torch.full_like(x, chi), x)
    n = x.shape[-1]
    for j in range(n - m + 1):
        hit = val[..., j:j + m].mean(dim=-1) > chi
        out[..., j:j + m] |= hit[..., None]
    return out


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 16])
def test_sum_threshold_window_matches_explicit_loops(m):
    from cosmic_horizons_lab.science.flagging import _sum_threshold_1d

    gen = torch.Generator().manual_seed(m)
    x = torch.randn((3, 24, 20), generator=gen) + 0.8
    flags = torch.rand((3, 24, 20), generator=gen) > 0.9
    chi = 1.5
    along_f = _sum_threshold_1d(x, flags, m, chi, dim=2)
    assert (along_f == _sum_threshold_reference(x, flags, m, chi)).all()
    along_t = _sum_threshold_1d(x, flags, m, chi, dim=1)
    ref_t = _sum_threshold_reference(x.transpose(1, 2), flags.transpose(1, 2), m, chi).transpose(1, 2)
    assert (along_t == ref_t).all()


def _local_fit_reference(n: int, sigma: float, degree: int) -> np.ndarray:
    """(n, n) matrix of Gaussian-weighted local polynomial fits by numpy's ``polyfit``, one
    window at a time (the unit vectors fitted at once as columns)."""
    half = int(np.ceil(3 * sigma))
    out = np.zeros((n, n))
    for i in range(n):
        j = np.arange(max(0, i - half), min(n, i + half + 1))
        d = (j - i).astype(float)
        w = np.exp(-0.5 * (d / sigma) ** 2)
        coef = np.polyfit(d, np.eye(n)[j], min(degree, len(j) - 1), w=np.sqrt(w))
        out[i] = coef[-1]  # the fit's value at the centre
    return out


@pytest.mark.parametrize("shape", [(2, 1, 7), (2, 9, 1), (2, 40, 64), (1, 600, 300)])
def test_sky_surface_fit_is_a_local_polynomial_least_squares_fit(shape):
    """The matrix-product surface fit (dense, or in row blocks for long axes) is, along each
    axis, the weighted least-squares polynomial fit numpy makes window by window, ends
    included."""
    from cosmic_horizons_lab.science.flagging import _fit_surface

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    ref = (_local_fit_reference(shape[1], 4.0, 2) @ x.double().numpy()
           @ _local_fit_reference(shape[2], 3.0, 2).T)
    assert np.allclose(_fit_surface(x, (4.0, 3.0), 2).numpy(), ref, atol=1e-5)


def test_surface_fit_follows_a_bright_fringe():
    """A fringe of 170σ turning once in 60 integrations and 80 channels is fitted to within
    σ (2σ at the ends, where the fit extrapolates), where a Gaussian mean of the same width
    leaves tens of σ (why the sky is fitted, not smoothed)."""
    from cosmic_horizons_lab.science.flagging import _fit_surface

    t, f = np.meshgrid(np.arange(200), np.arange(64), indexing="ij")
    fringe = 170 * np.exp(2j * np.pi * (t / 60 + f / 80))
    planes = torch.from_numpy(np.stack([fringe.real, fringe.imag]).astype(np.float32))
    resid = np.hypot(*(planes - _fit_surface(planes, (4.0, 3.0), 2)).numpy())
    assert resid.max() < 2.0 and resid[12:-12, 9:-9].max() < 1.0, resid.max()
    smoothed = np.hypot(*(planes - _fit_surface(planes, (4.0, 3.0), 0)).numpy())
    assert smoothed[12:-12, 9:-9].max() > 10
