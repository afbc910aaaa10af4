"""StEFCal against known gains."""

import numpy as np
import pytest
import torch

from cosmic_horizons_lab.science.calibration import apply_gains, expand_gains, solve_gains
from cosmic_horizons_lab.science.simulate import preset, simulate

CPU = torch.device("cpu")


def _gain_errors(sim, cal):
    nb, nt, nf, _ = sim.data.shape
    g, ok = expand_gains(cal, nt, nf)
    ref = list(cal.antennas).index(cal.ref_antenna)
    truth = sim.gains * np.exp(-1j * np.angle(sim.gains[:, :, ref:ref + 1, :]))
    return np.abs(g - truth) / np.abs(truth), ok


def test_noiseless_gains_recovered():
    sim = simulate(preset("SIM.small", noise_jy=0.0))
    cal = solve_gains(sim.data, sim.data.flags, sim.model, CPU, solution_interval=1, channel_bin=1)
    err, ok = _gain_errors(sim, cal)
    assert ok.all()
    assert err.max() < 1e-4
    assert cal.residual < 1e-4


@pytest.mark.parametrize("noise", [0.01, 0.05])
def test_noisy_gain_error_matches_the_noise(noise):
    sim = simulate(preset("SIM.small", noise_jy=noise))
    cal = solve_gains(sim.data, sim.data.flags, sim.model, CPU, solution_interval=1, channel_bin=1)
    err, _ = _gain_errors(sim, cal)
    n_ant = len(sim.antennas)
    # least squares with the other gains known: E|δg|²/|g|² = 2σ² / (Σ_q |M_pq|² |g_q|²)
    power = np.mean(np.abs(sim.model) ** 2) * np.mean(np.abs(sim.gains) ** 2)
    expected = np.sqrt(2 * noise**2 / ((n_ant - 1) * power)) / np.sqrt(np.mean(np.abs(sim.gains) ** 2))
    measured = np.sqrt(np.mean(err**2))
    assert 0.7 < measured / expected < 1.5, (measured, expected)


def test_longer_solution_interval_averages_noise_down():
    sim = simulate(preset("SIM.small", noise_jy=0.05, gain_phase=True))
    short = solve_gains(sim.data, sim.data.flags, sim.model, CPU, solution_interval=1, channel_bin=1)
    # gains drift slowly in time, so two-integration cells still follow them
    longer = solve_gains(sim.data, sim.data.flags, sim.model, CPU, solution_interval=2, channel_bin=1)
    e_short, _ = _gain_errors(sim, short)
    e_long, _ = _gain_errors(sim, longer)
    assert np.sqrt(np.mean(e_long**2)) < np.sqrt(np.mean(e_short**2))


def test_applied_gains_give_back_the_model():
    sim = simulate(preset("SIM.small", noise_jy=0.0))
    vs = sim.data
    cal = solve_gains(vs, vs.flags, sim.model, CPU, solution_interval=1, channel_bin=1)
    out, flags, weights = apply_gains(vs, vs.flags, cal)
    for k in range(2):  # RR, LL
        assert np.abs(out[..., k] - sim.model).max() < 1e-4 * np.abs(sim.model).max()
    assert not flags.any() and np.all(weights > 0)


def test_dead_antenna_is_flagged_not_amplified():
    sim = simulate(preset("SIM.small", noise_jy=0.01))
    vs = sim.data
    dead = vs.antennas[3]
    rows = (vs.ant1 == dead) | (vs.ant2 == dead)
    rng = np.random.default_rng(0)
    vs.vis[rows] = (1e-3 * rng.standard_normal(vs.vis[rows].shape)).astype(np.complex64)
    cal = solve_gains(vs, vs.flags, sim.model, CPU, solution_interval=1, channel_bin=1)
    out, flags, _ = apply_gains(vs, vs.flags, cal)
    assert flags[rows].all()
    assert not flags[~rows].any()
