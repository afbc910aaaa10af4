"""Visibilities to a dirty image: convolutional gridding, w-stacking and the FFT.

The dirty image is ``D(l, m) = Re Σ_j w_j V_j exp(-2πi (u_j l + v_j m + w_j (n - 1)))``,
the adjoint of the measurement equation in :mod:`.skymodel` (whose sign convention,
pyuvdata's, CASA's and WSClean's, it shares: see there). Since the image is real,
this is ``Re Σ_j w_j conj(V_j) exp(+2πi (…))``: the visibilities are conjugated once
on the way in and everything below works with the ``+`` sign. Evaluated
directly that is O(visibilities × pixels); we grid instead, as ducc0's
wgridder does (Arras et al. 2021, A&A 646, A58; Ye et al. 2022):

* each visibility is spread onto a 2× oversampled uv grid with the
  "exponential of semicircle" kernel ``φ(x) = exp(β (sqrt(1 - x²) - 1))``
  (Barnett et al. 2019), whose support ``W`` follows from the accuracy asked for;
* the w term is handled by w-stacking with the same kernel along w: each
  visibility goes to the ``W`` nearest w planes, each plane is Fourier
  transformed and multiplied by ``exp(2πi w_k (n - 1 - nshift))`` before the
  planes are summed, with ``nshift`` the middle of ``n - 1``'s range over the
  image (its phase ``exp(2πi w nshift)`` is applied to the visibilities), which
  is what lets the planes be spaced as widely as ducc0's;
* the image is divided by the kernels' Fourier transforms (computed by
  quadrature), which undoes the convolution to the accuracy asked for.

Visibilities with ``w < 0`` are replaced by their Hermitian conjugates (the
conjugation above undone for them), which leaves the real image unchanged and
halves the number of w planes.

Orientation: the image array is ``[y, x]`` with x toward decreasing right
ascension, as FITS images are displayed (``CDELT1 < 0``), and pixel
``(ny // 2, nx // 2)`` at the phase centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cosmic_horizons_lab.science.device import chunk_size, host_threads

SIGMA = 2.0  # grid oversampling
#: Choices of the w kernel, as (support beyond the uv kernel's ``W``, oversampling
#: ``σ_w`` of the plane spacing ``dw = 1 / (2 σ_w max|n - 1 - nshift|)``). Centring puts
#: the largest ``|n - 1 - nshift|`` at the phase centre, where the bright sources
#: are, so the w kernel needs more margin than the uv kernel; each choice keeps the
#: error at the uncentred ``(W, σ = 2)`` level (checked against ducc0). Wider support
#: means more gridding work per visibility, wider spacing fewer planes, each an FFT:
#: :func:`_choose_w_kernel` takes the cheapest for the data at hand, as ducc0 does.
W_KERNEL_CHOICES = ((0, 3.0), (1, 2.0), (2, 1.5))
#: Cost model of that choice, seconds on the 2-core CPU it was measured on: one
#: visibility's contribution to one grid cell of one plane, and one plane's FFT,
#: copies and sum per cell of the oversampled grid. Only their ratio matters.
COST_PER_CELL_ADD = 3e-9
COST_PER_PLANE_CELL = 4e-9
#: w extent of one chunk of visibilities, in planes (see :func:`dirty_image`).
CHUNK_W_SPAN = 0.25
TABLE_SIZE = 1 << 15  # samples of the kernel's Fourier transform for large images


@dataclass(frozen=True)
class Kernel:
    support: int
    beta: float

    @classmethod
    def for_accuracy(cls, epsilon: float) -> "Kernel":
        """Support and shape for a target relative accuracy at 2× oversampling.

        ``β = 2.3 W`` is the choice of Barnett et al. (2019) for σ = 2; the
        error falls roughly tenfold per extra unit of support.
        """
        w = int(min(16, max(4, math.ceil(-math.log10(epsilon)) + 1)))
        return cls(support=w, beta=2.3 * w)

    def values(self, offset: torch.Tensor) -> torch.Tensor:
        """Kernel at ``offset`` grid cells from the visibility (zero beyond ±W/2)."""
        x = offset * (2.0 / self.support)
        inside = x.abs() < 1
        x2 = torch.where(inside, x * x, torch.zeros_like(x))
        return torch.where(inside, torch.exp(self.beta * (torch.sqrt(1 - x2) - 1)),
                           torch.zeros_like(x))

    def fourier(self, xi: np.ndarray) -> np.ndarray:
        """Fourier transform of the kernel at ``xi`` cycles per grid cell (float64).

        ``ψ̂(ξ) = (W/2) ∫_{-1}^{1} φ(t) cos(π W ξ t) dt`` by Gauss-Legendre
        quadrature, with enough nodes to resolve both the kernel and the cosine.
        """
        xi = np.asarray(xi, float)
        if xi.size > 4 * TABLE_SIZE:
            # ψ̂ is smooth: a dense table and linear interpolation are exact to ~1e-8
            # and save a quadrature per pixel of a large image.
            top = float(np.abs(xi).max()) or 1.0
            grid = np.linspace(0.0, top, TABLE_SIZE)
            return np.interp(np.abs(xi), grid, self.fourier(grid))
        nodes, weights = np.polynomial.legendre.leggauss(max(64, 4 * self.support + 32))
        phi = np.exp(self.beta * (np.sqrt(1 - nodes**2) - 1))
        arg = np.pi * self.support * np.multiply.outer(xi, nodes)
        return (self.support / 2) * (np.cos(arg) * (weights * phi)).sum(axis=-1)


@dataclass(frozen=True)
class ImageGeometry:
    npix_x: int
    npix_y: int
    cell_x: float  # radians
    cell_y: float

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Oversampled grid, even and FFT-friendly (a product of 2, 3 and 5)."""
        return (_good_size(int(SIGMA * self.npix_y)), _good_size(int(SIGMA * self.npix_x)))

    def nm1(self) -> np.ndarray:
        """``n - 1`` at every pixel (float64, [y, x])."""
        lm2 = self.l_grid() ** 2 + self.m_grid() ** 2
        return -lm2 / (np.sqrt(1.0 - np.minimum(lm2, 1.0)) + 1.0)

    def l_grid(self) -> np.ndarray:
        jx = np.arange(self.npix_x) - self.npix_x // 2
        return np.broadcast_to(-jx * self.cell_x, (self.npix_y, self.npix_x))

    def m_grid(self) -> np.ndarray:
        jy = np.arange(self.npix_y) - self.npix_y // 2
        return np.broadcast_to((jy * self.cell_y)[:, None], (self.npix_y, self.npix_x))


