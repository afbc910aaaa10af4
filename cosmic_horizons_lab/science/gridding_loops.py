"""The compiled loops of gridding on the CPU (numba).

:func:`cosmic_horizons_lab.science.gridding.dirty_image` owns the mathematics
(kernels, w-stacking, the FFTs and the correction); this module only holds the
loops that dominate its time on a CPU, written so that they run near
memory speed on every core. Their parallel loops hand out small chunks of
iterations dynamically (:func:`dynamic_chunks`): on a host shared with other
jobs, a thread the OS deschedules then holds the others up by one chunk, not by
its whole static share.

* :func:`order_by_block_and_tile`: a counting sort of the visibilities by
  (w block, uv tile). Within one w block, visibilities that land in the same
  16 × 16-cell tile are adjacent, so the grid cells a thread writes stay in
  its cache; a comparison sort of 10⁷ keys took longer than the gridding.
* :func:`kernel_weights` and :func:`spread_block`: the separable
  "exponential of semicircle" kernel along u, v and w, evaluated per
  visibility as piecewise polynomials (as FINUFFT does) and multiplied into
  the planes. Threads share out the work by
  (plane, tile row); a pass over even tile rows, then one over odd ones,
  means no two threads ever write the same cell (a tile row is at least as
  tall as the kernel), so there are no atomics and no private grids.

* :func:`rows_to_columns`, :func:`pad_columns` and :func:`horner_block`: the single-thread
  (``nogil``) steps between the block FFTs of :mod:`.plane_transform`, which runs them on
  its own threads, each on a block that stays in its core's cache.

The torch scatter (``index_add_``) in ``gridding.py`` stays the path on a GPU,
where atomic adds are cheap; both paths are checked against ducc0 and the
direct Fourier sum in ``tests/science/test_imaging.py``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numba
import numpy as np

#: Side of a uv tile, in grid cells; at least the kernel's support (see the module docstring).
TILE = 16


@contextlib.contextmanager
def dynamic_chunks(size: int) -> Iterator[None]:
    """Parallel loops started inside the block hand out ``size`` iterations at a time.

    (Set from Python: numba's ``parallel_chunksize`` context inside compiled code
    stops those functions from being cached.)
    """
    before = numba.get_parallel_chunksize()
    numba.set_parallel_chunksize(size)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(before)


@numba.njit(cache=True)
def order_by_block_and_tile(w_pix: np.ndarray, u_first: np.ndarray, v_first: np.ndarray,
                            block_width: float, ulo: int, vlo: int, tile: int,
                            n_tiles_u: int, n_tiles_v: int, n_blocks: int
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Permutation sorting visibilities by (w block, tile row, tile column), and the
    start of every (block, tile row) in it: ``starts[b * n_tiles_v + r]``, with a final
    entry equal to the number of visibilities."""
    n = len(w_pix)
    n_keys = n_blocks * n_tiles_v * n_tiles_u
    keys = np.empty(n, np.int64)
    counts = np.zeros(n_keys + 1, np.int64)
    for i in range(n):
        b = min(int(w_pix[i] / block_width), n_blocks - 1)
        r = (int(v_first[i]) - vlo) // tile
        c = (int(u_first[i]) - ulo) // tile
        k = (b * n_tiles_v + r) * n_tiles_u + c
        keys[i] = k
        counts[k + 1] += 1
    for k in range(n_keys):
        counts[k + 1] += counts[k]
    starts = np.empty(n_blocks * n_tiles_v + 1, np.int64)
    for j in range(n_blocks * n_tiles_v):
        starts[j] = counts[j * n_tiles_u]
    starts[-1] = n
    order = np.empty(n, np.int64)
    for i in range(n):
        k = keys[i]
        order[counts[k]] = i
        counts[k] += 1
    return order, starts


@numba.njit(cache=True, inline="always", fastmath=True)
def _piece(coef: np.ndarray, a: int, t: float) -> float:
    """Piece ``a`` of a piecewise-polynomial kernel at ``t`` ∈ [0, 1] of its interval
    (``coef[k, a]`` multiplies ``(2t - 1)^k``)."""
    s = 2.0 * t - 1.0
    acc = coef[coef.shape[0] - 1, a]
    for k in range(coef.shape[0] - 2, -1, -1):
        acc = acc * s + coef[k, a]
    return acc


