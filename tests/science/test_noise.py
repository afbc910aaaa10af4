"""The noise estimate's compiled pieces give numpy's numbers.

``noise._median`` brackets the median from a sample instead of partitioning the whole
array, and ``noise._difference_values`` computes the time differences in one compiled
pass: both are only faster spellings, so each is checked against numpy doing the same
thing the plain way (``np.median``; the differences written with numpy's array algebra).
"""

import math

import numpy as np
import pytest

from cosmic_horizons_lab.science import noise
from cosmic_horizons_lab.science.imaging import make_images
from cosmic_horizons_lab.science.simulate import preset, simulate


def _cases():
    rng = np.random.default_rng(7)
    gauss = rng.standard_normal(1_000_001).astype(np.float32)
    yield "gaussian, odd", gauss
    yield "gaussian, even", gauss[:-1]
    yield "heavy tails", (gauss**3)[:400_000]
    yield "many ties", np.round(gauss * 4)[:300_000].astype(np.float32)
    yield "sorted (a strided sample sees a trend)", np.sort(gauss)[:500_000]
    yield "constant", np.full(250_000, 0.25, np.float32)
    yield "float64", rng.standard_normal(300_000)
    yield "small (np.median itself)", gauss[:1001]
    skewed = rng.exponential(size=600_000).astype(np.float32)
    skewed[:300_001] = 1e6  # the median sits at the edge of a jump
    yield "median at a jump", rng.permutation(skewed)


@pytest.mark.parametrize("name,values", list(_cases()), ids=[c[0] for c in _cases()])
def test_median_is_numpys_median(name, values):
    got = noise._median(values.copy())
    want = np.median(values)
    assert got == want, name
    assert np.asarray(got).dtype == want.dtype


def test_median_of_data_with_nan_is_nan_as_numpys():
    values = np.random.default_rng(1).standard_normal(400_000).astype(np.float32)
    values[1234] = np.nan
    assert np.isnan(noise._median(values.copy())) and np.isnan(np.median(values))


def _numpy_differences(vis, ok, inv_w, order):
    """The normalised differences of one order with numpy's array algebra."""
    c = [(-1) ** (order - j) * math.comb(order, j) for j in range(order + 1)]
    span = vis.shape[1] - order
    both = np.logical_and.reduce([ok[:, j:j + span] for j in range(order + 1)])
    comb = vis[:, :span] * np.float32(c[0])
    var = inv_w[:, :span] * np.float32(c[0] ** 2)
    for j in range(1, order + 1):
        comb += np.float32(c[j]) * vis[:, j:j + span]
        var += np.float32(c[j] ** 2) * inv_w[:, j:j + span]
    return comb[both] / np.sqrt(var[both])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_time_differences_are_numpys(order):
    rng = np.random.default_rng(order)
    shape = (7, 40, 5)  # baselines, times, channels
    vis = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    weight = rng.uniform(0.2, 3.0, shape).astype(np.float32)
    ok = rng.random(shape) > 0.1
    inv_w = np.where(ok, 1.0 / weight, 0.0).astype(np.float32)
    want = _numpy_differences(vis, ok, inv_w, order)
    coeffs = np.array([(-1) ** (order - j) * math.comb(order, j) for j in range(order + 1)],
                      np.float32)
    out = np.empty(2 * vis.size, np.float32)
    n = noise._difference_values(vis, ok, inv_w, coeffs, out)
    assert n == 2 * want.size
    np.testing.assert_allclose(out[0:n:2], want.real, rtol=2e-7, atol=0)
    np.testing.assert_allclose(out[1:n:2], want.imag, rtol=2e-7, atol=0)
    expected = noise.MAD_TO_SIGMA * np.median(np.abs(np.concatenate([want.real, want.imag])
                                                      - np.median(np.concatenate([want.real,
                                                                                  want.imag]))))
    assert noise._difference_sigma(vis, ok, inv_w, order) == pytest.approx(expected, rel=1e-6)


def test_make_images_reports_the_noise_visibility_noise_finds():
    """The estimate make_images takes on its thread is the one visibility_noise gives."""
    import torch

    sim = simulate(preset("SIM.sky", n_times=12, n_channels=4))
    result = make_images(sim.data, torch.device("cpu"), npix=64, niter=0)
    est = noise.visibility_noise(sim.data)
    assert result.extras["thermal_noise_jy"] == est.sigma
    assert result.extras["noise_method"] == est.method
    assert est.sigma == pytest.approx(sim.noise_jy, rel=0.2)
