"""Visibilities to a dirty image: convolutional gridding, w-stacking and the FFT.

The dirty image is ``D(l, m) = Re Σ_j w_j V_j exp(2πi (u_j l + v_j m + w_j (n - 1)))``,
the adjoint of the measurement equation in :mod:`.skymodel`. Evaluated
directly that is O(visibilities × pixels); we grid instead, as ducc0's
wgridder does (Arras et al. 2021, A&A 646, A58; Ye et al. 2022):

* each visibility is spread onto a 2× oversampled uv grid with the
  "exponential of semicircle" kernel ``φ(x) = exp(β (sqrt(1 - x²) - 1))``
  (Barnett et al. 2019), whose support ``W`` follows from the accuracy asked for;
* the w term is handled by w-stacking with the same kernel along w: each
  visibility goes to the ``W`` nearest w planes, each plane is Fourier
  transformed and multiplied by ``exp(2πi w_k (n - 1))`` before the planes are summed;
* the image is divided by the kernels' Fourier transforms (computed by
  quadrature), which undoes the convolution to the accuracy asked for.

Visibilities with ``w < 0`` are replaced by their Hermitian conjugates, which
leaves the real image unchanged and halves the number of w planes.

Orientation: the image array is ``[y, x]`` with x toward decreasing right
ascension, as FITS images are displayed (``CDELT1 < 0``), and pixel
``(ny // 2, nx // 2)`` at the phase centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .device import chunk_size

SIGMA = 2.0  # grid oversampling
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


def _grid_chunk(grid_flat: torch.Tensor, nv: int, nu: int, u: torch.Tensor, v: torch.Tensor,
                vis: torch.Tensor, kernel: Kernel) -> None:
    """Add one chunk of visibilities (grid-cell units, float64) to ``grid_flat`` (Nv*Nu complex).

    Positions stay float64 until the offset from the first covered cell is
    taken: that offset is small, so the kernel can be evaluated in float32
    without losing the accuracy a float32 grid keeps anyway.
    """
    half = kernel.support / 2
    k = torch.arange(kernel.support, device=u.device, dtype=torch.float32)
    u0 = torch.floor(u - half) + 1
    v0 = torch.floor(v - half) + 1
    ku = kernel.values((u0 - u).to(torch.float32)[:, None] + k)  # (n, W)
    kv = kernel.values((v0 - v).to(torch.float32)[:, None] + k)
    ik = k.long()
    iu = torch.remainder(u0.long()[:, None] + ik, nu)
    iv = torch.remainder(v0.long()[:, None] + ik, nv)
    idx = (iv[:, :, None] * nu + iu[:, None, :]).reshape(-1)
    contrib = ((kv * vis[:, None])[:, :, None] * ku[:, None, :]).reshape(-1)
    grid_flat.index_add_(0, idx, contrib)


def dirty_image(uvw_lambda: np.ndarray, vis: np.ndarray, weight: np.ndarray,
                geom: ImageGeometry, device: torch.device, *, epsilon: float = 1e-5,
                do_w: bool = True, progress=None) -> np.ndarray:
    """Un-normalised dirty image ``Re Σ w V exp(2πi (u l + v m + w (n-1)))`` (float64 [y, x]).

    ``uvw_lambda``: (n, 3) in wavelengths (one row per visibility, channels
    already folded in); ``vis`` and ``weight``: (n,). Zero-weight samples are
    dropped. Work is chunked to the device's free memory.
    """
    keep = weight != 0
    uvw = np.asarray(uvw_lambda[keep], np.float64)
    vals = (np.asarray(vis[keep]) * weight[keep]).astype(np.complex64)
    neg = uvw[:, 2] < 0
    uvw[neg] *= -1
    vals[neg] = np.conj(vals[neg])
    kernel = Kernel.for_accuracy(epsilon)
    nv, nu = geom.grid_shape
    # pixel units: u' = -u because x runs toward decreasing l (see module docstring)
    u_pix = -uvw[:, 0] * geom.cell_x * nu
    v_pix = uvw[:, 1] * geom.cell_y * nv
    nm1 = geom.nm1()
    nm1_max = float(np.abs(nm1).max())
    use_w = do_w and nm1_max > 0 and len(uvw) and float(np.ptp(uvw[:, 2])) * nm1_max > 1e-9
    if use_w:
        dw = 1.0 / (2 * SIGMA * nm1_max)
        w0 = float(uvw[:, 2].min()) - dw * (kernel.support / 2)
        w_pix = (uvw[:, 2] - w0) / dw
        n_planes = int(math.ceil(float(w_pix.max()) + kernel.support / 2)) + 1
        order = np.argsort(w_pix, kind="stable")
        u_pix, v_pix, w_pix, vals = u_pix[order], v_pix[order], w_pix[order], vals[order]
    else:
        dw, w0, n_planes, w_pix = 1.0, 0.0, 1, np.zeros(len(uvw))
    image = torch.zeros((geom.npix_y, geom.npix_x), dtype=torch.complex128, device=device)
    nm1_t = torch.from_numpy(nm1).to(device)
    half = kernel.support / 2
    per_vis = kernel.support**2 * 48
    step = chunk_size(per_vis, device, minimum=1024)
    oy, ox = geom.npix_y // 2, geom.npix_x // 2
    total_work = max(1, n_planes)
    for plane in range(n_planes):
        if use_w:
            lo = np.searchsorted(w_pix, plane - half, side="right")
            hi = np.searchsorted(w_pix, plane + half, side="left")
        else:
            lo, hi = 0, len(vals)
        if hi <= lo:
            continue
        grid = torch.zeros(nv * nu, dtype=torch.complex64, device=device)
        for s in range(lo, hi, step):
            e = min(hi, s + step)
            u = torch.from_numpy(u_pix[s:e]).to(device, torch.float64)
            v = torch.from_numpy(v_pix[s:e]).to(device, torch.float64)
            val = torch.from_numpy(vals[s:e]).to(device)
            if use_w:
                wk = kernel.values(torch.from_numpy(plane - w_pix[s:e]).to(device, torch.float32))
                val = val * wk
            _grid_chunk(grid, nv, nu, u, v, val, kernel)
        plane_img = ifft2_unnormalised(grid.view(nv, nu))
        # centre crop: pixel offsets -n/2 .. n/2-1 live at the two ends of the FFT output
        plane_img = torch.roll(plane_img, shifts=(oy, ox), dims=(0, 1))[:geom.npix_y, :geom.npix_x]
        plane_img = plane_img.to(torch.complex128)
        if use_w:
            plane_img = plane_img * torch.exp(2j * math.pi * (w0 + plane * dw) * nm1_t)
        image += plane_img
        if progress is not None:
            progress(plane + 1, total_work)
    jx = (np.arange(geom.npix_x) - ox) / nu
    jy = (np.arange(geom.npix_y) - oy) / nv
    corr = np.outer(kernel.fourier(jy), kernel.fourier(jx))
    if use_w:
        corr = corr * kernel.fourier(nm1 * dw)
    return image.real.cpu().numpy() / corr


def direct_dirty_image(uvw_lambda: np.ndarray, vis: np.ndarray, weight: np.ndarray,
                       geom: ImageGeometry) -> np.ndarray:
    """The same image by the direct sum; O(n × pixels), for checking small problems only."""
    l, m = geom.l_grid().ravel(), geom.m_grid().ravel()
    nm1 = geom.nm1().ravel()
    out = np.zeros(l.shape)
    for s in range(0, len(vis), 256):
        u, v, w = (uvw_lambda[s:s + 256, i, None] for i in range(3))
        ph = np.exp(2j * np.pi * (u * l + v * m + w * nm1))
        out += np.real((vis[s:s + 256] * weight[s:s + 256]) @ ph)
    return out.reshape(geom.npix_y, geom.npix_x)
