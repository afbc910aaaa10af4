"""How much noise the data hold, measured where the data hold no sky.

The CLEAN threshold and the expected image noise need the noise σ of one
visibility. Measuring it on Stokes I itself measures the sky too, so each
estimator here looks at a combination of samples in which the sky cancels:

* **Stokes V** of an unpolarised sky is zero: ``(XY - YX) / 2i`` for linear
  feeds, ``(RR - LL) / 2`` for circular ones. It holds the same noise as
  Stokes I (both are half the sum or difference of two equally noisy samples).
  Residual gain errors between the hands leak a little sky into it.
* **Differences of adjacent integrations** of Stokes I, per baseline and
  channel, of first to fourth order: the sky moves by a fraction of a fringe
  between two integrations of seconds, while the noise of the two is
  independent; each higher order cancels the fringe's motion to one more order.
  With long integrations (minutes) and sources far from the phase centre, the
  fringes move by a turn between samples and sky leaks into every order.
* (after imaging) the **residual image's** robust σ, the MAD with bright pixels
  clipped (:func:`.detection.robust_sigma`): the noise as the image shows it.

Differences of adjacent *channels* are not used: at the channel widths of
continuum data (tens of MHz) the fringes of sources off the phase centre move
by a turn between channels, so the sky does not cancel (the cause of a noise
estimate 287× too high on a simulated field).

Every estimator can only be inflated by leaked sky, never deflated, so the
smallest of those the data allow is the one with the least sky in it, and the
one used. Samples are scaled to unit statistical weight: the answer is the σ
of the real (or imaginary) part of a Stokes I sample of weight 1, so a
sample of weight ``w`` has σ / sqrt(w).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from dataclasses import dataclass, field

import numpy as np

from cosmic_horizons_lab.science.visibilities import VisibilitySet

MAD_TO_SIGMA = 1.482602218505602


@dataclass(frozen=True)
class NoiseEstimate:
    """σ of a unit-weight Stokes I sample (Jy, real or imaginary part), and how it was found:
    ``method`` names the estimator used, ``estimates`` holds every one the data allowed."""

    sigma: float
    method: str
    estimates: dict[str, float] = field(default_factory=dict)


def _mad_sigma(values: np.ndarray) -> float:
    """1.4826 × the median absolute deviation; ``values`` is scratch (reordered, overwritten):
    in place, the two medians of 5e6 samples copy nothing."""
    if values.size == 0:
        return float("nan")
    med = np.median(values, overwrite_input=True)
    np.abs(np.subtract(values, med, out=values), out=values)
    return float(MAD_TO_SIGMA * np.median(values, overwrite_input=True))


def _pair(vs: VisibilitySet, a: str, b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         np.ndarray, np.ndarray] | None:
    ia, ib = vs.pol_index(a), vs.pol_index(b)
    if ia is None or ib is None:
        return None
    w = vs.weight_cube()
    ok = ~(vs.flags[..., ia] | vs.flags[..., ib]) & vs.present[:, :, None] \
        & (w[..., ia] > 0) & (w[..., ib] > 0)
    return vs.vis[..., ia], vs.vis[..., ib], w[..., ia], w[..., ib], ok


def _half_combination_weight(wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """Weight of ``(a ± b) / 2``: ``4 / (1/w_a + 1/w_b)``, as :meth:`VisibilitySet.stokes_i`."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((wa > 0) & (wb > 0), 4.0 / (1.0 / wa + 1.0 / wb), 0.0)


def stokes_v_sigma(vs: VisibilitySet) -> float | None:
    """σ from Stokes V: ``(XY - YX) / 2i`` (linear feeds) or ``(RR - LL) / 2`` (circular)."""
    linear = _pair(vs, "XY", "YX")
    circular = _pair(vs, "RR", "LL")
    if linear is not None:
        a, b, wa, wb, ok = linear
        v = (a - b) / 2j
    elif circular is not None:
        a, b, wa, wb, ok = circular
        v = (a - b) / 2
    else:
        return None
    if not ok.any():
        return None
    # only the usable samples, in single precision as the data are
    z = v[ok] * np.sqrt(_half_combination_weight(wa[ok], wb[ok])).astype(np.float32)
    return _mad_sigma(np.concatenate([z.real, z.imag]))


