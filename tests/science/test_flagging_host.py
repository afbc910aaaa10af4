"""The flagger's compiled host loops (flagging_host.py) against torch and explicit loops.

On the CPU, flag_visibilities runs these instead of the torch operators the GPU runs;
each must give what the torch code (and torch.nanmedian) gives, so both devices flag alike.
"""

import math

import numpy as np
import pytest
import torch

from cosmic_horizons_lab.science.flagging import _sum_threshold_1d
from cosmic_horizons_lab.science.flagging_host import (planes_from_vis, residual_power,
                                                       robust_centre_scale, sum_threshold_host)


def _explicit(x: torch.Tensor, flags: torch.Tensor, m: int, chi: float, dim: int) -> torch.Tensor:
    """One SumThreshold window along ``dim`` by explicit loops over window positions."""
    xt, ft = x.movedim(dim, -1), flags.movedim(dim, -1)
    out = ft.clone()
    val = torch.where(ft, torch.full_like(xt, chi), xt)
    for j in range(xt.shape[-1] - m + 1):
        hit = val[..., j:j + m].double().sum(dim=-1) > m * chi
        out[..., j:j + m] |= hit[..., None]
    return out.movedim(-1, dim)


@pytest.mark.parametrize("shape", [(3, 24, 20), (2, 7, 40), (1, 40, 5)])
def test_compiled_sum_threshold_matches_explicit_loops_and_torch(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen) + 0.8
    flags = torch.rand(shape, generator=gen) > 0.9
    windows, chi1, rho = (1, 2, 4, 8, 16, 32), 3.0, 1.5
    ref, via_torch = flags.clone(), flags.clone()
    for m in windows:
        chi = chi1 / rho ** math.log2(m)
        if m == 1:
            ref = ref | (x > chi)
            via_torch = _sum_threshold_1d(x, via_torch, 1, chi)
            continue
        for dim in (1, 2):
            ref = _explicit(x, ref, m, chi, dim)
            via_torch = _sum_threshold_1d(x, via_torch, m, chi, dim=dim)
    ours = torch.from_numpy(sum_threshold_host(x.numpy(), flags.numpy(), chi1, windows, rho))
    assert ours.sum() > flags.sum()  # the case flags something
    assert (ours == ref).all()
    assert (ours == via_torch).all()


def test_robust_centre_scale_is_torch_nanmedian_and_mad():
    rng = np.random.default_rng(4)
    stat = rng.standard_normal((6, 501)).astype(np.float32) ** 2
    stat[1, ::7] = np.nan
    flags = rng.random((6, 501)) < 0.2
    flags[2, 1:] = True  # a single unflagged sample
    flags[3] = True  # nothing unflagged
    flags[4, :] = False
    flags[4, 0] = True  # an even count: the lower median
    stat[5] = 2.0  # MAD 0 -> σ 1
    med, sigma = robust_centre_scale(stat, flags)
    t = torch.from_numpy(stat).masked_fill(torch.from_numpy(flags), float("nan"))
    t_med = torch.nanmedian(t, dim=1, keepdim=True).values
    t_sigma = 1.4826 * torch.nanmedian((t - t_med).abs(), dim=1).values
    t_sigma = torch.where(torch.isfinite(t_sigma) & (t_sigma > 0), t_sigma, torch.ones_like(t_sigma))
    assert np.array_equal(med, torch.nan_to_num(t_med[:, 0], nan=0.0).numpy())
    np.testing.assert_allclose(sigma, t_sigma.numpy(), rtol=1e-6)
    assert med[3] == 0 and sigma[3] == 1 and sigma[5] == 1


def test_planes_and_initial_flags_match_the_torch_preparation():
    rng = np.random.default_rng(5)
    vis = (rng.standard_normal((3, 6, 5, 2)) + 1j * rng.standard_normal((3, 6, 5, 2))).astype(np.complex64)
    flags = rng.random(vis.shape) < 0.1
    vis[0, 1, 2, 0] = np.nan
    vis[1, 2, 3, 1] = complex(np.inf, 0)
    vis[2, 3] = 0  # absent
    x, initial = planes_from_vis(vis, flags)
    v, fl = torch.from_numpy(vis), torch.from_numpy(flags)
    xt = torch.view_as_real(v).permute(0, 3, 4, 1, 2).reshape(3, 4, 6, 5)
    finite = torch.isfinite(xt)
    ref_initial = fl.any(dim=-1) | ~finite.all(dim=1) | (xt == 0).all(dim=1)
    ref_x = torch.where(finite, xt, torch.zeros(()))
    assert ref_initial[0, 1, 2] and ref_initial[1, 2, 3] and ref_initial[2, 3].all()
    assert np.array_equal(initial, ref_initial.numpy())
    assert np.array_equal(x, ref_x.numpy())


def test_residual_power_matches_torch():
    gen = torch.Generator().manual_seed(6)
    planes, model = torch.randn((8, 9, 7), generator=gen), torch.randn((8, 9, 7), generator=gen)
    ref = (planes - model).square().view(2, 4, 9, 7).mean(dim=1)
    np.testing.assert_allclose(residual_power(planes.numpy(), model.numpy(), 4), ref.numpy(), rtol=1e-6)
