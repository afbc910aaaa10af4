"""The flagger's two paths on one simulated observation: the compiled host loops the CPU runs
(flagging_host.py) and the torch operators the GPU runs, here run on the CPU.

The host loops were restructured for speed (plane by plane, transposed frequency passes,
chunks balanced over the worker threads); the torch path is the reference they must match
sample for sample, holes (absent, non-finite, already flagged samples) included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmic_horizons_lab.science import flagging
from cosmic_horizons_lab.science.flagging import flag_visibilities
from cosmic_horizons_lab.science.flagging_host import fill_masked, weighted_planes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def holed(sim_rfi):
    """The first 24 baselines of the RFI simulation, with absent, non-finite and flagged
    samples punched in."""
    vis = sim_rfi.data.vis[:24].copy()
    flags = sim_rfi.data.flags[:24].copy()
    vis[3, 5:9] = 0
    vis[4, :, 7, 0] = np.nan
    vis[6, 2, 3, -1] = np.inf
    flags[5, 10:12, :, -1] = True
    return vis, flags


@pytest.mark.parametrize("strategy", ["medium", "high_sensitivity"])
def test_host_loops_flag_as_the_torch_operators_do(holed, strategy, monkeypatch):
    vis, flags = holed
    host = flag_visibilities(vis, flags, strategy, CPU)
    monkeypatch.setattr(flagging, "HOST_LOOPS", False)
    ops = flag_visibilities(vis, flags, strategy, CPU)
    assert 0.01 < host.mean() < 0.6  # flags something, not everything
    assert host[3, 5:9].all() and host[4, :, 7].all() and host[5, 10:12].all()
    np.testing.assert_array_equal(host, ops)


def test_chunks_balanced_over_threads_flag_as_one_thread(sim_rfi):
    vs = sim_rfi.data
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = flag_visibilities(vs.vis, vs.flags, "medium", CPU)
        torch.set_num_threads(2)
        seen = []
        two = flag_visibilities(vs.vis, vs.flags, "medium", CPU,
                                progress=lambda done, total: seen.append((done, total)))
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one, two)
    assert seen and seen[-1][1] == vs.vis.shape[0] and max(d for d, _ in seen) == vs.vis.shape[0]


def test_masked_mean_loops_match_numpy():
    rng = np.random.default_rng(3)
    b, k, nt, nf = 3, 4, 9, 11
    planes = rng.standard_normal((b * k, nt, nf)).astype(np.float32)
    flags = rng.random((b, nt, nf)) < 0.3
    w = (~flags).astype(np.float32)
    both = weighted_planes(planes, flags, k)
    np.testing.assert_array_equal(both[: b * k], planes * np.repeat(w, k, axis=0))
    np.testing.assert_array_equal(both[b * k:], w)
    smoothed = rng.random(both.shape).astype(np.float32)
    smoothed[b * k:][rng.random((b, nt, nf)) < 0.1] = 1e-4  # no unflagged neighbour
    out = fill_masked(planes, smoothed, flags, k)
    norm = np.repeat(smoothed[b * k:], k, axis=0)
    expected = np.where(np.repeat(flags, k, axis=0),
                        np.where(norm < np.float32(1e-3), np.float32(0), smoothed[: b * k] / norm),
                        planes)
    np.testing.assert_array_equal(out, expected)