def _kernel_weights(u_pix: np.ndarray, v_pix: np.ndarray, u_first: np.ndarray,
                   v_first: np.ndarray, s: int, e: int, coef: np.ndarray,
                   ku: np.ndarray, kv: np.ndarray) -> None:
    """The uv kernel's weights along u and along v for visibilities ``s:e`` (into rows
    ``0 .. e - s`` of ``ku`` and ``kv``, float32), from its piecewise polynomial
    ``coef`` (see ``Kernel.pieces``): an ``exp`` and a ``sqrt`` per weight cost
    several times more than the Horner steps."""
    support = coef.shape[1]
    half = 0.5 * support
    degree = coef.shape[0] - 1
    for i in numba.prange(e - s):
        su = 2.0 * (u_first[s + i] - u_pix[s + i] + half) - 1.0
        sv = 2.0 * (v_first[s + i] - v_pix[s + i] + half) - 1.0
        for a in range(support):
            au = coef[degree, a]
            av = au
            for k in range(degree - 1, -1, -1):
                au = au * su + coef[k, a]
                av = av * sv + coef[k, a]
            ku[i, a] = au
            kv[i, a] = av


@numba.njit(cache=True, inline="always", fastmath=True)
def _spread_range(g: np.ndarray, p: int, lo: int, hi: int, s: int, w_pix: np.ndarray,
                  vals: np.ndarray, u_first: np.ndarray, v_first: np.ndarray, ku: np.ndarray,
                  kv: np.ndarray, support: int, wcoef: np.ndarray, ulo: int, vlo: int,
                  ncol: int) -> None:
    """Add visibilities ``lo:hi`` to plane ``p``'s grids ``g`` (one per image: ``g[k]`` takes
    ``vals[:, k]``), each weighted by the w kernel at its distance from the plane (none
    without w stacking, ``wcoef`` empty). The kernel's weights and the cells are computed
    once for all the images (a dirty image and its PSF share them)."""
    wsupport = wcoef.shape[1]
    whalf = 0.5 * wsupport
    n_img = vals.shape[1]
    for i in range(lo, hi):
        if wsupport > 0:
            x = p - w_pix[i] + whalf
            piece = int(math.floor(x))
            if piece < 0 or piece >= wsupport:
                continue
            wk = np.float32(_piece(wcoef, piece, x - piece))
        else:
            wk = np.float32(1.0)
        row0 = (int(v_first[i]) - vlo) * ncol + int(u_first[i]) - ulo
        li = i - s
        for k in range(n_img):
            t = vals[i, k] * wk
            gk = g[k]
            for a in range(support):
                tv = t * kv[li, a]
                row = row0 + a * ncol
                for c in range(support):
                    gk[row + c] += tv * ku[li, c]


def _spread_block(grids: np.ndarray, planes: np.ndarray, slots: np.ndarray, starts: np.ndarray, s: int,
                 w_pix: np.ndarray, vals: np.ndarray, u_first: np.ndarray,
                 v_first: np.ndarray, ku: np.ndarray, kv: np.ndarray, support: int,
                 wcoef: np.ndarray, ulo: int, vlo: int, ncol: int) -> None:
    """Add visibilities ``starts[0] .. starts[-1]`` (one w block, in tile-row order;
    ``starts[r]`` opens tile row r, ``s`` is the block's first index, to which ``ku``
    and ``kv`` are relative) to every plane in ``planes``: ``grids[j]`` is plane
    ``planes[j]``, a compact grid of ``ncol`` columns from cell ``(vlo, ulo)``.
    ``wcoef`` is the w kernel's piecewise polynomial; an empty one means no w
    stacking (weight 1 on the single plane)."""
    n_rows = len(starts) - 1
    n_planes = len(planes)
    for colour in range(2):  # even tile rows, then odd: rows of one pass never overlap
        n_rows_colour = (n_rows - colour + 1) // 2
        for item in numba.prange(n_planes * n_rows_colour):
            j = item // n_rows_colour
            r = 2 * (item % n_rows_colour) + colour
            _spread_range(grids[slots[j]], planes[j], starts[r], starts[r + 1], s, w_pix, vals,
                          u_first, v_first, ku, kv, support, wcoef, ulo, vlo, ncol)


