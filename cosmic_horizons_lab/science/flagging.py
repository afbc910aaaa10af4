"""RFI flagging: SumThreshold on the residual after the sky, in the style of AOFlagger.

Per baseline, on the time × frequency planes of the complex visibilities (the
real and imaginary parts of every polarisation, thresholded together, so all
polarisations are flagged together as AOFlagger's default strategies do):

1. remove the sky: fit a smooth surface to every plane, a local quadratic in
   time and in frequency with Gaussian weights (a separable Savitzky–Golay
   filter, :func:`_fit_surface`). A quadratic follows the fringes of a bright
   field (sources off the phase centre make every baseline's visibility turn
   in time and frequency); a weighted mean, as amplitude flaggers use, rounds
   their crests off by many σ and flags them. Samples flagged so far are first
   filled with the Gaussian-weighted mean of their unflagged neighbours
   (normalised convolution, exact for any mask), so found RFI does not pull
   the fit;
2. take the residual power of each sample over the planes, its cube root
   (close to Gaussian for noise), in units of a robust σ (median and MAD of
   the unflagged samples): RFI that adds in quadrature to a bright visibility,
   invisible in its amplitude, is all there in the complex residual;
3. run SumThreshold (Offringa et al. 2010, MNRAS 405, 155) along time and
   along frequency for windows of 1, 2, 4 … samples: a window whose mean
   exceeds ``χ_M = χ_1 / ρ^log2(M)`` is flagged whole, so faint broad RFI is
   caught by long windows and strong narrow RFI by short ones; samples flagged
   earlier in the pass enter a window at the threshold value, neither hiding
   nor inventing RFI;
4. repeat with a falling threshold; each pass decides afresh on its better fit
   (the first fit is pulled by the RFI, and what it makes of the neighbours of
   strong RFI must not stick), and its flags are what the next fit leaves out;
5. dilate with the scale-invariant rank operator (Offringa et al. 2012, A&A
   539, A95) so the faint edges of flagged regions go too (``high_sensitivity``).

On the CPU the steps that are not matrix products run as compiled loops
(:mod:`~cosmic_horizons_lab.science.flagging_host`: SumThreshold, the median and
MAD, the residual power, the masked-mean filling, the planes from the visibilities),
one pass each over a chunk where torch took several operators and temporaries; the
flags are the same sample for sample (``tests/science/test_flagging_host.py``), and
the flagger 2.3× faster on one thread (1e6 visibilities: 0.30 → 0.13 s of CPU; 0.10 s with
the loops run plane by plane and the frequency passes on transposed copies, issue 17). The
GPU runs the torch operators; ``HOST_LOOPS = False`` runs them on the CPU too, which is how
``tests/science/test_flagging_paths.py`` holds the two paths to the same flags.

All baselines of a chunk are processed at once as one tensor; chunks are sized
to the device's free memory, and on the CPU kept to a few MiB
(:data:`CPU_CHUNK_BYTES`) so a pass's temporaries stay in cache. Per pass the
work is linear in the number of samples: each surface fit is two matrix
products (no 1-channel convolutions), and every SumThreshold window is one
cumulative sum plus ⌈log2 M⌉ boolean ORs along either axis, with no
transposed copies.

Measured against AOFlagger on external simulations (``tests/science/
test_flagging_references.py``, ``benchmarks/bench_flagging_references.py``):
in a field of 170σ per visibility, recall above 5σ ≥ 0.99 with precision ≈ 0.94
where AOFlagger's is ≈ 0.37; in a faint field precision ≈ 0.98.

Strategy levels (``rfi_strategy``); χ_1 is in robust σ of the residual
statistic of step 2:

``low``
    χ_1 = 9, three passes: flags only unmistakable RFI; for clean data where
    every sample counts.
``medium`` (default)
    χ_1 = 7, four passes, no dilation: RFI down to about 5σ per visibility
    (and fainter where it is broad) with few false flags.
``high_sensitivity``
    χ_1 = 5.5, four passes, SIR dilation with η = 0.2 (AOFlagger's value), and
    channels or integrations more than half flagged are flagged whole: also
    catches the faint wings of RFI, at the price of flagging good data near it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cosmic_horizons_lab.science.device import chunk_size, host_threads
from cosmic_horizons_lab.science.flagging_host import (
    fill_masked,
    planes_from_vis,
    residual_power,
    robust_centre_scale,
    sum_threshold_host,
    weighted_planes,
)


@dataclass(frozen=True)
class FlagStrategy:
    threshold: float  # χ_1 of the last pass, in robust σ of the residual statistic
    passes: int
    window_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    rho: float = 1.5
    threshold_step: float = 1.6  # each earlier pass uses this factor more
    sir_eta: float = 0.0
    fit_sigma: tuple[float, float] = (4.0, 3.0)  # sky surface fit's Gaussian σ (times, channels)
    fit_degree: int = 2  # degree of the local polynomial of the sky surface fit
    fill_sigma: tuple[float, float] = (2.0, 1.5)  # masked mean filling flagged samples
    flag_majority: bool = False  # flag whole channels/integrations more than half flagged


STRATEGIES: dict[str, FlagStrategy] = {
    "low": FlagStrategy(threshold=9.0, passes=3),
    "medium": FlagStrategy(threshold=7.0, passes=4),
    "high_sensitivity": FlagStrategy(threshold=5.5, passes=4, sir_eta=0.2, flag_majority=True),
}
DEFAULT_STRATEGY = "medium"

#: Working set of one chunk of baselines on the CPU (see :func:`flag_visibilities`).
CPU_CHUNK_BYTES = 16 << 20


#: Run the compiled host loops on the CPU (flagging_host.py). False runs the GPU's torch
#: operators on the CPU instead: how CI checks the GPU path against the host path.
HOST_LOOPS = True


def _host_loops(t: torch.Tensor) -> bool:
    return HOST_LOOPS and t.device.type == "cpu"


#: Longest axis fitted by one dense matrix; longer axes go in blocks of this many samples.
#: 64, not 256: the 228 integrations of a 1e7-visibility observation then take blocks of
#: 32 rows × 56 columns instead of a 228² product, 4× fewer flops (0.64 → 0.55 s of CPU
#: per 40 baselines); 32 measured the same as 64.
_FIT_BLOCK = 64


def _local_fit_rows(n: int, sigma: float, degree: int) -> np.ndarray:
    """(n, n) matrix ``H`` of a local polynomial fit along one axis: ``H @ x`` is the fit.

    Row ``i`` is the least-squares fit of a polynomial of ``degree`` to the samples
    within ``3 sigma`` of ``i``, weighted by a Gaussian of ``sigma`` samples, evaluated
    at ``i`` (a Savitzky–Golay filter with Gaussian weights). Near the ends the window
    is cut and the fit extrapolates from the samples there are, instead of assuming
    the axis continues flat as replicate padding would. A quadratic follows a
    fringe's curvature where a weighted mean rounds its crests off: on a field of
    170σ per visibility, a Gaussian mean of σ = 3 samples leaves residuals of up to
    20σ where the quadratic leaves 0.3σ.
    """
    half = max(1, math.ceil(3 * sigma))
    deg = min(degree, n - 1)
    offsets = np.arange(-half, half + 1)
    idx = np.arange(n)[:, None] + offsets[None, :]
    valid = (idx >= 0) & (idx < n)
    w = np.exp(-0.5 * (offsets / sigma) ** 2)[None, :] * valid
    powers = offsets[:, None] ** np.arange(deg + 1)[None, :].astype(float)  # (2h+1, d+1)
    moments = np.einsum("ik,kp,kq->ipq", w, powers, powers)
    # e0ᵀ A⁻¹ per row (A symmetric), then the weight of each offset
    coef = np.linalg.solve(moments, np.broadcast_to(np.eye(deg + 1)[0], (n, deg + 1))[..., None])[..., 0]
    taps = w * (coef @ powers.T)
    h = np.zeros((n, n))
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    np.add.at(h, (rows[valid], idx[valid]), taps[valid])
    return h


@functools.lru_cache(maxsize=32)
def _fit_operator(n: int, sigma: float, degree: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(_local_fit_rows(n, sigma, degree)).float().to(device)


def _fit_axis(x: torch.Tensor, dim: int, sigma: float, degree: int) -> torch.Tensor:
    """Local polynomial fit of (N, T, F) planes along ``dim`` (1: time, 2: frequency).

    A matrix product runs at the CPU's full GEMM rate where a 1-channel
    convolution runs at a fraction of it, so an axis of up to ``_FIT_BLOCK``
    samples takes one dense product even though most of the matrix is zeros,
    along time as a left product so that nothing is transposed. Longer axes go
    in blocks of rows, each with the band of columns its rows reach, so the
    work stays linear in the length and the end rows keep their own fit.
    """
    n = x.shape[dim]
    h = _fit_operator(n, sigma, degree, x.device)
    if n <= _FIT_BLOCK:
        return h @ x if dim == 1 else x @ h.T
    half = max(1, math.ceil(3 * sigma))
    out = torch.empty_like(x)
    for start in range(0, n, _FIT_BLOCK // 2):
        stop = min(n, start + _FIT_BLOCK // 2)
        lo, hi = max(0, start - half), min(n, stop + half)
        band = h[start:stop, lo:hi]
        if dim == 1:
            torch.matmul(band, x[:, lo:hi], out=out[:, start:stop])
        else:
            out[..., start:stop] = x[..., lo:hi] @ band.T
    return out


def _fit_surface(x: torch.Tensor, sigma: tuple[float, float], degree: int) -> torch.Tensor:
    """Separable local polynomial fit of (N, T, F) planes: the tensor product of the fits
    along time and along frequency, i.e. a 2-D local fit with product weights."""
    return _fit_axis(_fit_axis(x, 2, sigma[1], degree), 1, sigma[0], degree)


def _robust_score(stat: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """``stat`` in units of its per-baseline robust σ from its median: (B, T, F).

    The median and the median absolute deviation (× 1.4826, σ for a Gaussian) of
    the unflagged samples of each baseline, so RFI does not inflate the scale.
    """
    b = stat.shape[0]
    if _host_loops(stat):
        # a selection per baseline instead of nanmedian's sort (flagging_host.py)
        med, sigma = (torch.from_numpy(a) for a in
                      robust_centre_scale(stat.reshape(b, -1).numpy(), flags.reshape(b, -1).numpy()))
        return (stat - med.view(b, 1, 1)) / sigma.view(b, 1, 1)
    masked = stat.masked_fill(flags, float("nan")).reshape(b, -1)
    med = torch.nanmedian(masked, dim=1, keepdim=True).values
    mad = torch.nanmedian((masked - med).abs_(), dim=1).values
    sigma = 1.4826 * mad
    sigma = torch.where(torch.isfinite(sigma) & (sigma > 0), sigma, torch.ones_like(sigma))
    med = torch.nan_to_num(med, nan=0.0)
    return (stat - med.view(b, 1, 1)) / sigma.view(b, 1, 1)


def _sum_threshold_1d(x: torch.Tensor, flags: torch.Tensor, m: int, chi: float,
                      dim: int = -1) -> torch.Tensor:
    """One SumThreshold pass with window ``m`` along ``dim``; returns the new flags.

    Works along any axis in place (no transposed copies): window sums come
    from one cumulative sum, and "some window over the threshold covers this
    sample" is a sliding OR of length ``m``, done by doubling in ⌈log2 m⌉
    shifted ORs of booleans instead of a max-pool over floats.
    """
    dim = dim % x.dim()
    n = x.shape[dim]
    if m > n:
        return flags
    if m == 1:
        # flagged samples enter at exactly χ, which never exceeds χ
        return flags | (x > chi)
    cs = torch.cumsum(x.masked_fill(flags, chi), dim=dim)
    # sum of the window starting at j = cs[j + m - 1] - cs[j - 1]
    sums = cs.narrow(dim, m - 1, n - m + 1).clone()
    sums.narrow(dim, 1, n - m).sub_(cs.narrow(dim, 0, n - m))
    hits = sums > m * chi
    del cs, sums
    pad = [0, 0] * (x.dim() - 1 - dim) + [m - 1, m - 1]
    cover = F.pad(hits, pad)  # length n + m - 1; sample i is hit by windows starting at i-m+1 .. i
    span = 1
    while span < m:
        step = min(span, m - span)
        length = cover.shape[dim] - step
        cover = cover.narrow(dim, 0, length) | cover.narrow(dim, step, length)
        span += step
    return flags | cover


def sum_threshold(x: torch.Tensor, flags: torch.Tensor, chi1: float,
                  windows: tuple[int, ...], rho: float) -> torch.Tensor:
    """SumThreshold along time (axis 1) and frequency (axis 2) of a (B, T, F) plane.

    On the CPU the compiled loops of :mod:`~cosmic_horizons_lab.science.flagging_host`
    (one pass per window and axis instead of about eight operators).
    """
    if _host_loops(x):
        return torch.from_numpy(sum_threshold_host(x.contiguous().numpy(), flags.numpy(),
                                                   chi1, windows, rho))
    for m in windows:
        chi = chi1 / rho ** math.log2(m)
        if m == 1:  # the same test along either axis: once is enough
            flags = _sum_threshold_1d(x, flags, 1, chi)
            continue
        flags = _sum_threshold_1d(x, flags, m, chi, dim=1)
        flags = _sum_threshold_1d(x, flags, m, chi, dim=2)
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


def flag_planes(x: torch.Tensor, flags: torch.Tensor, strategy: FlagStrategy) -> torch.Tensor:
    """Flag (B, K, T, F) real planes of B baselines (K: the real and imaginary parts of
    each polarisation); ``flags`` (B, T, F) marks samples never to be trusted.

    Each pass fits the sky as a smooth surface to every plane, with the samples
    flagged so far replaced by the previous fit (so RFI found stops pulling the fit
    and the fit stays one matrix product per axis), and thresholds the residual
    power of the sample, all planes together. The residual is complex: RFI that
    adds in quadrature to a bright visibility hardly changes its amplitude, but it
    is all there in the residual. The statistic is the cube root of the power
    (Wilson–Hilferty: a χ² variable's cube root is close to Gaussian), so the
    robust σ and SumThreshold's sums mean what they do for Gaussian noise.
    """
    b, k, nt, nf = x.shape
    planes = x.reshape(b * k, nt, nf)
    base = flags
    masked = flags.clone()  # kept out of the fit: everything flagged so far
    fit = functools.partial(_fit_surface, sigma=strategy.fit_sigma, degree=strategy.fit_degree)
    if bool(base.any()):
        # absent samples: start from zero and let a few fits fill them in
        model = torch.zeros_like(planes)
        for _ in range(3):
            model = fit(torch.where(_per_plane(base, k), model, planes))
    else:
        model = fit(planes)
    for p in range(strategy.passes):
        if p > 0:
            # Refit with the samples flagged so far filled from their unflagged neighbours
            # (a masked mean: exact for any mask in one step, where filling them from the
            # last fit, itself pulled by the RFI, converges only over many fits).
            if _host_loops(planes):  # the same in two compiled passes (flagging_host.py)
                both = _fit_surface(torch.from_numpy(weighted_planes(planes.numpy(), masked.numpy(), k)),
                                    strategy.fill_sigma, 0)
                filled = torch.from_numpy(fill_masked(planes.numpy(), both.numpy(), masked.numpy(), k))
            else:
                fill = _masked_mean(planes, masked, k, strategy.fill_sigma)
                filled = torch.where(_per_plane(masked, k), fill, planes)
            model = fit(filled)
        if _host_loops(planes):  # one compiled pass (flagging_host.py)
            # (the cube root stays torch's: vectorised, where a compiled loop calls powf)
            stat = torch.from_numpy(residual_power(planes.numpy(), model.numpy(), k)).pow_(1.0 / 3.0)
        else:
            stat = (planes - model).square_().view(b, k, nt, nf).mean(dim=1).pow_(1.0 / 3.0)
        score = _robust_score(stat, masked)
        factor = strategy.threshold_step ** (strategy.passes - 1 - p)
        # each pass decides afresh on its better fit: what an early fit, still pulled by
        # RFI, made of the neighbours of strong RFI is not kept
        current = sum_threshold(score, base, strategy.threshold * factor,
                                strategy.window_sizes, strategy.rho)
        masked = current
    current = sir_operator(current, strategy.sir_eta)
    if strategy.flag_majority:
        # "more than half" among the samples that exist: absent ones don't count
        valid = (~base).float()
        for dim in (2, 1):
            frac = ((current & ~base).float().sum(dim=dim, keepdim=True)
                    / valid.sum(dim=dim, keepdim=True).clamp_min(1.0))
            current = current | (frac > 0.5)
    return current


def _masked_mean(planes: torch.Tensor, flags: torch.Tensor, k: int,
                 sigma: tuple[float, float] = (2.0, 1.5)) -> torch.Tensor:
    """Gaussian-weighted mean of each (B·K, T, F) plane over the samples not in ``flags``
    (normalised convolution: exact for any mask, in one pass, where a local polynomial
    fit with a mask would need iterating). Samples with no unflagged neighbour get 0."""
    b, nt, nf = flags.shape
    weight = (~flags).to(planes.dtype)
    both = torch.cat([(planes.view(b, k, nt, nf) * weight[:, None]).view(b * k, nt, nf), weight])
    both = _fit_surface(both, sigma, 0)
    norm = both[b * k:]
    mean = both[: b * k].view(b, k, nt, nf) / norm.clamp_min(1e-3)[:, None]
    return mean.masked_fill_((norm < 1e-3)[:, None], 0.0).view(b * k, nt, nf)


def _per_plane(flags: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T, F) flags broadcast to the (B·K, T, F) planes."""
    b, nt, nf = flags.shape
    return flags[:, None].expand(b, k, nt, nf).reshape(b * k, nt, nf)


def flag_visibilities(vis: np.ndarray, flags: np.ndarray, strategy: str | FlagStrategy,
                      device: torch.device, progress=None) -> np.ndarray:
    """Flag a (B, T, F, P) visibility cube; returns flags of the same shape.

    Existing flags (and absent samples) stay flagged. Baselines are processed
    in chunks sized to the device's free memory; ``progress(done, total)`` is
    called after each chunk.
    """
    strat = STRATEGIES[strategy] if isinstance(strategy, str) else strategy
    nb, nt, nf, npol = vis.shape
    # planes, model, imputed planes and residual (4 B each per real part), flags and
    # SumThreshold temporaries
    per_baseline = nt * nf * (4 * 2 * npol * 4 + 4 * 12)
    step = chunk_size(per_baseline, device, maximum=nb)
    if device.type == "cpu":
        # Small chunks on the host: the ~150 whole-plane operations of a pass then
        # run on temporaries that stay in cache and are recycled by the allocator
        # instead of being faulted in fresh from the OS each time.
        step = max(1, min(step, CPU_CHUNK_BYTES // per_baseline))
    out = np.empty(vis.shape, bool)

    def flag_chunk(start: int) -> int:
        stop = min(nb, start + step)
        if device.type == "cpu" and HOST_LOOPS:  # one compiled pass (flagging_host.py)
            x, initial = (torch.from_numpy(a) for a in planes_from_vis(vis[start:stop], flags[start:stop]))
        else:
            v = torch.from_numpy(np.ascontiguousarray(vis[start:stop])).to(device)
            fl = torch.from_numpy(np.ascontiguousarray(flags[start:stop])).to(device)
            x = torch.view_as_real(v).permute(0, 3, 4, 1, 2).reshape(v.shape[0], 2 * npol, nt, nf)
            del v
            finite = torch.isfinite(x)
            initial = fl.any(dim=-1) | ~finite.all(dim=1) | (x == 0).all(dim=1)
            x = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
        result = flag_planes(x, initial, strat)
        if device.type == "cpu":
            out[start:stop] = result.numpy()[..., None] | flags[start:stop]
        else:
            # the polarisations' OR on the card, and one copy straight into the output
            # (no host temporary, no host pass over the flags)
            torch.from_numpy(out[start:stop]).copy_(result[..., None] | fl)
        return stop

    # On the host, chunks run side by side on one intra-op thread each: a pass is
    # ~150 small operators, and with one OpenMP team per operator a single
    # descheduled thread (the host is shared) stalls every one of them; whole
    # chunks per thread only ever wait for themselves.
    with host_threads(device, 1) as workers:
        if device.type == "cpu" and workers > 1 and nb > 1:
            # a multiple of the workers in chunks of equal size: 171 baselines in chunks of
            # at most 50 were 50, 50, 50 and 21, one thread doing 100 while the other did 71
            rounds = -(-nb // (workers * step))
            step = -(-nb // (workers * rounds))
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for stop in pool.map(flag_chunk, range(0, nb, step)):
                    if progress is not None:
                        progress(stop, nb)
        else:
            for start in range(0, nb, step):
                stop = flag_chunk(start)
                if progress is not None:
                    progress(stop, nb)
    return out
