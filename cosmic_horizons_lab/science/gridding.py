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

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import torch

from cosmic_horizons_lab.science import gridding_loops as loops
from cosmic_horizons_lab.science import gridding_torch
from cosmic_horizons_lab.science.device import host_threads
from cosmic_horizons_lab.science.plane_transform import PlaneTransform

#: The gridding accuracy ε when none is asked for: WSClean's for its w-gridder
#: (``-use-wgridder``, ``-wgridder-accuracy``), the same algorithm as ours. The relative rms
#: error it leaves in a dirty image (4-5e-5 against ducc0 at ε 1e-9, ``benchmarks/RESULTS.md``)
#: is far below the thermal noise and calibration errors of a VLA/VLASS image (dynamic range
#: 1e3-1e4), and below the error of WSClean's default w-stacking gridder, which differs from
#: its w-gridder by 6 % rms over a 512² image, mostly toward the edges. A job asks for 1e-5
#: or finer (``epsilon``) when it needs more, for about twice the gridding time (2.8 s against
#: 1.3 s for a 512² dirty image and PSF of 2.6e6 visibilities on 2 cores).
DEFAULT_EPSILON = 1e-4
SIGMA = 2.0  # oversampling of the grid that uniform and Briggs weighting count on
#: Oversampling factors ``σ`` of the uv grid to choose from. A smaller grid means
#: cheaper FFTs but a wider kernel for the same accuracy (Barnett et al. 2019:
#: ``W ≈ ln(1/ε) / (π sqrt(1 - 1/σ))``), so more gridding work per visibility:
#: few visibilities on a large image favour 1.5, many on a small one 2. (1.25 missed
#: the accuracy at ε = 1e-6 by 3× in the tests with this kernel, and 1.75, where
#: W rounds up by only 0.5, ε = 1e-4 by 2× against ducc0 at ε = 1e-9.)
UV_SIGMA_CHOICES = (1.5, 2.0)
#: Oversampling ``σ_w`` of the w planes' spacing ``dw = 1 / (2 σ_w max|n - 1 - nshift|)``
#: to choose from. Centring puts the largest ``|n - 1 - nshift|`` at the phase centre,
#: where the bright sources are, so the w kernel takes one unit of support more than
#: the accuracy formula asks (checked against ducc0 and the direct sum). Wider support
#: means more gridding work per visibility, wider spacing fewer planes, each an FFT:
#: :func:`_choose_kernels` takes the cheapest for the data at hand, as ducc0 does.
W_KERNEL_CHOICES = (3.0, 2.0, 1.5)
#: Cost model of that choice, seconds of one core on the CPU they were measured on: one
#: visibility's contribution to one grid cell of one plane, and one plane's FFT, copies
#: and sum per cell of the oversampled grid. Only their ratio matters. For the compiled
#: CPU loops (1.7 ns per cell update, 8-9 ns per plane cell at 1024²-2048²)…
COST_PER_CELL_ADD = 1.7e-9
COST_PER_PLANE_CELL = 8e-9
#: …and for torch's scatter (the GPU's path, measured on the CPU), whose updates cost more.
TORCH_COST_PER_CELL_ADD = 3e-9
TORCH_COST_PER_PLANE_CELL = 4e-9