def _w_kernel(support: int, sigma_w: float) -> Kernel:
    """ES kernel of ``support`` with β for oversampling ``sigma_w`` (Barnett et al. 2019:
    ``β ≈ 0.98 π W (1 - 1/(2σ))``, which is the 2.3 W of :class:`Kernel` at σ = 2)."""
    return Kernel(support=support, beta=0.98 * math.pi * (1 - 0.5 / sigma_w) * support)


def _choose_w_kernel(kernel: Kernel, n_vis: int, w_span: float, x_range: float,
                     grid_cells: int) -> tuple[Kernel, float]:
    """The w kernel and ``σ_w`` of :data:`W_KERNEL_CHOICES` with the least modelled cost.

    ``w_span`` is the range of |w| in wavelengths, ``x_range`` the largest
    ``|n - 1 - nshift|``, ``grid_cells`` the size of the oversampled grid.
    """
    def cost(choice: tuple[int, float]) -> float:
        extra, sigma_w = choice
        support = kernel.support + extra
        planes = w_span * 2 * sigma_w * x_range + support + 1
        return (n_vis * kernel.support**2 * support * COST_PER_CELL_ADD
                + planes * grid_cells * COST_PER_PLANE_CELL)

    extra, sigma_w = min(W_KERNEL_CHOICES, key=cost)
    return _w_kernel(kernel.support + extra, sigma_w), sigma_w


def _good_size(n: int) -> int:
    n += n % 2
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 2


def ifft2_unnormalised(grid: torch.Tensor) -> torch.Tensor:
    """``Σ_k G_k exp(+2πi k j / N)`` over both axes.

    Spelled with ``norm="forward"``: the default-normalised ``torch.fft.ifft2``
    of a 2048² complex64 array on the CPU has been seen to come back wrongly
    scaled (an open PyTorch bug), and 2048² is the grid of a 1024² image;
    ``tests/science/test_fft.py`` checks this spelling against numpy at every size we use.
    """
    return torch.fft.ifft2(grid, norm="forward")