def time_difference_sigma(vs: VisibilitySet, max_order: int = 4) -> float | None:
    """σ from differences of adjacent integrations of Stokes I, per baseline and channel.

    A difference of order k (``V(t+1) - V(t)``, then ``V(t+1) - 2V(t) + V(t-1)``, …)
    cancels the sky's fringe to order k in its motion between integrations, so
    each order leaves less sky than the one before, while the noise stays: the
    combination ``Σ c_j V_j`` has variance ``σ² Σ c_j² / w_j``, and dividing by its
    square root leaves σ whatever the weights. Orders 1 to ``max_order``; the smallest σ.
    """
    vis, flags, weight = vs.stokes_i()
    ok = ~flags & vs.present[:, :, None] & (weight > 0) & np.isfinite(vis)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_w = np.where(ok, 1.0 / weight, 0.0)
    nt = vis.shape[1]
    orders = [k for k in range(1, max_order + 1) if nt > k]
    # The orders are independent, and numpy releases the GIL in the work of each: side by
    # side on the host's cores (at 2.6e6 samples, 2.4 s of CPU on one core).
    with concurrent.futures.ThreadPoolExecutor(min(len(orders), os.cpu_count() or 1) or 1) as pool:
        found = [s for s in pool.map(lambda k: _difference_sigma(vis, ok, inv_w, k), orders)
                 if s is not None]
    return min(found) if found else None


def _difference_sigma(vis: np.ndarray, ok: np.ndarray, inv_w: np.ndarray, order: int) -> float | None:
    """σ from the differences of one ``order`` (:func:`time_difference_sigma`)."""
    coeffs = np.array([(-1) ** (order - j) * math.comb(order, j) for j in range(order + 1)], float)
    span = vis.shape[1] - order
    # single precision, as the data are: the σ moves in its 6th digit, for half the memory
    # traffic of complex128 (and each product stays in place)
    both = ok[:, :span].copy()
    comb = vis[:, :span] * np.float32(coeffs[0])
    var = inv_w[:, :span] * np.float32(coeffs[0] ** 2)
    for j, c in enumerate(coeffs[1:], start=1):
        both &= ok[:, j:j + span]
        comb += np.float32(c) * vis[:, j:j + span]
        var += np.float32(c * c) * inv_w[:, j:j + span]
    if not both.any():
        return None
    z = comb[both]
    z /= np.sqrt(var[both])
    return _mad_sigma(np.concatenate([z.real, z.imag]))


def visibility_noise(vs: VisibilitySet) -> NoiseEstimate:
    """The noise σ of a unit-weight Stokes I sample, by the least sky-contaminated estimator
    (module docstring). ``sigma`` is 0 when no estimator applies (one integration, no V)."""
    found = {name: s for name, s in (("stokes_v", stokes_v_sigma(vs)),
                                     ("time_difference", time_difference_sigma(vs)))
             if s is not None and np.isfinite(s) and s > 0}
    if not found:
        return NoiseEstimate(0.0, "none", {})
    method = min(found, key=found.get)
    return NoiseEstimate(found[method], method, found)


def image_noise(sigma_unit: float, imaging_weight: np.ndarray, stat_weight: np.ndarray) -> float:
    """Expected thermal σ of a dirty image pixel (Jy/beam) normalised by ``Σ w``: each sample's
    noise ``σ / sqrt(w_stat)`` carried through its imaging weight,
    ``σ sqrt(Σ w_img² / w_stat) / Σ w_img``."""
    use = (imaging_weight > 0) & (stat_weight > 0)
    wsum = float(imaging_weight[use].sum())
    if wsum <= 0:
        return 0.0
    return sigma_unit * float(np.sqrt((imaging_weight[use] ** 2 / stat_weight[use]).sum())) / wsum