@dataclass(frozen=True)
class Kernel:
    support: int
    beta: float

    @classmethod
    def for_accuracy(cls, epsilon: float, sigma: float = SIGMA) -> Kernel:
        """Support and shape for a target relative accuracy at oversampling ``sigma``.

        ``W = ⌈ln(1/ε) / (π sqrt(1 - 1/σ))⌉`` and ``β = 0.98 π W (1 - 1/(2σ))``
        (Barnett et al. 2019; FINUFFT's rule): at σ = 2 that is ``β ≈ 2.3 W``, with
        the error falling roughly tenfold per extra unit of support.
        """
        w = math.ceil(math.log(1 / epsilon) / (math.pi * math.sqrt(1 - 1 / sigma)))
        w = int(min(16, max(4, w)))
        return cls(support=w, beta=0.98 * math.pi * (1 - 0.5 / sigma) * w)

    def values(self, offset: torch.Tensor) -> torch.Tensor:
        """Kernel at ``offset`` grid cells from the visibility (zero beyond ±W/2)."""
        x = offset * (2.0 / self.support)
        inside = x.abs() < 1
        x2 = torch.where(inside, x * x, torch.zeros_like(x))
        return torch.where(inside, torch.exp(self.beta * (torch.sqrt(1 - x2) - 1)),
                           torch.zeros_like(x))

    def pieces(self) -> np.ndarray:
        """The kernel as ``support`` polynomials, one per cell it covers: ``c[k, a]``
        multiplies ``(2t - 1)^k`` on ``[a - W/2, a + 1 - W/2]``, ``t`` ∈ [0, 1] across it.

        Chebyshev interpolation of degree ``W + 3``; its error is that of the kernel's
        own truncation (the jump of ``e^{-β}`` at ``±W/2``), so the accuracy budget
        does not change. Cached per kernel.
        """
        return _kernel_pieces(self.support, self.beta)

    def fourier(self, xi: np.ndarray) -> np.ndarray:
        """Fourier transform of the kernel at ``xi`` cycles per grid cell (float64).

        ``ψ̂(ξ) = (W/2) ∫_{-1}^{1} φ(t) cos(π W ξ t) dt`` by Gauss-Legendre
        quadrature, with enough nodes to resolve both the kernel and the cosine.
        """
        xi = np.asarray(xi, float)
        nodes, weights = np.polynomial.legendre.leggauss(max(64, 4 * self.support + 32))
        phi = np.exp(self.beta * (np.sqrt(1 - nodes**2) - 1))
        arg = np.pi * self.support * np.multiply.outer(xi, nodes)
        return (self.support / 2) * (np.cos(arg) * (weights * phi)).sum(axis=-1)


@functools.lru_cache(maxsize=64)
def _kernel_pieces(support: int, beta: float) -> np.ndarray:
    from numpy.polynomial import chebyshev

    kernel = Kernel(support, beta)
    coef = np.zeros((support + 4, support))
    for a in range(support):
        def piece(t: np.ndarray, a: int = a) -> np.ndarray:
            return kernel.values(torch.from_numpy(t + a - support / 2)).numpy()
        series = chebyshev.Chebyshev.interpolate(piece, support + 3, domain=[0, 1])
        coef[:, a] = chebyshev.cheb2poly(series.coef)  # powers of the window's 2t - 1
    return coef


@dataclass(frozen=True)
class ImageGeometry:
    npix_x: int
    npix_y: int
    cell_x: float  # radians
    cell_y: float

    @property
    def grid_shape(self) -> tuple[int, int]:
        """The 2× oversampled grid (what weighting counts samples on)."""
        return self.oversampled(SIGMA)

    def oversampled(self, sigma: float) -> tuple[int, int]:
        """Grid ``(nv, nu)`` oversampled ``sigma`` times, even and FFT-friendly (a product
        of 2, 3 and 5)."""
        return (_good_size(math.ceil(sigma * self.npix_y)), _good_size(math.ceil(sigma * self.npix_x)))

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


def _w_kernel(epsilon: float, sigma_w: float) -> Kernel:
    """The w kernel for spacing oversampled ``sigma_w`` times: one unit of support more
    than :meth:`Kernel.for_accuracy` (see :data:`W_KERNEL_CHOICES`)."""
    base = Kernel.for_accuracy(epsilon, sigma_w)
    return Kernel(support=base.support + 1, beta=base.beta * (base.support + 1) / base.support)


