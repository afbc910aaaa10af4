"""Torch's spreading of visibilities onto the w planes: the gridding path on a GPU.

:func:`cosmic_horizons_lab.science.gridding.dirty_image` owns the mathematics (kernels,
w-stacking, the planes' FFTs and the correction); on a GPU it hands the visibilities to
this module, which does on the device what the compiled loops of :mod:`.gridding_loops`
do on the CPU. ``COSMIC_HORIZONS_SPREADING=torch`` runs the same code on the CPU, which
is how the tests cover it. It is written for a device where one large operator is
cheap and each launch, host synchronisation and host↔device copy is not:

1. :func:`stage`: the inputs go to the device once, in chunks sized to its free
   memory; zero weights are dropped, the visibilities conjugated (and Hermitian-flipped
   where ``w < 0``) and weighted there. What stays is 32 B per visibility (u, v, w as
   float64, the value as complex64), in parts of a chunk each. Only the w range is read
   back (one synchronisation).
2. :func:`prepare`: once the kernels are chosen, each part becomes grid coordinates:
   first covered cell along u, v and w (int32), the kernels' offsets from them
   (float32), the value times ``exp(2πi w nshift)``; then it is sorted on the device by
   (first w plane, uv tile), so that the visibilities reaching a w plane are contiguous
   and neighbours in the order write neighbouring cells (atomic adds that stay in cache).
3. :func:`spread`: the planes are held as one 3-D ring of ``R`` planes on the device (as
   many as the free memory allows, all of them when they fit). The first planes ``0 ..
   n_planes`` are cut into slabs of ``R - W_w + 1`` first planes; for each slab the
   visibilities whose first plane falls in it (a contiguous range of every part, found
   by ``searchsorted``) are spread in chunks, each chunk with ONE ``index_add_`` of
   ``V · k_w ⊗ k_v ⊗ k_u`` into the ring (index ``slot(plane) · cells + cell``). Planes
   no later slab reaches are handed to the caller's ``add_plane`` in increasing order.

When the prepared visibilities would not fit beside the planes (more than
:data:`RESIDENT_FRACTION` of the free device memory), the parts are parked in pinned
host memory after steps 1 and 2, and each slab copies only its own range of them to the
device: a visibility then crosses the bus five times in all, the price of a job larger
than the card (on a 16 GB card, beyond about 1.7e8 visibilities).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from cosmic_horizons_lab.science.device import (
    MEMORY_FRACTION,
    chunk_budget_bytes,
    chunk_size,
    free_memory_bytes,
    host_threads,
)

if TYPE_CHECKING:  # pragma: no cover
    from cosmic_horizons_lab.science.gridding import Kernel

#: Bytes per visibility of a prepared part (u, v, w planes' first cells as int32, the
#: kernels' offsets as float32 and the complex64 value).
PREPARED_BYTES = 4 * 3 + 4 * 3 + 8
#: Share of the device's free memory the prepared visibilities may take before they are
#: parked in host memory instead (the planes and the scatter's chunks need the rest).
RESIDENT_FRACTION = 0.35
#: Side of the uv tiles the visibilities are sorted by within a w plane, in grid cells.
TILE = 16


@dataclass
class Part:
    """A run of kept visibilities, on the device or parked in (pinned) host memory.

    Staged (:func:`stage`): ``u``, ``v``, ``w`` (float64 wavelengths, Hermitian flip
    applied) and ``vals``. Prepared (:func:`prepare`): ``uf``, ``vf``, ``fp`` (first
    covered cell along u, v and first w plane, int32), ``du``, ``dv``, ``dw``
    (kernel offsets ``first - position``, float32) and ``vals``, sorted by ``fp``.
    """

    tensors: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.tensors["vals"].shape[0])


@dataclass
class Staged:
    """The kept visibilities after :func:`stage`, and what the kernel choice needs of them."""

    parts: list[Part]
    n_vis: int
    w_lo: float
    w_hi: float
    device: torch.device
    parked: bool  # parts live in host memory and travel to the device per slab


def _park(tensors: dict[str, torch.Tensor], parked: bool) -> Part:
    if not parked:
        return Part(tensors)
    pin = torch.cuda.is_available()

    def host(t: torch.Tensor) -> torch.Tensor:
        if not pin:
            return t.cpu()
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)  # one copy, into pinned pages
        return out.copy_(t)

    return Part({k: host(t) for k, t in tensors.items()})


def _must_park(n_rows: int, device: torch.device) -> bool:
    """Whether the prepared visibilities would crowd the planes out of the device."""
    if device.type == "cpu":
        return False
    return n_rows * PREPARED_BYTES > RESIDENT_FRACTION * free_memory_bytes(device)


def stage(uvw_lambda: np.ndarray, vis: np.ndarray, weight: np.ndarray,
          device: torch.device) -> Staged:
    """Copy the inputs to ``device`` chunk by chunk, drop zero weights, conjugate and weight.

    ``Re V exp(-iφ) = Re conj(V) exp(+iφ)``: the values are conjugated once, then gridded
    with the ``+`` sign; rows with ``w < 0`` become their Hermitian conjugates ``(-uvw,
    V)``, which leaves the real image unchanged (see :mod:`.gridding`).
    """
    uvw = torch.as_tensor(np.asarray(uvw_lambda))
    vis_t = torch.as_tensor(np.asarray(vis))
    wt = torch.as_tensor(np.asarray(weight))
    n = int(wt.shape[0])
    parked = _must_park(n, device)
    # inputs in their own dtypes, float64 copies, the staged part and temporaries
    in_bytes = 3 * uvw.element_size() + vis_t.element_size() + wt.element_size()
    step = chunk_size(in_bytes + 3 * 24 + 4 * 32, device, minimum=1024)
    parts: list[Part] = []
    lows, highs = [], []
    # many operators of a chunk each: one intra-op thread on the CPU (see host_threads;
    # a sort of 2.5e5 keys took 0.28 s on 2 threads of a loaded host, 0.02 s on one)
    with host_threads(device, 1):
        for s in range(0, n, step):
            e = min(n, s + step)
            wc = wt[s:e].to(device)
            uvw_c = uvw[s:e].to(device)
            vals = vis_t[s:e].to(device)
            keep = wc != 0
            if not bool(keep.all()):  # one synchronisation per chunk
                uvw_c, vals, wc = uvw_c[keep], vals[keep], wc[keep]
            if uvw_c.shape[0] == 0:
                continue
            uvw_c = uvw_c.to(torch.float64)
            vals = vals.to(torch.complex64) * wc.to(torch.float32)
            flip = uvw_c[:, 2] < 0
            sign = 1.0 - 2.0 * flip.to(torch.float64)
            # conj(V) where w >= 0, V where the row is Hermitian-flipped
            torch.view_as_real(vals)[:, 1] *= (2.0 * flip.to(torch.float32) - 1.0)
            w = uvw_c[:, 2] * sign
            lows.append(w.min())
            highs.append(w.max())
            parts.append(_park({"u": uvw_c[:, 0] * sign, "v": uvw_c[:, 1] * sign, "w": w,
                                "vals": vals}, parked))
            del uvw_c, wc, keep, flip, sign
    if parts:
        w_lo, w_hi = torch.stack([torch.stack(lows).min(), torch.stack(highs).max()]).tolist()
    else:
        w_lo = w_hi = 0.0
    return Staged(parts, sum(len(p) for p in parts), float(w_lo), float(w_hi), device, parked)


@dataclass
class Prepared:
    """Parts in grid coordinates, sorted by first w plane, and the span of their first cells."""

    parts: list[Part]
    device: torch.device
    u_first_bounds: np.ndarray  # (lowest, highest) first covered cell along u
    v_first_bounds: np.ndarray


def _fetch(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device, non_blocking=True)


def prepare(staged: Staged, scale_u: float, scale_v: float, half: float, w0: float,
            dw: float, nshift: float, wkernel: Kernel | None) -> Prepared:
    """Grid coordinates of every staged visibility (see :class:`Part`), sorted on the device.

    ``scale_u``/``scale_v`` turn wavelengths into grid cells, ``half`` is half the uv
    kernel's support; the w planes are ``w0 + p dw`` apart, and ``exp(2πi w nshift)`` is
    applied to the values (``wkernel`` is None without w stacking).
    """
    device = staged.device
    parts: list[Part] = []
    bounds = []
    whalf = wkernel.support / 2 if wkernel is not None else 0.0
    with host_threads(device, 1):
        for part in staged.parts:
            t = {k: _fetch(v, device) for k, v in part.tensors.items()}
            part.tensors = {}  # the staged copy goes as soon as it is converted
            # first covered cell (float64: positions of long baselines need it)
            u_pix = t.pop("u") * scale_u
            v_pix = t.pop("v") * scale_v
            uf = torch.floor(u_pix - half) + 1
            vf = torch.floor(v_pix - half) + 1
            du, dv = (uf - u_pix).to(torch.float32), (vf - v_pix).to(torch.float32)
            del u_pix, v_pix
            w = t.pop("w")
            vals = t.pop("vals")
            if wkernel is not None:
                w_pix = (w - w0) / dw
                fp = torch.floor(w_pix - whalf) + 1
                dwp = (fp - w_pix).to(torch.float32)
                fp = fp.to(torch.int32)
                # exp(2πi w nshift), the phase taken out of the planes; turns reduced in float64
                turns = (torch.remainder(w * nshift, 1.0) * (2 * np.pi)).to(torch.float32)
                vals = vals * torch.polar(torch.ones_like(turns), turns)
                del w_pix, turns
            else:
                fp = torch.zeros(w.shape, dtype=torch.int32, device=device)
                dwp = torch.zeros(w.shape, dtype=torch.float32, device=device)
            del w
            uf, vf = uf.to(torch.int32), vf.to(torch.int32)
            bounds.append(torch.stack([uf.min(), uf.max(), vf.min(), vf.max()]))
            # by first plane, then uv tile (wrapped to 16 bits a side: only grouping matters)
            key = ((fp.to(torch.int64) << 32) | ((torch.div(vf, TILE, rounding_mode="floor")
                                                  .to(torch.int64) & 0xFFFF) << 16)
                   | (torch.div(uf, TILE, rounding_mode="floor").to(torch.int64) & 0xFFFF))
            order = torch.sort(key).indices
            del key
            sorted_part = {name: x.index_select(0, order) for name, x in
                           (("uf", uf), ("vf", vf), ("fp", fp), ("du", du), ("dv", dv),
                            ("dw", dwp), ("vals", vals))}
            del order, uf, vf, fp, du, dv, dwp, vals
            parts.append(_park(sorted_part, staged.parked))
    staged.parts = []
    if bounds:
        b = torch.stack(bounds)
        lo, hi = b.min(0).values.tolist(), b.max(0).values.tolist()  # one synchronisation
        u_bounds, v_bounds = np.array([lo[0], hi[1]]), np.array([lo[2], hi[3]])
    else:
        u_bounds = v_bounds = np.zeros(2, np.int64)
    return Prepared(parts, device, u_bounds, v_bounds)


def ring_planes(n_planes: int, w_support: int, plane_bytes: int, device: torch.device) -> int:
    """How many planes the ring holds: all of them when they fit in a share of the free
    memory, else as many as do, and never fewer than the w kernel's support (one slab
    of first planes then reaches ``W_w`` planes)."""
    # on the CPU, a chunk's share: fresh pages cost more than the extra slabs (see device.py)
    budget = (chunk_budget_bytes(device) if device.type == "cpu" else
              int(free_memory_bytes(device) * MEMORY_FRACTION))
    fit = budget // max(1, plane_bytes)
    return int(min(n_planes, max(w_support, fit)))


def accumulate(ring_flat: torch.Tensor, index: torch.Tensor, contrib: torch.Tensor,
               pairs: bool | None = None) -> None:
    """``ring_flat[index] += contrib`` (complex64, repeated indices summed).

    With ``pairs`` (the default on a GPU) the sum runs on float32 pairs
    (``view_as_real``: rows of two floats, native float atomics, whatever torch does for
    complex atomics); on the CPU, complex ``index_add_`` on the 1-D tensor is torch's
    fast path (its row-wise one is slow there).
    """
    if pairs is None:
        pairs = ring_flat.device.type != "cpu"
    if pairs:
        torch.view_as_real(ring_flat).index_add_(0, index, torch.view_as_real(contrib))
    else:
        ring_flat.index_add_(0, index, contrib)


def spread(prepared: Prepared, kernel: Kernel, wkernel: Kernel | None, n_planes: int,
           nrow: int, vlo: int, ulo: int, stride: int,
           add_plane: Callable[[int, torch.Tensor], None]) -> None:
    """Spread every prepared visibility onto its planes, handing each plane that received
    data to ``add_plane(p, grid)`` in increasing ``p`` as soon as no later visibility
    reaches it (``grid``: the plane's ``nrow × stride`` cells, flat; ``add_plane`` clears
    it). See the module docstring for the slabs and the ring."""
    device = prepared.device
    support = kernel.support
    w_support = wkernel.support if wkernel is not None else 1
    cells = nrow * stride
    n_ring = ring_planes(n_planes, w_support, cells * 8, device)
    slab = n_ring - w_support + 1  # first planes per slab
    ring = torch.zeros((n_ring, cells), dtype=torch.complex64, device=device)
    ring_flat = ring.view(-1)
    index_dtype = torch.int32 if n_ring * cells < 2**31 else torch.int64
    k = torch.arange(support, dtype=torch.float32, device=device)
    kw_steps = torch.arange(w_support, dtype=torch.float32, device=device)
    plane_steps = torch.arange(w_support, dtype=index_dtype, device=device)
    ki = torch.arange(support, dtype=index_dtype, device=device)
    cell_offsets = (ki[:, None] * stride + ki[None, :]).reshape(1, 1, -1)  # row-major W×W
    contributions = support * support * w_support
    # per visibility: weights (4 B), values (8 B), indices and their temporaries
    per_vis = contributions * (4 + 8 + 3 * index_dtype.itemsize + 8) + 128
    step = chunk_size(per_vis, device, minimum=256)
    touched = np.zeros(n_planes, bool)
    flushed = 0
    # the loop is many operators: one intra-op thread on the CPU (see host_threads)
    with host_threads(device, 1):
        for first in range(0, max(n_planes - w_support + 1, 1), slab):
            last = first + slab  # exclusive
            edges = torch.arange(first, last + 1, dtype=torch.int32)
            for part in prepared.parts:
                fp_all = part.tensors["fp"]
                found = torch.searchsorted(fp_all, edges.to(fp_all.device)).tolist()
                counts = np.diff(found)
                for j in range(w_support):  # planes reached from each first plane
                    hit = np.flatnonzero(counts) + first + j
                    touched[hit[hit < n_planes]] = True
                for s in range(found[0], found[-1], step):
                    e = min(found[-1], s + step)
                    t = {name: _fetch(x[s:e], device) for name, x in part.tensors.items()}
                    _scatter(ring_flat, t, kernel, wkernel, k, kw_steps, plane_steps,
                             cell_offsets, n_ring, cells, stride, vlo, ulo, index_dtype)
            done = last if last < n_planes - w_support + 1 else n_planes
            for p in range(flushed, min(done, n_planes)):
                if touched[p]:
                    add_plane(p, ring[p % n_ring])
            flushed = done


def _scatter(ring_flat: torch.Tensor, t: dict[str, torch.Tensor], kernel: Kernel,
             wkernel: Kernel | None, k: torch.Tensor, kw_steps: torch.Tensor,
             plane_steps: torch.Tensor, cell_offsets: torch.Tensor, n_ring: int, cells: int,
             stride: int, vlo: int, ulo: int, index_dtype: torch.dtype) -> None:
    """One chunk: ``V · k_w ⊗ k_v ⊗ k_u`` and its ring indices, then one scatter."""
    n = t["vals"].shape[0]
    # both axes' weights in one evaluation: (n, 2, W), u then v
    kuv = kernel.values(torch.stack([t["du"], t["dv"]], 1)[:, :, None] + k)
    uv = (kuv[:, 1, :, None] * kuv[:, 0, None, :]).reshape(n, 1, -1)  # kv ⊗ ku: (n, 1, W²)
    del kuv
    vals = t["vals"][:, None]  # (n, 1)
    base = (t["vf"].to(index_dtype) - vlo) * stride + (t["uf"].to(index_dtype) - ulo)
    if wkernel is not None:
        kw = wkernel.values(t["dw"][:, None] + kw_steps)  # (n, W_w)
        vals = vals * kw  # (n, W_w), complex
        slot = torch.remainder(t["fp"].to(index_dtype)[:, None] + plane_steps, n_ring) * cells
        del kw
    else:
        slot = torch.zeros((n, 1), dtype=index_dtype, device=base.device)
    index = (slot + base[:, None])[:, :, None] + cell_offsets  # (n, W_w, W²)
    del slot, base
    # the only product of full size (complex times real: 2.3x faster on the CPU than the
    # same on float pairs, whose innermost axis of 2 defeats vectorisation)
    contrib = vals[:, :, None] * uv  # (n, W_w, W²), complex64
    del vals, uv
    accumulate(ring_flat, index.reshape(-1), contrib.reshape(-1))
