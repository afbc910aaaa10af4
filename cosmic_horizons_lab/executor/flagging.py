"""RFI flagging: SumThreshold with iterative background fitting, in the style of AOFlagger.

Per baseline, on the time × frequency plane of the visibility amplitude (the
polarisations combined, so all of them are flagged together as AOFlagger's
default strategies do):

1. fit a smooth background (a Gaussian-weighted average that ignores samples
   already flagged) and take the residual in units of a robust σ (MAD);
2. run SumThreshold (Offringa et al. 2010, MNRAS 405, 155) along time and
   along frequency for windows of 1, 2, 4 … samples: a window whose mean
   exceeds ``χ_M = χ_1 / ρ^log2(M)`` is flagged whole, so faint broad RFI is
   caught by long windows and strong narrow RFI by short ones; samples flagged
   earlier enter a window at the threshold value, neither hiding nor inventing RFI;
3. repeat with a falling threshold (the first passes have a background still
   pulled up by RFI, so they must be conservative);
4. dilate with the scale-invariant rank operator (Offringa et al. 2012, A&A
   539, A95) so the faint edges of flagged regions go too.

All baselines of a chunk are processed at once as one tensor; chunks are sized
to the device's free memory.

Strategy levels (``rfi_strategy``):

``low``
    χ_1 = 8σ, two passes: flags only unmistakable RFI; for clean data where
    every sample counts.
``medium`` (default)
    χ_1 = 6σ, three passes, no dilation: RFI down to about the noise level
    with few false flags (precision and recall ≥ 0.95 on ``SIM.rfi``).
``high_sensitivity``
    χ_1 = 5σ, four passes, SIR dilation with η = 0.2 (AOFlagger's value), and
    channels or integrations more than half flagged are flagged whole: also
    catches the faint wings of RFI, at the price of flagging good data near it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .device import chunk_size


@dataclass(frozen=True)
class FlagStrategy:
    threshold: float  # χ_1 of the last pass, in robust σ
    passes: int
    window_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    rho: float = 1.5
    threshold_step: float = 1.6  # each earlier pass uses this factor more
    sir_eta: float = 0.0
    smooth_sigma: tuple[float, float] = (3.0, 3.0)  # background kernel σ (times, channels)
    flag_majority: bool = False  # flag whole channels/integrations more than half flagged


STRATEGIES: dict[str, FlagStrategy] = {
    "low": FlagStrategy(threshold=8.0, passes=2),
    "medium": FlagStrategy(threshold=6.0, passes=3),
    "high_sensitivity": FlagStrategy(threshold=5.0, passes=4, sir_eta=0.2, flag_majority=True),
}
DEFAULT_STRATEGY = "medium"


def _gauss_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    half = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-half, half + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _smooth(x: torch.Tensor, sigma: tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, T, F) with edge replication."""
    b, t, f = x.shape
    y = x.reshape(b, 1, t, f)
    kt = _gauss_kernel(sigma[0], x.device)
    kf = _gauss_kernel(sigma[1], x.device)
    pt, pf = (len(kt) - 1) // 2, (len(kf) - 1) // 2
    y = F.pad(y, (0, 0, pt, pt), mode="replicate") if t > 1 else y
    y = F.conv2d(y, kt.view(1, 1, -1, 1)) if t > 1 else y
    y = F.pad(y, (pf, pf, 0, 0), mode="replicate") if f > 1 else y
    y = F.conv2d(y, kf.view(1, 1, 1, -1)) if f > 1 else y
    return y.reshape(b, t, f)