def _choose_kernels(epsilon: float, geom: ImageGeometry, n_vis: int, w_span: float | None,
                    x_range: float, compiled: bool = True
                    ) -> tuple[Kernel, tuple[int, int], Kernel | None, float]:
    """The uv kernel, its grid, the w kernel and ``σ_w`` with the least modelled cost.

    ``w_span`` is the range of |w| in wavelengths (None without w stacking),
    ``x_range`` the largest ``|n - 1 - nshift|``.
    """
    per_add, per_cell = ((COST_PER_CELL_ADD, COST_PER_PLANE_CELL) if compiled else
                         (TORCH_COST_PER_CELL_ADD, TORCH_COST_PER_PLANE_CELL))
    best = None
    for sigma in UV_SIGMA_CHOICES:
        kernel = Kernel.for_accuracy(epsilon, sigma)
        nv, nu = geom.oversampled(sigma)
        for sigma_w in (W_KERNEL_CHOICES if w_span is not None else (None,)):
            if sigma_w is None:
                wkernel, planes, w_support = None, 1, 1
            else:
                wkernel = _w_kernel(epsilon, sigma_w)
                w_support = wkernel.support
                planes = w_span * 2 * sigma_w * x_range + w_support
            cost = n_vis * kernel.support**2 * w_support * per_add + planes * nv * nu * per_cell
            if best is None or cost < best[0]:
                best = (cost, kernel, (nv, nu), wkernel, sigma_w or 0.0)
    return best[1:]


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


def dirty_image(uvw_lambda: np.ndarray, vis: np.ndarray, weight: np.ndarray,
                geom: ImageGeometry, device: torch.device, *, epsilon: float = DEFAULT_EPSILON,
                do_w: bool = True, progress=None) -> np.ndarray:
    """Un-normalised dirty image ``Re Σ w V exp(-2πi (u l + v m + w (n-1)))`` (float64 [y, x]);
    :func:`dirty_images` for one set of visibilities."""
    return dirty_images(uvw_lambda, [vis], weight, geom, device, epsilon=epsilon, do_w=do_w,
                        progress=progress)[0]


