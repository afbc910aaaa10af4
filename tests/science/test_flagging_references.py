"""Our RFI flagger against AOFlagger, on the same external simulations, in a bright and a
faint field.

The observations come from ``tests/science/rfi.py``, which imports nothing from the package:
the VLA in D configuration at L band, a 2-hour track of 20 s integrations, 32 channels of
2 MHz, six point sources out to 14′ (so fringes turn along time and frequency), 10
narrowband and 10 broadband RFI injections whose strengths run from 1σ to 200σ.

Definitions (as in ``rfi.py``):

* σ: the thermal noise of one visibility, the standard deviation of its real (and of its
  imaginary) part. The bright field holds 5.8 Jy of sky, about 170σ per visibility; the
  faint one 0.02 Jy, below σ.
* An RFI sample's strength: ``|RFI| / σ`` (the larger of the two polarisations). The truth is
  every (baseline, time, channel) sample where RFI was injected, however faint.
* precision = flagged samples holding RFI / flagged samples;
  recall = flagged RFI samples / RFI samples; "recall above 5σ" counts only the RFI samples
  of strength ≥ 5σ. A sample counts as flagged when any polarisation is.

AOFlagger (the ``aoflagger`` PyPI package, GPL: a test reference only) runs its generic
strategy baseline by baseline on the real and imaginary parts of both polarisations.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cosmic_horizons_lab.science.flagging import DEFAULT_STRATEGY, STRATEGIES, flag_visibilities
from tests.science import rfi

CPU = torch.device("cpu")
FIELDS = {"bright": dataclasses.replace(rfi.BRIGHT, n_times=360, n_channels=32),
          "faint": dataclasses.replace(rfi.FAINT, n_times=360, n_channels=32)}


@pytest.fixture(scope="module", params=sorted(FIELDS))
def compared(request):
    obs = rfi.observe(FIELDS[request.param])
    none = np.zeros(obs.vis.shape, bool)
    ours = {name: flag_visibilities(obs.vis, none, name, CPU) for name in STRATEGIES}
    clean = {name: flag_visibilities(obs.clean, none, name, CPU).mean() for name in STRATEGIES}
    return request.param, obs, ours, clean, rfi.aoflagger_flags(obs.vis)


def test_the_fields_are_what_they_claim(compared):
    name, obs, *_ = compared
    sky_over_sigma = np.abs(obs.clean).mean() / obs.sigma_jy
    if name == "bright":
        assert sky_over_sigma > 50  # the sky dominates each visibility
    else:
        assert sky_over_sigma < 2  # |noise| alone averages √(π/2) σ ≈ 1.25σ
    faint, strong = obs.strength[obs.truth] < 5, obs.strength[obs.truth] >= 20
    assert 0.03 < obs.truth.mean() < 0.3 and faint.mean() > 0.2 and strong.mean() > 0.2


def test_default_strategy_against_aoflagger(compared):
    """Bright field: recall ≥ 0.9 above 5σ, with precision at least AOFlagger's.
    Faint field: precision ≥ 0.97 (and the same recall above 5σ)."""
    name, obs, ours, _, ao = compared
    mine, theirs = rfi.score(ours[DEFAULT_STRATEGY], obs), rfi.score(ao, obs)
    print(f"\n{name}: ours {mine}\n{name}: AOFlagger {theirs}")
    assert mine.recall_5 >= 0.9, mine
    assert mine.precision >= theirs.precision, (mine, theirs)
    if name == "faint":
        assert mine.precision >= 0.97, mine


def test_no_strategy_flags_clean_data(compared):
    """Without RFI, no strategy flags more than 2 % of the data, bright field or faint."""
    _, _, _, clean, _ = compared
    assert max(clean.values()) <= 0.02, clean


def test_strategies_are_ordered_by_sensitivity(compared):
    _, obs, ours, _, _ = compared
    found = [rfi.score(ours[name], obs).recall for name in ("low", "medium", "high_sensitivity")]
    assert found[0] <= found[1] <= found[2], found
