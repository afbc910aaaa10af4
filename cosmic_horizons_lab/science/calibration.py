"""Antenna gain calibration with StEFCal (Salvini & Wijnholds 2014, A&A 571, A97).

For each solution cell (a block of integrations × channels) we look for
antenna gains ``g`` minimising ``Σ w |V_pq - g_p conj(g_q) M_pq|²``. StEFCal
solves it by alternating least squares: holding the other gains, each ``g_p``
has a closed form, all ``p`` at once, and averaging every second iterate makes
it converge fast and robustly. It only needs sums over visibility matrices,
so every cell of a chunk is solved at once as one batched tensor computation,
which is what makes it fast on a GPU.

Each parallel hand (RR/LL or XX/YY) calibrates its feed's gains; the cross
hands are corrected with the product of both feeds' gains. Gains are
referenced to one antenna's phase, since only phase differences are measurable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cosmic_horizons_lab.science.device import chunk_size
from cosmic_horizons_lab.science.visibilities import POL_NAMES, VisibilitySet

#: polarisation name -> (feed of the first antenna, feed of the second); feed 0 is R or X.
FEEDS = {"RR": (0, 0), "LL": (1, 1), "RL": (0, 1), "LR": (1, 0),
         "XX": (0, 0), "YY": (1, 1), "XY": (0, 1), "YX": (1, 0)}


#: A gain amplitude more than this factor from its cell's median is not trusted.
GAIN_OUTLIER = 5.0


@dataclass
class CalTable:
    """Gains per solution cell: ``gains[time_bin, chan_bin, antenna, feed]``."""

    gains: np.ndarray  # complex64 (Tb, Fb, N, 2)
    valid: np.ndarray  # bool, same shape: False where an antenna had no usable data
    antennas: np.ndarray  # antenna numbers of axis 2
    time_bins: np.ndarray  # (Tb + 1,) integration index edges
    chan_bins: np.ndarray  # (Fb + 1,) channel index edges
    ref_antenna: int
    iterations: int
    residual: float  # weighted rms of V - G M G^H over the solved samples, relative to rms |M|

    def save(self, path: Any, times: np.ndarray, freqs: np.ndarray) -> None:
        """An ``.npz`` a reader needs nothing of ours to understand (see its keys)."""
        t_mid = np.array([times[a:b].mean() for a, b in zip(self.time_bins[:-1], self.time_bins[1:])])
        f_mid = np.array([freqs[a:b].mean() for a, b in zip(self.chan_bins[:-1], self.chan_bins[1:])])
        np.savez_compressed(
            path, gains=self.gains, valid=self.valid, antenna_numbers=self.antennas,
            time_jd=t_mid, freq_hz=f_mid, time_bin_edges=self.time_bins,
            chan_bin_edges=self.chan_bins, feeds=np.array(["R|X", "L|Y"]),
            ref_antenna=self.ref_antenna, convention=np.array("V_pq = g_p conj(g_q) M_pq"))


def _bins(n: int, width: int) -> np.ndarray:
    width = n if width <= 0 else min(width, n)
    return np.unique(np.r_[np.arange(0, n, width), n])


def stefcal(vis: torch.Tensor, model: torch.Tensor, weight: torch.Tensor, n_ant: int,
            i1: torch.Tensor, i2: torch.Tensor, max_iter: int = 200, tol: float = 1e-6
            ) -> tuple[torch.Tensor, int]:
    """Solve gains for a batch of cells.

    ``vis``, ``model``, ``weight``: (C, S, B) — cells, samples per cell,
    baselines; ``i1``, ``i2``: antenna indices of each baseline. Returns
    gains (C, N) and the iterations used.
    """
    c, s, _ = vis.shape
    cdt = vis.dtype
    r = torch.zeros((c, s, n_ant, n_ant), dtype=cdt, device=vis.device)
    m = torch.zeros_like(r)
    w = torch.zeros((c, s, n_ant, n_ant), dtype=weight.dtype, device=vis.device)
    r[:, :, i1, i2] = vis
    r[:, :, i2, i1] = vis.conj()
    m[:, :, i1, i2] = model
    m[:, :, i2, i1] = model.conj()
    w[:, :, i1, i2] = weight
    w[:, :, i2, i1] = weight
    # Start from the gain amplitude that matches the total power; phases zero.
    power = (w * (r.abs() ** 2)).sum(dim=(1, 2, 3)) / (w * (m.abs() ** 2)).sum(dim=(1, 2, 3)).clamp_min(1e-30)
    g = (power.clamp_min(1e-30) ** 0.25).to(cdt)[:, None].expand(c, n_ant).clone()
    wr = w * r
    it = 0
    for it in range(1, max_iter + 1):
        y = m * g.conj()[:, None, None, :]  # y_pq = M_pq conj(g_q)
        num = (wr * y.conj()).sum(dim=(1, 3))
        den = (w * (y.real**2 + y.imag**2)).sum(dim=(1, 3))
        g_new = torch.where(den > 0, num / den.clamp_min(1e-30), g)
        if it % 2 == 0:
            g_new = 0.5 * (g_new + g)
        change = (g_new - g).abs().norm(dim=1) / g_new.abs().norm(dim=1).clamp_min(1e-30)
        g = g_new
        if it % 2 == 0 and bool((change < tol).all()):
            break
    return g, it


def solve_gains(vs: VisibilitySet, flags: np.ndarray, model: np.ndarray, device: torch.device,
                solution_interval: int = 1, channel_bin: int = 1, ref_antenna: int | None = None,
                progress=None) -> CalTable:
    """Solve per-feed antenna gains against ``model`` (B, T, F) for each solution cell.

    ``solution_interval`` integrations and ``channel_bin`` channels make one
    cell (0 means all of them): longer cells average down the noise but can't
    follow faster gain changes.
    """
    antennas = vs.antennas
    index = {a: i for i, a in enumerate(antennas)}
    n_ant = len(antennas)
    i1 = torch.as_tensor([index[a] for a in vs.ant1], device=device)
    i2 = torch.as_tensor([index[a] for a in vs.ant2], device=device)
    nb, nt, nf, _ = vs.shape
    tb, fb = _bins(nt, solution_interval), _bins(nf, channel_bin)
    gains = np.ones((len(tb) - 1, len(fb) - 1, n_ant, 2), np.complex64)
    valid = np.zeros(gains.shape, bool)
    counts = np.bincount(np.r_[[index[a] for a in vs.ant1], [index[a] for a in vs.ant2]],
                         minlength=n_ant)
    ref = int(np.argmax(counts)) if ref_antenna is None else index[ref_antenna]
    hands = [(k, FEEDS[POL_NAMES[p]][0]) for k, p in enumerate(vs.pols)
             if POL_NAMES.get(p) in FEEDS and FEEDS[POL_NAMES[p]][0] == FEEDS[POL_NAMES[p]][1]]
    if not hands:
        raise ValueError(f"no parallel-hand polarisation to calibrate among {vs.pols}")
    iters = 0
    res_num = res_den = 0.0
    cells = [(a, b) for a in range(len(tb) - 1) for b in range(len(fb) - 1)]
    total = len(cells) * len(hands)
    done = 0
    for k, feed in hands:
        # group cells with the same sample count, so they stack into one batch
        by_shape: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for a, b in cells:
            by_shape.setdefault((tb[a + 1] - tb[a], fb[b + 1] - fb[b]), []).append((a, b))
        for (dt, df), group in by_shape.items():
            per_cell = dt * df * n_ant * n_ant * 8 * 6
            step = chunk_size(per_cell, device, maximum=len(group))
            for start in range(0, len(group), step):
                part = group[start:start + step]
                v = np.stack([vs.vis[:, tb[a]:tb[a + 1], fb[b]:fb[b + 1], k] for a, b in part])
                mm = np.stack([model[:, tb[a]:tb[a + 1], fb[b]:fb[b + 1]] for a, b in part])
                ww = np.stack([~flags[:, tb[a]:tb[a + 1], fb[b]:fb[b + 1], k] for a, b in part])
                # (C, B, dt, df) -> (C, S, B)
                to = lambda x: torch.from_numpy(  # noqa: E731
                    np.ascontiguousarray(x.reshape(len(part), nb, -1).transpose(0, 2, 1))).to(device)
                vt = to(v.astype(np.complex64))
                mt = to(mm.astype(np.complex64))
                wt = to(ww.astype(np.float32))
                g, n_it = stefcal(vt, mt, wt, n_ant, i1, i2)
                iters = max(iters, n_it)
                # which antennas had any weight in each cell
                seen = torch.zeros((len(part), n_ant), device=device)
                seen.index_add_(1, i1, wt.sum(dim=1))
                seen.index_add_(1, i2, wt.sum(dim=1))
                ok = seen > 0
                # A dead antenna (no signal, only noise) solves to a gain near zero, and
                # dividing by it would blow its noise up into the image: refuse gains far
                # from the cell's typical amplitude.
                amp = torch.where(ok, g.abs(), torch.full_like(g.real, float("nan")))
                typical = torch.nanmedian(amp, dim=1, keepdim=True).values
                ok = ok & (g.abs() > typical / GAIN_OUTLIER) & (g.abs() < typical * GAIN_OUTLIER)
                g_ref = g[:, ref:ref + 1]
                g = g * (g_ref.conj() / g_ref.abs().clamp_min(1e-30))
                g = torch.where(ok, g, torch.ones_like(g))
                pred = g[:, None, i1] * g[:, None, i2].conj() * mt
                res_num += float((wt * (vt - pred).abs() ** 2).sum())
                res_den += float((wt * mt.abs() ** 2).sum())
                gn, okn = g.cpu().numpy(), ok.cpu().numpy()
                for j, (a, b) in enumerate(part):
                    gains[a, b, :, feed] = gn[j]
                    valid[a, b, :, feed] = okn[j]
                done += len(part)
                if progress is not None:
                    progress(done, total)
    residual = float(np.sqrt(res_num / res_den)) if res_den > 0 else float("nan")
    return CalTable(gains=gains, valid=valid, antennas=antennas, time_bins=tb, chan_bins=fb,
                    ref_antenna=int(antennas[ref]), iterations=iters, residual=residual)


def expand_gains(cal: CalTable, nt: int, nf: int) -> tuple[np.ndarray, np.ndarray]:
    """Gains and validity per integration and channel: (T, F, N, 2)."""
    ti = np.searchsorted(cal.time_bins, np.arange(nt), side="right") - 1
    fi = np.searchsorted(cal.chan_bins, np.arange(nf), side="right") - 1
    return cal.gains[ti][:, fi], cal.valid[ti][:, fi]


def apply_gains(vs: VisibilitySet, flags: np.ndarray, cal: CalTable
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated visibilities ``V / (g_p conj(g_q))``, flags and weights.

    Bad gains flag their data. Dividing by a small gain scales the noise up,
    so each sample's weight is multiplied by ``|g_p g_q|²`` (normalised to a
    median of one): a band-edge channel with a tenth of the response then
    counts a hundred times less, instead of dominating the image with noise.
    A feed that was never solved (a dataset with only RR, say) keeps unit gains.
    """
    nb, nt, nf, _ = vs.shape
    g, ok = expand_gains(cal, nt, nf)  # (T, F, N, 2)
    index = {a: i for i, a in enumerate(cal.antennas)}
    i1 = np.array([index[a] for a in vs.ant1])
    i2 = np.array([index[a] for a in vs.ant2])
    solved_feed = cal.valid.any(axis=(0, 1, 2))
    out = vs.vis.copy()
    new_flags = flags.copy()
    weights = vs.weight_cube().astype(np.float32).copy()
    for k, p in enumerate(vs.pols):
        fa, fb = FEEDS.get(POL_NAMES.get(p, ""), (0, 0))
        ga = g[:, :, i1, fa].transpose(2, 0, 1)
        gb = g[:, :, i2, fb].transpose(2, 0, 1)
        denom = ga * np.conj(gb)
        out[..., k] = (vs.vis[..., k] / np.where(denom == 0, 1, denom)).astype(np.complex64)
        weights[..., k] *= (np.abs(denom) ** 2).astype(np.float32)
        bad = np.zeros((nb, nt, nf), bool)
        if solved_feed[fa]:
            bad |= ~ok[:, :, i1, fa].transpose(2, 0, 1)
        if solved_feed[fb]:
            bad |= ~ok[:, :, i2, fb].transpose(2, 0, 1)
        new_flags[..., k] |= bad
    good = ~new_flags & (weights > 0)
    scale = float(np.median(weights[good])) if good.any() else 1.0
    weights /= scale if scale > 0 else 1.0
    weights[new_flags] = 0.0
    return out, new_flags, weights