def _ifft_rows_unnormalised(x: torch.Tensor, out: torch.Tensor, workers: int = 1) -> torch.Tensor:
    """``Σ_k x_k exp(+2πi k j / N)`` along the rows (last axis) of a 2-D complex64 tensor,
    into ``out`` or (on the CPU) in place in ``x``, which is then overwritten.

    On the CPU this goes through ``scipy.fft`` (pocketfft, multithreaded and in
    single precision), measured 2-3x faster than torch's CPU FFT on the batched
    row transforms of a w plane; on a GPU it is cuFFT through ``torch.fft``. Both
    are spelled with ``norm="forward"``, see :func:`ifft2_unnormalised`.
    """
    if x.device.type == "cpu":
        try:
            import scipy.fft
        except ImportError:  # pragma: no cover - scipy is a dependency of the science extra
            pass
        else:
            # in place: a fresh output of this size would cost page faults every plane
            scipy.fft.ifft(x.numpy(), axis=1, norm="forward", workers=workers, overwrite_x=True)
            return x
    return torch.fft.ifft(x, dim=1, norm="forward", out=out)


def _wrapped_segments(lo: int, count: int, n: int) -> list[tuple[int, int, int]]:
    """Cells ``lo .. lo + count - 1`` of a periodic axis of ``n`` as contiguous runs
    ``(source offset, wrapped start, length)``; more than one run when they wrap."""
    runs, src = [], 0
    while src < count:
        start = (lo + src) % n
        length = min(count - src, n - start)
        runs.append((src, start, length))
        src += length
    return runs


class _PlaneTransform:
    """Image pixels of the unnormalised inverse FFT of one w plane, held on a compact grid.

    The plane is zero except on the block of cells the data touch (``nrow ×
    ncol`` from ``(vlo, ulo)``, wrapped onto the periodic ``nv × nu`` grid).
    Instead of one full 2-D FFT of the oversampled grid followed by a roll and a
    crop, the FFT runs along u only on the rows that hold data (about half of
    them: the uv coverage fills the inner half of a 2× oversampled grid), then
    along v only for the image's columns (half of them): half the work, no roll.
    The wrapping and the crop are slice copies into buffers reused from plane to
    plane (fresh multi-megabyte buffers cost page faults on the host).
    """

    def __init__(self, nrow: int, ncol: int, vlo: int, ulo: int, nv: int, nu: int,
                 geom: "ImageGeometry", device: torch.device) -> None:
        self.rows = _wrapped_segments(vlo, nrow, nv)
        self.cols = _wrapped_segments(ulo, ncol, nu)
        # aliasing (data beyond the grid's band) sums cells, so buffers are cleared each time
        self.alias_rows, self.alias_cols = nrow > nv, ncol > nu
        oy, ox = geom.npix_y // 2, geom.npix_x // 2
        # image row i <- FFT row (i - oy) mod nv, and likewise for columns
        self.out_rows = _wrapped_segments(-oy, geom.npix_y, nv)
        self.out_cols = _wrapped_segments(-ox, geom.npix_x, nu)
        self.shape = (nrow, ncol)
        self.workers = torch.get_num_threads()  # FFT threads on the CPU (coarse-grained)
        c64 = torch.complex64
        self.wide = torch.zeros((nrow, nu), dtype=c64, device=device)
        self.wide_f = torch.empty((nrow, nu), dtype=c64, device=device)
        # the v transform runs on a transposed (x, v) buffer: along its contiguous rows,
        # a batched FFT is several times faster than along strided columns on the CPU
        self.tall = torch.zeros((geom.npix_x, nv), dtype=c64, device=device)
        self.tall_f = torch.empty((geom.npix_x, nv), dtype=c64, device=device)

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        """The (npix_x, nv) transform, transposed: image pixel (i, j) is element
        ``(j, (i - oy) mod nv)`` of it (see ``out_rows``)."""
        grid = grid.view(self.shape)
        if self.alias_cols or self.wide.device.type == "cpu":  # (the CPU FFT works in place)
            self.wide.zero_()
        for src, dst, length in self.cols:
            target = self.wide.narrow(1, dst, length)
            piece = grid.narrow(1, src, length)
            target.add_(piece) if self.alias_cols else target.copy_(piece)
        wide_f = _ifft_rows_unnormalised(self.wide, self.wide_f, self.workers)
        if self.alias_rows or self.tall.device.type == "cpu":
            self.tall.zero_()
        for src, dst, length in self.rows:
            for csrc, cdst, clen in self.out_cols:
                target = self.tall[csrc:csrc + clen, dst:dst + length]
                piece = wide_f[src:src + length, cdst:cdst + clen].T
                target.add_(piece) if self.alias_rows else target.copy_(piece)
        return _ifft_rows_unnormalised(self.tall, self.tall_f, self.workers)


