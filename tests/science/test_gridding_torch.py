"""The torch (GPU) spreading path of gridding, run on the CPU: its chunking under a small
memory budget, the slabs of w planes, parked parts and the float-pair scatter a GPU uses."""

import numpy as np
import pytest
import torch

from cosmic_horizons_lab.science import device as dev
from cosmic_horizons_lab.science import gridding_torch
from cosmic_horizons_lab.science.gridding import ImageGeometry, direct_dirty_image, dirty_image

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def rows():
    """Random baselines with w large beside u and v on a wide field: some 80 w planes."""
    rng = np.random.default_rng(7)
    n = 4000
    uvw = rng.normal(size=(n, 3)) * np.array([15.0, 15.0, 40.0])
    vis = (rng.normal(size=n) + 1j * rng.normal(size=n)).astype(np.complex64)
    weight = rng.uniform(0.5, 1.0, n).astype(np.float32)
    weight[::5] = 0  # zero weights are dropped, chunk by chunk
    return uvw, vis, weight


def _rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


def test_float_pair_scatter_equals_numpy_add_at():
    """The GPU's accumulation (float32 pairs) and the CPU's (complex) against numpy."""
    rng = np.random.default_rng(0)
    index = rng.integers(0, 50, 4000)  # many repeats: the sums must not lose any
    contrib = (rng.normal(size=4000) + 1j * rng.normal(size=4000)).astype(np.complex64)
    want = np.zeros(50, np.complex128)
    np.add.at(want, index, contrib)
    for pairs in (True, False):
        got = torch.zeros(50, dtype=torch.complex64)
        gridding_torch.accumulate(got, torch.from_numpy(index).to(torch.int32),
                                  torch.from_numpy(contrib), pairs=pairs)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)


def test_small_budget_chunks_slabs_and_parks_to_the_same_image(rows, monkeypatch):
    """A memory budget of a few MB cuts staging, the plane ring and the scatter into many
    chunks (and parking moves parts off the device): the image is unchanged, and matches
    the direct sum."""
    uvw, vis, weight = rows
    monkeypatch.setenv("COSMIC_HORIZONS_SPREADING", "torch")
    monkeypatch.delenv(dev.MEMORY_LIMIT_ENV, raising=False)
    cell = 1.0 / (1.0 * np.abs(uvw[:, :2]).max())  # wide field: several w planes
    geom = ImageGeometry(64, 48, cell, cell)
    whole = dirty_image(uvw, vis, weight, geom, CPU, epsilon=1e-6)

    calls = {"scatter": 0, "ring": [], "parts": 0}
    scatter, ring_planes, prepare = (gridding_torch._scatter, gridding_torch.ring_planes,
                                     gridding_torch.prepare)

    def count_scatter(*args, **kwargs):
        calls["scatter"] += 1
        return scatter(*args, **kwargs)

    def record_ring(n_planes, *args):
        calls["ring"].append((ring_planes(n_planes, *args), n_planes))
        return calls["ring"][-1][0]

    def count_parts(staged, *args):
        calls["parts"] = len(staged.parts)
        return prepare(staged, *args)

    monkeypatch.setattr(gridding_torch, "_scatter", count_scatter)
    monkeypatch.setattr(gridding_torch, "ring_planes", record_ring)
    monkeypatch.setattr(gridding_torch, "prepare", count_parts)
    monkeypatch.setattr(gridding_torch, "_must_park", lambda n, device: True)
    monkeypatch.setenv(dev.MEMORY_LIMIT_ENV, str(1 << 20))
    chunked = dirty_image(uvw, vis, weight, geom, CPU, epsilon=1e-6)

    (held, n_planes), = calls["ring"]
    assert held < n_planes  # several slabs of w planes, the ring reused
    assert calls["parts"] > 1 and calls["scatter"] > calls["parts"]
    assert _rel_rms(chunked, whole) < 1e-6
    assert _rel_rms(chunked, direct_dirty_image(uvw, vis, weight, geom)) < 1e-5
    assert n_planes > 20


def test_no_kept_visibility_gives_an_empty_image(rows, monkeypatch):
    uvw, vis, weight = rows
    monkeypatch.setenv("COSMIC_HORIZONS_SPREADING", "torch")
    geom = ImageGeometry(32, 32, 1e-3, 1e-3)
    image = dirty_image(uvw, vis, np.zeros_like(weight), geom, CPU, epsilon=1e-4)
    assert image.shape == (32, 32) and not image.any()