def dirty_images(uvw_lambda: np.ndarray, vis_sets: Sequence[np.ndarray], weight: np.ndarray,
                 geom: ImageGeometry, device: torch.device, *, epsilon: float = DEFAULT_EPSILON,
                 do_w: bool = True, progress=None) -> list[np.ndarray]:
    """Un-normalised dirty images, one per ``vis_sets`` entry, of the same rows and weights:
    ``Re Σ w V exp(-2πi (u l + v m + w (n-1)))`` (float64 [y, x]).

    On the CPU the images share one spreading pass: one sort, one evaluation of the
    kernels per visibility and plane, each value added to its own image's grid (a dirty
    image and its PSF, whose visibilities are ones); each image still has its own FFTs.
    Torch's path grids them one after the other.

    ``uvw_lambda``: (n, 3) in wavelengths (one row per visibility, channels
    already folded in); each of ``vis_sets`` and ``weight``: (n,). Zero-weight samples are
    dropped. Work is chunked to the device's free memory.

    How the work is organised (each choice is for speed; the result is the same
    sum to the kernel's accuracy):

    * w-stacking is centred as in ducc0: ``n - 1`` is written as
      ``nshift + (n - 1 - nshift)`` with ``nshift`` the middle of its range over
      the image; ``exp(2πi w nshift)`` is applied to the visibilities exactly, so
      the planes need fewer of them (the w kernel's support and spacing are
      then chosen by :func:`_choose_kernels`, with the uv grid's oversampling).
    * On the CPU, compiled loops (:mod:`.gridding_loops`) spread by w block and uv
      tile; on a GPU, :mod:`.gridding_torch` stages and sorts the data on the device
      and spreads each chunk with one scatter into a ring of w planes. A plane is
      transformed as soon as no later visibility can touch it.
    * Planes live on a compact grid covering only the cells the data touch
      (wrapped onto the periodic grid at FFT time), and are transformed with
      :class:`.plane_transform.PlaneTransform`.
    * Planes are summed with Horner's rule in the per-plane phase step
      ``exp(2πi dw (n - 1 - nshift))``, one multiply-add per plane, instead of an
      ``exp`` per pixel and plane.
    """
    compiled = _compiled_spreading(device)
    weight = np.asarray(weight)
    if not compiled and len(vis_sets) > 1:
        return [dirty_images(uvw_lambda, [v], weight, geom, device, epsilon=epsilon, do_w=do_w,
                             progress=progress)[0] for v in vis_sets]
    n_img = len(vis_sets)
    if compiled:
        uvw_np = np.ascontiguousarray(uvw_lambda, np.float64)
        keep = np.flatnonzero(weight)
        n_vis = len(keep)
        w_lo, w_hi = loops.abs_w_range(uvw_np, keep) if n_vis else (0.0, 0.0)
    else:
        # torch's path (the GPU's): the inputs go to the device once and stay there
        staged = gridding_torch.stage(uvw_lambda, vis_sets[0], weight, device)
        n_vis = staged.n_vis
        w_lo, w_hi = staged.w_lo, staged.w_hi
    x_img = loops.image_nm1_transposed(geom.npix_x, geom.npix_y, geom.cell_x, geom.cell_y)
    nm1_lo, nm1_hi = float(x_img.min()), float(x_img.max())  # n - 1 at every pixel, [x, y]
    nm1_max = max(abs(nm1_lo), abs(nm1_hi))
    use_w = bool(do_w and nm1_max > 0 and n_vis and (w_hi - w_lo) * nm1_max > 1e-9)
    nshift = 0.5 * (nm1_lo + nm1_hi) if use_w else 0.0
    x_range = 0.5 * (nm1_hi - nm1_lo)
    kernel, (nv, nu), wkernel, sigma_w = _choose_kernels(
        epsilon, geom, n_vis, (w_hi - w_lo) if use_w else None, x_range, compiled)
    support = kernel.support
    half = support / 2
    # pixel units: u' = -u because x runs toward decreasing l (see module docstring)
    scale_u, scale_v = -geom.cell_x * nu, geom.cell_y * nv
    if use_w:
        whalf = wkernel.support / 2
        dw = 1.0 / (2 * sigma_w * x_range)
        # the lowest |w| sits just above whalf - 1 plane spacings: its W planes are 0 .. W - 1
        # (plane -1 would take only the kernel's edge, zero to its accuracy), and the highest
        # reaches plane ⌊w_pix + whalf⌋: ⌈span⌉ + W - 1 planes or one more, as ducc0's
        w0 = w_lo - dw * (whalf - 1 + 1e-6)
        n_planes = int(math.floor((w_hi - w0) / dw + whalf)) + 1
    else:
        dw, w0, n_planes = 1.0, 0.0, 1
    if compiled:
        vis_cols = (np.asarray(vis_sets[0])[:, None] if n_img == 1 else
                    np.stack([np.asarray(v) for v in vis_sets], axis=1))  # one per image
        with loops.dynamic_chunks(4096):
            u_pix, v_pix, w_pix, vals, u_first, v_first = loops.prepare(
                uvw_np, vis_cols, weight, keep, scale_u, scale_v, half, w0,
                1.0 / dw if use_w else 0.0, nshift)
    else:
        prepared = gridding_torch.prepare(staged, scale_u, scale_v, half, w0, dw, nshift,
                                          wkernel if use_w else None)
        del staged
        # (lowest, highest) first covered cell: all that is read of them below
        u_first, v_first = prepared.u_first_bounds, prepared.v_first_bounds
    if n_vis:
        ulo, vlo = int(u_first.min()), int(v_first.min())
        ncol, nrow = int(u_first.max()) - ulo + support, int(v_first.max()) - vlo + support
    else:
        ulo = vlo = 0
        ncol = nrow = 1
    transform = PlaneTransform(nrow, ncol, vlo, ulo, nv, nu, geom, device)
    oy, ox = geom.npix_y // 2, geom.npix_x // 2

    # Accumulator precision follows the accuracy asked for; the grid itself is complex64.
    acc_dtype = torch.complex128 if epsilon < 1e-5 else torch.complex64
    x_img -= nshift  # n - 1 - nshift, [x, y] as acc
    step_back = _phasor(x_img, -dw, acc_dtype, device) if use_w else None
    # transposed, [image, x, y]
    accs = torch.zeros((n_img, geom.npix_x, geom.npix_y), dtype=acc_dtype, device=device)
    ref_plane = None

    def add_plane(p: int, grids: torch.Tensor) -> None:
        """acc ← acc · exp(-2πi (p - ref) dw x) + image of plane p (Horner's rule), in
        place, for every image (``grids[k]`` or, with one image, ``grids``); the grids are
        cleared for reuse."""
        nonlocal ref_plane
        gap = p - ref_plane if (ref_plane is not None and use_w) else 0
        step = step_back if gap <= 1 else _phasor(x_img, -gap * dw, acc_dtype, device)
        planes = grids if grids.dim() > 1 else grids[None]  # torch's path: one image
        for k in range(n_img):
            acc = accs[k]
            if transform.fused:
                transform.add_into(planes[k], acc.numpy(), step.numpy() if gap else acc.numpy(),
                                   gap > 0)
                continue
            columns = transform(planes[k])
            planes[k].zero_()
            if device.type == "cpu":
                with loops.dynamic_chunks(8):
                    loops.horner_step(acc.numpy(), step.numpy() if gap else acc.numpy(),
                                      columns.numpy(), -(geom.npix_y // 2), gap > 0)
            else:
                if gap:
                    acc.mul_(step)
                for src, dst, length in transform.out_rows:
                    acc.narrow(1, src, length).add_(columns.narrow(1, dst, length))
        ref_plane = p
        if progress is not None:
            progress(p + 1, n_planes)

    if compiled:
        work = _PlaneWork(u_pix, v_pix, w_pix, vals, u_first, v_first, kernel, wkernel,
                          n_planes, nrow, ncol, vlo, ulo, transform.stride)
        # the planes' copies and sums are memory-bound: one torch thread is as fast and
        # never waits at a barrier for a thread another job holds; the FFTs keep workers
        with host_threads(device, 1):
            _spread_compiled(work, add_plane)
    else:
        gridding_torch.spread(prepared, kernel, wkernel if use_w else None, n_planes, nrow,
                              vlo, ulo, transform.stride, add_plane)
    if progress is not None and ref_plane != n_planes - 1:  # trailing planes held no data
        progress(n_planes, n_planes)
    jx = (np.arange(geom.npix_x) - ox) / nu
    jy = (np.arange(geom.npix_y) - oy) / nv
    if use_w:
        # ψ̂_w sampled finely enough for linear interpolation to err by < ε / 10
        top = float(np.abs(x_img).max()) * dw or 1.0
        samples = int(min(1 << 15, max(1024, 4 / math.sqrt(epsilon))))
        table = wkernel.fourier(np.linspace(0.0, top, samples))
        step = top / (samples - 1)
    else:
        table, step = np.zeros(0), 1.0
    turns = (w0 + ref_plane * dw) if (use_w and ref_plane is not None) else 0.0
    images = []
    kx, ky = kernel.fourier(jx), kernel.fourier(jy)
    for k in range(n_img):
        image = np.empty((geom.npix_y, geom.npix_x))
        with loops.dynamic_chunks(16):
            loops.finish(accs[k].cpu().numpy(), x_img, turns, *transform.phase_turns(), ox, oy,
                         kx, ky, table, step, dw, image)
        images.append(image)
    return images


def _phasor(x: np.ndarray, turns: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``exp(2πi turns x)`` as ``dtype`` on ``device`` (computed on the host in float64)."""
    out = torch.empty(x.shape, dtype=dtype)
    loops.phasor_into(x, turns, out.numpy())
    return out.to(device)


@dataclass
class _PlaneWork:
    """Visibilities ready to spread (grid units, w order or not) and the planes they go to.

    ``wkernel`` is None without w stacking (one plane, weight 1).
    """

    u_pix: np.ndarray
    v_pix: np.ndarray
    w_pix: np.ndarray  # in plane spacings from the first plane
    vals: np.ndarray  # complex64 (n, images), weights and phases applied
    u_first: np.ndarray  # first covered cell (float64)
    v_first: np.ndarray
    kernel: Kernel
    wkernel: Kernel | None
    n_planes: int
    nrow: int
    ncol: int
    vlo: int
    ulo: int
    stride: int  # cells per row of a plane buffer (see PlaneTransform)


def _compiled_spreading(device: torch.device) -> bool:
    """The compiled loops of :mod:`.gridding_loops` on the CPU; torch's scatter on a GPU.
    ``COSMIC_HORIZONS_SPREADING=torch`` forces the torch path on the CPU too, so that the
    CPU tests cover the code a GPU runs."""
    return device.type == "cpu" and os.environ.get("COSMIC_HORIZONS_SPREADING") != "torch"


def _spread_compiled(work: _PlaneWork, add_plane) -> None:
    """Spread every visibility onto its planes with :mod:`.gridding_loops`, handing each plane
    to ``add_plane`` in increasing order as soon as no later visibility reaches it."""
    support, n = work.kernel.support, len(work.vals)
    whalf = work.wkernel.support / 2 if work.wkernel is not None else 0.0
    tile = max(loops.TILE, support)
    ntu, ntv = -(-work.ncol // tile), -(-work.nrow // tile)
    # w blocks a plane wide: few enough that each parallel loop's start-up is repaid, and
    # one plane more held than for a quarter plane
    block = 1.0
    n_blocks = int(float(work.w_pix.max()) / block) + 1 if (n and work.wkernel is not None) else 1
    order, starts = loops.order_by_block_and_tile(
        work.w_pix, work.u_first, work.v_first, block, work.ulo, work.vlo, tile, ntu, ntv,
        n_blocks)
    u_pix, v_pix, w_pix, vals, u_first, v_first = loops.take(
        order, work.u_pix, work.v_pix, work.w_pix, work.vals, work.u_first, work.v_first)
    del order
    ring_size = int(math.ceil(block + 2 * whalf)) + 2
    ring = np.zeros((ring_size, work.vals.shape[1], work.nrow * work.stride), np.complex64)
    biggest = max(int(np.diff(starts[::ntv]).max(initial=0)), 1)  # visibilities in a block
    ku = np.empty((biggest, support), np.float32)
    kv = np.empty((biggest, support), np.float32)
    coef = work.kernel.pieces()
    wcoef = work.wkernel.pieces() if work.wkernel is not None else np.zeros((1, 0))
    wsupport = wcoef.shape[1]
    held: set[int] = set()
    for b in range(n_blocks):
        rows = starts[b * ntv:(b + 1) * ntv + 1]
        s, e = int(rows[0]), int(rows[-1])
        if e > s:
            if wsupport:
                first = max(int(math.floor(b * block - whalf)) + 1, 0)
                last = min(int(math.ceil((b + 1) * block + whalf)) - 1, work.n_planes - 1)
            else:
                first = last = 0
            planes = np.arange(first, last + 1, dtype=np.int64)
            parallel = (e - s) * len(planes) * support**2 >= loops.PARALLEL_MIN_WORK
            weights = loops.kernel_weights if parallel else loops.kernel_weights_serial
            spread = loops.spread_block if parallel else loops.spread_block_serial
            if parallel and wsupport and len(planes) >= 2 * numba.get_num_threads():
                spread = loops.spread_block_by_plane
            with loops.dynamic_chunks(1024):
                weights(u_pix, v_pix, u_first, v_first, s, e, coef, ku, kv)
            with loops.dynamic_chunks(2):
                spread(ring, planes, planes % ring_size, rows, s, w_pix, vals,
                                       u_first, v_first, ku, kv, support, wcoef,
                                       work.ulo, work.vlo, work.stride)
            held.update(int(p) for p in planes)
        # planes no later (larger-w) visibility can reach are complete
        done_below = (int(math.floor((b + 1) * block - whalf)) + 1
                      if (wsupport and b + 1 < n_blocks) else work.n_planes)
        for p in sorted(q for q in held if q < done_below):
            add_plane(p, torch.from_numpy(ring[p % ring_size]))
            held.discard(p)


def warm_up() -> None:
    """Compile and cache the CPU loops (what the first call otherwise waits for), on a tiny
    problem that takes every branch: w stacking and without, one image and a dirty image
    with its PSF (whose stacked visibilities are another array layout to numba)."""
    rng = np.random.default_rng(0)
    uvw = rng.normal(size=(256, 3)) * 500.0
    vis = rng.normal(size=256) + 1j * rng.normal(size=256)
    weight = np.ones(256)
    geom = ImageGeometry(32, 32, 1e-3, 1e-3)
    for v, w in ((vis.astype(np.complex64), weight.astype(np.float32)), (vis, weight)):
        for do_w in (True, False):
            dirty_image(uvw, v, w, geom, torch.device("cpu"), epsilon=1e-4, do_w=do_w)
        dirty_images(uvw, [v, np.ones_like(v)], w, geom, torch.device("cpu"), epsilon=1e-4)


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