def _robust_sigma(res: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Per-baseline σ from the median absolute deviation of unflagged residuals: (B, 1, 1)."""
    b = res.shape[0]
    masked = torch.where(flags, torch.full_like(res, float("nan")), res).reshape(b, -1)
    med = torch.nanmedian(masked, dim=1, keepdim=True).values
    mad = torch.nanmedian((masked - med).abs(), dim=1).values
    sigma = 1.4826 * mad
    sigma = torch.where(torch.isfinite(sigma) & (sigma > 0), sigma, torch.ones_like(sigma))
    return sigma.view(b, 1, 1)


def _sum_threshold_1d(x: torch.Tensor, flags: torch.Tensor, m: int, chi: float) -> torch.Tensor:
    """One SumThreshold pass with window ``m`` along the last axis; returns the new flags."""
    n = x.shape[-1]
    if m > n:
        return flags
    val = torch.where(flags, torch.full_like(x, chi), x)
    if m == 1:
        return flags | (val > chi)
    lead = val.shape[:-1]
    cs = F.pad(torch.cumsum(val, dim=-1), (1, 0))
    window_mean = (cs[..., m:] - cs[..., :-m]) / m  # (..., n - m + 1)
    hits = (window_mean > chi).to(x.dtype).reshape(-1, 1, n - m + 1)
    spread = F.max_pool1d(F.pad(hits, (m - 1, m - 1)), kernel_size=m, stride=1)
    return flags | (spread.reshape(*lead, n) > 0)


def sum_threshold(x: torch.Tensor, flags: torch.Tensor, chi1: float,
                  windows: tuple[int, ...], rho: float) -> torch.Tensor:
    """SumThreshold along time (axis 1) and frequency (axis 2) of a (B, T, F) plane."""
    xt = x.transpose(1, 2).contiguous()  # time-major copy: windows along time run in memory order
    for m in windows:
        chi = chi1 / rho ** math.log2(m)
        ft = _sum_threshold_1d(xt, flags.transpose(1, 2).contiguous(), m, chi)
        flags = _sum_threshold_1d(x, ft.transpose(1, 2).contiguous(), m, chi)
    return flags


def _sir_1d(flags: torch.Tensor, eta: float) -> torch.Tensor:
    """Scale-invariant rank dilation along the last axis, in linear time.

    A sample is flagged when some interval containing it has no more than a
    fraction ``eta`` unflagged, i.e. when ``Σ (flagged ? η : η - 1) >= 0`` over
    it: with ``W`` the cumulative sum, when ``max_{z>y} W[z] - min_{x<=y} W[x] >= 0``.
    """
    w = torch.where(flags, eta, eta - 1.0).to(torch.float32)
    cum = F.pad(torch.cumsum(w, dim=-1), (1, 0))  # (..., n + 1)
    left_min = torch.cummin(cum[..., :-1], dim=-1).values
    right_max = torch.flip(torch.cummax(torch.flip(cum[..., 1:], [-1]), dim=-1).values, [-1])
    return flags | (right_max - left_min >= 0)


def sir_operator(flags: torch.Tensor, eta: float) -> torch.Tensor:
    if eta <= 0:
        return flags
    out = _sir_1d(flags, eta)
    return out | _sir_1d(flags.transpose(1, 2), eta).transpose(1, 2)


def flag_amplitudes(amp: torch.Tensor, flags: torch.Tensor, strategy: FlagStrategy) -> torch.Tensor:
    """Flag a (B, T, F) amplitude plane; ``flags`` marks samples never to be trusted."""
    base = flags.clone()
    current = flags.clone()
    for p in range(strategy.passes):
        factor = strategy.threshold_step ** (strategy.passes - 1 - p)
        weight = (~current).to(amp.dtype)
        # numerator and normaliser of the masked average in one batched convolution
        both = _smooth(torch.cat([amp * weight, weight]), strategy.smooth_sigma)
        background = both[: amp.shape[0]] / both[amp.shape[0]:].clamp_min(1e-6)
        res = amp - background
        sigma = _robust_sigma(res, current)
        current = sum_threshold(res / sigma, base | current, strategy.threshold * factor,
                                strategy.window_sizes, strategy.rho)
    current = sir_operator(current, strategy.sir_eta)
    if strategy.flag_majority:
        # "more than half" among the samples that exist: absent ones don't count
        valid = (~base).float()
        for dim in (2, 1):
            frac = ((current & ~base).float().sum(dim=dim, keepdim=True)
                    / valid.sum(dim=dim, keepdim=True).clamp_min(1.0))
            current = current | (frac > 0.5)
    return current


def flag_visibilities(vis: np.ndarray, flags: np.ndarray, strategy: str | FlagStrategy,
                      device: torch.device, progress=None) -> np.ndarray:
    """Flag a (B, T, F, P) visibility cube; returns flags of the same shape.

    Existing flags (and absent samples) stay flagged. Baselines are processed
    in chunks sized to the device's free memory; ``progress(done, total)`` is
    called after each chunk.
    """
    strat = STRATEGIES[strategy] if isinstance(strategy, str) else strategy
    nb, nt, nf, npol = vis.shape
    # amplitude, flags, background, residual, weights and SumThreshold temporaries
    per_baseline = nt * nf * (8 * npol + 4 * 12)
    step = chunk_size(per_baseline, device, maximum=nb)
    out = np.empty(vis.shape, bool)
    for start in range(0, nb, step):
        stop = min(nb, start + step)
        v = torch.from_numpy(np.ascontiguousarray(vis[start:stop])).to(device)
        fl = torch.from_numpy(np.ascontiguousarray(flags[start:stop])).to(device)
        amp = torch.sqrt((v.real**2 + v.imag**2).mean(dim=-1))
        del v
        initial = fl.any(dim=-1) | (amp == 0) | ~torch.isfinite(amp)
        amp = torch.nan_to_num(amp, nan=0.0, posinf=0.0)
        result = flag_amplitudes(amp, initial, strat)
        out[start:stop] = result.cpu().numpy()[..., None] | flags[start:stop]
        if progress is not None:
            progress(stop, nb)
    return out