def dirty_image(uvw_lambda: np.ndarray, vis: np.ndarray, weight: np.ndarray,
                geom: ImageGeometry, device: torch.device, *, epsilon: float = 1e-5,
                do_w: bool = True, progress=None) -> np.ndarray:
    """Un-normalised dirty image ``Re Σ w V exp(-2πi (u l + v m + w (n-1)))`` (float64 [y, x]).

    ``uvw_lambda``: (n, 3) in wavelengths (one row per visibility, channels
    already folded in); ``vis`` and ``weight``: (n,). Zero-weight samples are
    dropped. Work is chunked to the device's free memory.

    How the work is organised (each choice is for speed; the result is the same
    sum to the kernel's accuracy):

    * w-stacking is centred as in ducc0: ``n - 1`` is written as
      ``nshift + (n - 1 - nshift)`` with ``nshift`` the middle of its range over
      the image; ``exp(2πi w nshift)`` is applied to the visibilities exactly, so
      the planes need fewer of them (the w kernel's support and spacing are
      then chosen by :func:`_choose_w_kernel`).
    * Visibilities are taken in chunks in w order, a quarter plane wide; each
      chunk's ``V × kv ⊗ ku`` (the separable uv kernel, ``W²`` cells) and grid
      indices are computed once, then for each plane the chunk reaches they are
      scaled by the w kernel (zero for the few out of its reach) and scattered
      with ``index_add_``: no per-plane kernel evaluation or index arithmetic.
      Only the planes the current chunk can still reach are held; a plane is
      transformed as soon as no later visibility can touch it.
    * Planes live on a compact grid covering only the cells the data touch
      (wrapped onto the periodic grid at FFT time), and are transformed with
      :class:`_PlaneTransform`.
    * Planes are summed with Horner's rule in the per-plane phase step
      ``exp(2πi dw (n - 1 - nshift))``, one multiply-add per plane, instead of an
      ``exp`` per pixel and plane.
    """
    # Preparation runs in torch on the host (multithreaded gathers and sort; numpy's are
    # single-threaded and took seconds at 1e7 visibilities); the chunks then go to the device.
    wt = torch.as_tensor(np.asarray(weight))
    keep = torch.nonzero(wt != 0).squeeze(1)
    uvw = torch.as_tensor(np.asarray(uvw_lambda, np.float64)).index_select(0, keep)
    vals = torch.as_tensor(np.asarray(vis)).index_select(0, keep).to(torch.complex64)
    vals *= wt.index_select(0, keep).to(torch.float32)
    # Re V exp(-iφ) = Re conj(V) exp(+iφ): conjugate once, then grid with the + sign. For
    # w < 0 use the Hermitian conjugate (-uvw, V) instead, which leaves the real image unchanged.
    sign = 1.0 - 2.0 * (uvw[:, 2] < 0).to(torch.float64)
    torch.view_as_real(vals)[:, 1] *= -sign.to(torch.float32)
    w = uvw[:, 2] * sign
    kernel = Kernel.for_accuracy(epsilon)
    support = kernel.support
    half = support / 2
    nv, nu = geom.grid_shape
    # pixel units: u' = -u because x runs toward decreasing l (see module docstring)
    u_pix = uvw[:, 0] * sign * (-geom.cell_x * nu)
    v_pix = uvw[:, 1] * sign * (geom.cell_y * nv)
    del uvw, sign
    nm1 = geom.nm1()
    nm1_max = float(np.abs(nm1).max())
    use_w = bool(do_w and nm1_max > 0 and len(w) and float(w.max() - w.min()) * nm1_max > 1e-9)
    if use_w:
        nshift = 0.5 * (float(nm1.min()) + float(nm1.max()))
        x_range = 0.5 * (float(nm1.max()) - float(nm1.min()))
        wkernel, sigma_w = _choose_w_kernel(kernel, len(w), float(w.max() - w.min()), x_range,
                                            nv * nu)
        whalf = wkernel.support / 2
        dw = 1.0 / (2 * sigma_w * x_range)
        w0 = float(w.min()) - dw * whalf
        w_pix, order = torch.sort((w - w0) / dw)
        n_planes = int(math.ceil(float(w_pix[-1]) + whalf)) + 1
        u_pix, v_pix, w, vals = u_pix[order], v_pix[order], w[order], vals[order]
        # exp(2πi w nshift), the phase taken out of the planes; turns reduced in float64
        turns = (torch.remainder(w * nshift, 1.0) * (2 * np.pi)).to(torch.float32)
        vals *= torch.polar(torch.ones_like(turns), turns)
        del order, turns
    else:
        nshift, dw, w0, n_planes, w_pix = 0.0, 1.0, 0.0, 1, torch.zeros(len(w), dtype=torch.float64)
        wkernel, whalf = kernel, half
    u_pix, v_pix, w_pix, vals = u_pix.numpy(), v_pix.numpy(), w_pix.numpy(), vals.numpy()
    # first covered cell per visibility (float64: positions of long baselines need it)
    u_first = np.floor(u_pix - half) + 1
    v_first = np.floor(v_pix - half) + 1
    if len(w):
        ulo, vlo = int(u_first.min()), int(v_first.min())
        ncol, nrow = int(u_first.max()) - ulo + support, int(v_first.max()) - vlo + support
    else:
        ulo = vlo = 0
        ncol = nrow = 1
    transform = _PlaneTransform(nrow, ncol, vlo, ulo, nv, nu, geom, device)
    oy, ox = geom.npix_y // 2, geom.npix_x // 2
    k = torch.arange(support, device=device)
    # int32 indices halve the index traffic of the scatter where the compact grid allows
    index_dtype = torch.int32 if nrow * ncol < 2**31 else torch.int64
    cell_offsets = (k[:, None] * ncol + k[None, :]).reshape(1, -1).to(index_dtype)  # row-major W×W

    # Accumulator precision follows the accuracy asked for; the grid itself is complex64.
    acc_dtype = torch.complex128 if epsilon < 1e-5 else torch.complex64
    x_img = torch.from_numpy(np.ascontiguousarray((nm1 - nshift).T)).to(device)  # [x, y], as acc
    step_back = torch.exp(-2j * math.pi * dw * x_img).to(acc_dtype) if use_w else None
    acc = torch.zeros((geom.npix_x, geom.npix_y), dtype=acc_dtype, device=device)  # transposed
    ref_plane = None

    free: list[torch.Tensor] = []  # plane buffers to reuse

    def add_plane(p: int, grid: torch.Tensor) -> None:
        """acc ← acc · exp(-2πi (p - ref) dw x) + image of plane p (Horner's rule), in place."""
        nonlocal ref_plane
        columns = transform(grid)
        grid.zero_()
        free.append(grid)
        if ref_plane is not None and use_w:
            gap = p - ref_plane
            acc.mul_(step_back if gap == 1 else
                     torch.exp(-2j * math.pi * gap * dw * x_img).to(acc_dtype))
        for src, dst, length in transform.out_rows:
            acc.narrow(1, src, length).add_(columns.narrow(1, dst, length))
        ref_plane = p
        if progress is not None:
            progress(p + 1, n_planes)

    # kernel weights, indices and contributions per visibility: ~ 16 W² bytes with temporaries
    # The loop is many small operators: one intra-op thread (see host_threads); the
    # FFTs keep their workers.
    with host_threads(device, 1):
        step = chunk_size(support**2 * 48, device, minimum=1024)
        planes: dict[int, torch.Tensor] = {}
        # the contributions of one chunk to one plane
        scratch = torch.empty(step * support**2, dtype=torch.complex64, device=device)
        n = len(vals)
        s = 0
        while s < n:
            e = min(n, s + step)
            if use_w:  # a quarter plane in w: nearly all its visibilities reach each plane
                span_end = int(np.searchsorted(w_pix, w_pix[s] + CHUNK_W_SPAN, side="right"))
                e = max(s + 1, min(e, span_end))
            u = torch.from_numpy(u_pix[s:e]).to(device)
            v = torch.from_numpy(v_pix[s:e]).to(device)
            uf = torch.from_numpy(u_first[s:e]).to(device)
            vf = torch.from_numpy(v_first[s:e]).to(device)
            base = ((vf - vlo) * ncol + (uf - ulo)).to(index_dtype)
            val = torch.from_numpy(vals[s:e]).to(device)
            wp_t = torch.from_numpy(w_pix[s:e]).to(device)
            ku = kernel.values((uf - u).to(torch.float32)[:, None] + k)  # (n, W)
            kv = kernel.values((vf - v).to(torch.float32)[:, None] + k)
            # V kv ⊗ ku per visibility, once per chunk; each plane only scales it by its w weight
            vkk = (kv[:, :, None] * ku[:, None, :]).reshape(-1, support * support) * val[:, None]
            idx = (base[:, None] + cell_offsets).reshape(-1)
            del ku, kv, u, v, uf, vf, base
            if use_w:
                first_plane = int(math.floor(w_pix[s] - whalf)) + 1
                last_plane = int(math.ceil(w_pix[e - 1] + whalf)) - 1
            else:
                first_plane = last_plane = 0
            for p in range(max(first_plane, 0), min(last_plane, n_planes - 1) + 1):
                if use_w:
                    # w weight of every visibility of the chunk, zero for those out of reach
                    wk = wkernel.values((p - wp_t).to(torch.float32))
                    out = scratch[:(e - s) * support**2].view(e - s, support**2)
                    contrib = torch.mul(vkk, wk[:, None], out=out)
                else:
                    contrib = vkk
                grid = planes.get(p)
                if grid is None:
                    grid = planes[p] = free.pop() if free else torch.zeros(
                        nrow * ncol, dtype=torch.complex64, device=device)
                grid.index_add_(0, idx, contrib.reshape(-1))
            # planes no later (larger-w) visibility can reach are complete
            done_below = int(math.floor(w_pix[e] - whalf)) + 1 if (use_w and e < n) else n_planes
            for p in sorted(q for q in planes if q < done_below):
                add_plane(p, planes.pop(p))
            s = e
        for p in sorted(planes):
            add_plane(p, planes.pop(p))
        if progress is not None and ref_plane != n_planes - 1:  # trailing planes held no data
            progress(n_planes, n_planes)
    image = acc.to(torch.complex128)
    if use_w and ref_plane is not None:
        image = image * torch.exp(2j * math.pi * (w0 + ref_plane * dw) * x_img)
    image = image.T
    jx = (np.arange(geom.npix_x) - ox) / nu
    jy = (np.arange(geom.npix_y) - oy) / nv
    corr = np.outer(kernel.fourier(jy), kernel.fourier(jx))
    if use_w:
        corr = corr * wkernel.fourier((nm1 - nshift) * dw)
    return image.real.cpu().numpy() / corr


def direct_dirty_image(uvw_lambda: np.ndarray, vis: np.ndarray, weight: np.ndarray,
                       geom: ImageGeometry) -> np.ndarray:
    """The same image by the direct sum; O(n × pixels), for checking small problems only."""
    l, m = geom.l_grid().ravel(), geom.m_grid().ravel()
    nm1 = geom.nm1().ravel()
    out = np.zeros(l.shape)
    for s in range(0, len(vis), 256):
        u, v, w = (uvw_lambda[s:s + 256, i, None] for i in range(3))
        ph = np.exp(-2j * np.pi * (u * l + v * m + w * nm1))
        out += np.real((vis[s:s + 256] * weight[s:s + 256]) @ ph)
    return out.reshape(geom.npix_y, geom.npix_x)