@numba.njit(cache=True, parallel=True)
def take(order: np.ndarray, u_pix: np.ndarray, v_pix: np.ndarray, w_pix: np.ndarray,
         vals: np.ndarray, u_first: np.ndarray, v_first: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The six per-visibility arrays in ``order`` (``vals``: one column per image), on every
    core and in one parallel loop (numpy's fancy indexing runs on one)."""
    n = len(order)
    ou, ov, ow = np.empty(n), np.empty(n), np.empty(n)
    oval = np.empty(vals.shape, vals.dtype)
    ouf, ovf = np.empty(n), np.empty(n)
    for i in numba.prange(n):
        j = order[i]
        ou[i], ov[i], ow[i] = u_pix[j], v_pix[j], w_pix[j]
        for k in range(vals.shape[1]):
            oval[i, k] = vals[j, k]
        ouf[i], ovf[i] = u_first[j], v_first[j]
    return ou, ov, ow, oval, ouf, ovf


@numba.njit(cache=True, parallel=True)
def prepare(uvw: np.ndarray, vis: np.ndarray, weight: np.ndarray, keep: np.ndarray,
            scale_u: float, scale_v: float, half: float, w0: float, inv_dw: float,
            nshift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                    np.ndarray, np.ndarray]:
    """Rows ``keep`` in grid units, each visibility ready to add, in one parallel pass.

    As in :func:`~cosmic_horizons_lab.science.gridding.dirty_image`: rows with
    ``w < 0`` become their Hermitian conjugates, the others are conjugated; the
    weight and the phase ``exp(2πi w nshift)`` are applied (in float64, then stored
    as complex64). ``vis`` has one column per image (a dirty image and its PSF share
    the row's phase). Returns u, v (cells), w (plane spacings from ``w0``, or 0 when
    ``inv_dw`` is 0), the values (one column per image), and the first covered cell
    along u and v.
    """
    n = len(keep)
    u_pix = np.empty(n)
    v_pix = np.empty(n)
    w_pix = np.empty(n)
    n_img = vis.shape[1]
    vals = np.empty((n, n_img), np.complex64)
    u_first = np.empty(n)
    v_first = np.empty(n)
    two_pi = 2.0 * math.pi
    for j in numba.prange(n):
        i = keep[j]
        sgn = -1.0 if uvw[i, 2] < 0 else 1.0
        u = uvw[i, 0] * sgn * scale_u
        v = uvw[i, 1] * sgn * scale_v
        w = uvw[i, 2] * sgn
        wt = float(weight[i])
        c, s = 1.0, 0.0
        if inv_dw != 0.0:
            turns = w * nshift
            t = (turns - math.floor(turns)) * two_pi
            c, s = math.cos(t), math.sin(t)
            w_pix[j] = (w - w0) * inv_dw
        else:
            w_pix[j] = 0.0
        for k in range(n_img):
            re = float(vis[i, k].real) * wt
            im = -float(vis[i, k].imag) * wt * sgn
            vals[j, k] = np.complex64(complex(re * c - im * s, re * s + im * c))
        u_pix[j] = u
        v_pix[j] = v
        u_first[j] = math.floor(u - half) + 1.0
        v_first[j] = math.floor(v - half) + 1.0
    return u_pix, v_pix, w_pix, vals, u_first, v_first


@numba.njit(cache=True)
def abs_w_range(uvw: np.ndarray, keep: np.ndarray) -> tuple[float, float]:
    """Smallest and largest ``|w|`` of rows ``keep`` (what w stacking spans)."""
    lo, hi = np.inf, -np.inf
    for j in range(len(keep)):
        w = abs(uvw[keep[j], 2])
        lo = min(lo, w)
        hi = max(hi, w)
    return lo, hi


@numba.njit(cache=True, parallel=True, fastmath=True)
def phasor(x: np.ndarray, turns: float) -> np.ndarray:
    """``exp(2πi turns x)`` (complex128; the step between w planes, per pixel)."""
    out = np.empty(x.shape, np.complex128)
    flat, res = x.reshape(-1), out.reshape(-1)
    for i in numba.prange(flat.size):
        ph = 2.0 * math.pi * turns * flat[i]
        res[i] = complex(math.cos(ph), math.sin(ph))
    return out


@numba.njit(cache=True, parallel=True, fastmath=True)
def finish(acc: np.ndarray, x: np.ndarray, turns: float, turns_u: float, turns_v: float,
           ox: int, oy: int, kx: np.ndarray, ky: np.ndarray, table: np.ndarray,
           table_step: float, dw: float, out: np.ndarray) -> None:
    """``out[y, x] = Re(acc[x, y] exp(2πi φ)) / (ky[y] kx[x] ψ̂_w(|x dw|))`` with
    ``φ = turns x + turns_u (ix - ox) + turns_v (iy - oy)``.

    ``acc`` is the Horner sum of the planes (transposed), ``x`` the pixels' ``n - 1 -
    nshift``; ``turns_u`` and ``turns_v`` undo the planes' shift to their data's
    corner; ``table`` is the w kernel's Fourier transform sampled every
    ``table_step`` (empty: no w stacking).
    """
    nx, ny = acc.shape
    last = len(table) - 1
    for ix in numba.prange(nx):
        for iy in range(ny):
            xv = x[ix, iy]
            ph = 2.0 * math.pi * (turns * xv + turns_u * (ix - ox) + turns_v * (iy - oy))
            val = acc[ix, iy].real * math.cos(ph) - acc[ix, iy].imag * math.sin(ph)
            corr = kx[ix] * ky[iy]
            if last >= 0:
                f = abs(xv * dw) / table_step
                j = min(int(f), last - 1)
                frac = f - j
                corr *= table[j] + frac * (table[j + 1] - table[j])
            out[iy, ix] = val / corr


@numba.njit(cache=True, fastmath=True, inline="always")
def _horner_column(a: np.ndarray, st: np.ndarray, col: np.ndarray, first_row: int,
                   use_step: bool) -> None:
    """One image column of Horner's rule: ``a[y] = a[y] · st[y] + col[(y + first_row) mod nv]``
    (``st`` unused without ``use_step``): the inner loop of :func:`horner_step` (all columns,
    in parallel) and :func:`horner_block` (a range, on the calling thread)."""
    ny, nv = a.shape[0], col.shape[0]
    start = first_row % nv
    split = min(ny, nv - start)  # col[start:] first, then from its start (wrapped)
    if use_step:
        for y in range(split):
            a[y] = a[y] * st[y] + col[start + y]
        for y in range(split, ny):
            a[y] = a[y] * st[y] + col[y - split]
    else:
        for y in range(split):
            a[y] += col[start + y]
        for y in range(split, ny):
            a[y] += col[y - split]


@numba.njit(cache=True, parallel=True, fastmath=True)
def horner_step(acc: np.ndarray, step: np.ndarray, columns: np.ndarray, first_row: int,
                use_step: bool) -> None:
    """``acc[x, y] = acc[x, y] · step[x, y] + columns[x, (y + first_row) mod nv]``, in one
    pass over memory (Horner's rule over the w planes)."""
    nx = acc.shape[0]
    for x in numba.prange(nx):
        _horner_column(acc[x], step[x], columns[x], first_row, use_step)


def _spread_block_by_plane(grids: np.ndarray, planes: np.ndarray, slots: np.ndarray,
                           starts: np.ndarray, s: int, w_pix: np.ndarray, vals: np.ndarray,
                           u_first: np.ndarray, v_first: np.ndarray, ku: np.ndarray,
                           kv: np.ndarray, support: int, wcoef: np.ndarray, ulo: int, vlo: int,
                           ncol: int) -> None:
    """:func:`_spread_block` with one whole plane per thread (w stacking only): measured to
    use two cores where sharing out tile rows of the same plane did not."""
    for j in numba.prange(len(planes)):
        _spread_range(grids[slots[j]], planes[j], starts[0], starts[-1], s, w_pix, vals,
                      u_first, v_first, ku, kv, support, wcoef, ulo, vlo, ncol)


# Each parallel loop costs a wake-up of the other threads, which on a loaded host can take a
# scheduler time slice (measured: 15-35 ms per call at load 5 on 2 cores); blocks too small to
# repay it run on the calling thread. Same source, compiled twice.
kernel_weights = numba.njit(cache=True, parallel=True, fastmath=True)(_kernel_weights)
kernel_weights_serial = numba.njit(cache=True, fastmath=True)(_kernel_weights)
spread_block = numba.njit(cache=True, parallel=True, fastmath=True)(_spread_block)
spread_block_serial = numba.njit(cache=True, fastmath=True)(_spread_block)
spread_block_by_plane = numba.njit(cache=True, parallel=True, fastmath=True)(
    _spread_block_by_plane)
#: Cell updates (visibilities × planes × W²) below which a block runs on one thread.
PARALLEL_MIN_WORK = 2_000_000


@numba.njit(cache=True, nogil=True, fastmath=True)
def horner_block(acc: np.ndarray, step: np.ndarray, columns: np.ndarray, x0: int, x1: int,
                 first_row: int, use_step: bool) -> None:
    """:func:`horner_step` for image columns ``x0 .. x1 - 1`` (``columns[x - x0]``), on the
    calling thread and without the GIL."""
    for x in range(x0, x1):
        _horner_column(acc[x], step[x], columns[x - x0], first_row, use_step)


@numba.njit(cache=True, parallel=True)
def image_nm1_transposed(npix_x: int, npix_y: int, cell_x: float, cell_y: float) -> np.ndarray:
    """``n - 1`` at every pixel, ``[x, y]`` (float64): ``ImageGeometry.nm1().T``, in one
    parallel pass (numpy's broadcasts took 0.1 s at 2048²)."""
    out = np.empty((npix_x, npix_y))
    ox, oy = npix_x // 2, npix_y // 2
    for ix in numba.prange(npix_x):
        l2 = ((ix - ox) * cell_x) ** 2
        for iy in range(npix_y):
            lm2 = l2 + ((iy - oy) * cell_y) ** 2
            out[ix, iy] = -lm2 / (math.sqrt(1.0 - min(lm2, 1.0)) + 1.0)
    return out


@numba.njit(cache=True, parallel=True, fastmath=True)
def phasor_into(x: np.ndarray, turns: float, out: np.ndarray) -> None:
    """:func:`phasor` into ``out`` (of any complex dtype), without a complex128 temporary."""
    flat, res = x.reshape(-1), out.reshape(-1)
    for i in numba.prange(flat.size):
        ph = 2.0 * math.pi * turns * flat[i]
        res[i] = complex(math.cos(ph), math.sin(ph))


@numba.njit(cache=True, nogil=True)
def rows_to_columns(rows: np.ndarray, r0: int, first_col: int, tall: np.ndarray,
                    clear: np.ndarray) -> None:
    """``tall[x, r0 + i] = rows[i, (x + first_col) mod nu]`` for every image column x, then
    ``clear`` zeroed: a block of u-transformed rows of a plane, still in cache, transposed
    into the compact ``(npix_x, nrow)`` input of the v transform, and the plane's rows made
    ready for the next plane."""
    nb, nu = rows.shape
    nx = tall.shape[0]
    c0 = first_col % nu
    split = min(nx, nu - c0)  # columns c0 .. nu - 1 first, then from 0 (wrapped)
    for x in range(split):
        for i in range(nb):
            tall[x, r0 + i] = rows[i, c0 + x]
    for x in range(split, nx):
        for i in range(nb):
            tall[x, r0 + i] = rows[i, x - split]
    clear[:, :] = 0


@numba.njit(cache=True, nogil=True)
def pad_columns(tall: np.ndarray, x0: int, x1: int, buf: np.ndarray) -> None:
    """``buf[x - x0] = tall[x]`` followed by zeros, for ``x0 <= x < x1``: the v transform's
    zero-padded input for one block of image columns."""
    n = tall.shape[1]
    for x in range(x0, x1):
        b = buf[x - x0]
        t = tall[x]
        for r in range(n):
            b[r] = t[r]
        b[n:] = 0
