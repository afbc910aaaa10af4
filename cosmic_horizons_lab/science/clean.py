"""Högbom CLEAN (the minor cycle) and the restoring beam.

Image-plane Högbom CLEAN (Högbom 1974): repeatedly take the brightest
residual pixel (in absolute value) inside the clean window, record
``gain × peak`` as a model component there, and subtract the PSF, shifted
there and scaled by it, from the whole residual.

The subtraction is only right where the PSF is known: a component at offset
``d`` from the image centre needs the PSF out to ``d`` plus the image's half
width. :func:`hogbom` therefore takes a PSF larger than the image (the imager
makes it twice the image's size, as WSClean and CASA do) and places components
only where the PSF covers the whole image from them (with a 2× PSF, anywhere
in the image). A component placed where the PSF is truncated leaves its far
sidelobes in the residual, where later components chase them: that is how a
PSF of the image's size made the loop diverge (28 Jy from a 1 Jy source).

The loop is the minor cycle of :mod:`.deconvolution`, which adds the major
cycles (Cotton-Schwab) and the masks. Each iteration is an argmax and one
slice update: O(iterations × pixels), in torch on a GPU and in numpy on the CPU.

The restoring beam is an elliptical Gaussian fitted to the PSF's main lobe,
so restored fluxes are in Jy/beam of the actual synthesized beam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class CleanResult:
    model: np.ndarray  # Jy/pixel components [y, x]
    residual: np.ndarray  # Jy/beam
    iterations: int
    peak_residual: float
    components: int
    major_cycles: int = 0
    threshold: float = 0.0  # Jy/beam, the level the last cycle cleaned to
    mask: np.ndarray | None = None  # where components were allowed, when a mask was used


def psf_window(image_shape: tuple[int, int], psf_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the pixels where a component's PSF covers the whole image.

    The PSF peaks at ``(Py // 2, Px // 2)``; a component at ``py`` needs PSF rows
    ``Py//2 - py`` to ``Py//2 - py + ny - 1`` inside ``[0, Py)``.
    """
    (ny, nx), (qy, qx) = image_shape, psf_shape
    cy, cx = qy // 2, qx // 2
    y0, y1 = max(0, ny - qy + cy), min(ny, cy + 1)
    x0, x1 = max(0, nx - qx + cx), min(nx, cx + 1)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"a PSF of {psf_shape} covers an image of {image_shape} from no pixel")
    return y0, y1, x0, x1


def _on_host(device: torch.device) -> bool:
    """The loop runs in numpy on the CPU: each iteration is a handful of small operations,
    where torch's per-call overhead and thread hand-offs cost 5× (far more on a loaded host)."""
    return device.type == "cpu"


def hogbom(dirty: np.ndarray, psf: np.ndarray, device: torch.device, *, gain: float = 0.1,
           niter: int = 1000, threshold: float = 0.0, mask: np.ndarray | None = None) -> CleanResult:
    """CLEAN ``dirty`` (Jy/beam, [y, x]) with ``psf`` (peak 1 at its centre, ``(Py//2, Px//2)``).

    Stops after ``niter`` components or when the peak |residual| allowed falls to
    ``threshold`` (Jy/beam). Components go only where the PSF covers the whole
    image (:func:`psf_window`: everywhere for a PSF twice the image's size) and,
    with a ``mask`` (bool, the image's shape), only where it is true.
    """
    ny, nx = dirty.shape
    qy, qx = psf.shape
    cy, cx = qy // 2, qx // 2
    y0, y1, x0, x1 = psf_window((ny, nx), (qy, qx))
    allowed = np.zeros((ny, nx), bool)
    allowed[y0:y1, x0:x1] = True
    if mask is not None:
        allowed &= np.asarray(mask, bool)
    if _on_host(device):
        res = np.array(dirty, np.float32)
        p = np.ascontiguousarray(psf, np.float32)
        weight = None if allowed.all() else allowed.astype(np.float32)
    else:
        res = torch.from_numpy(np.ascontiguousarray(dirty, np.float32)).to(device)
        p = torch.from_numpy(np.ascontiguousarray(psf, np.float32)).to(device)
        weight = torch.from_numpy(allowed.astype(np.float32)).to(device)
    comps: dict[tuple[int, int], float] = {}

    def brightest() -> tuple[int, int, float]:
        mag = abs(res) if weight is None else abs(res) * weight
        py, px = divmod(int(mag.argmax()), nx)
        return py, px, float(res[py, px])

    it = 0
    peak = 0.0
    for it in range(niter):
        py, px, val = brightest()
        peak = abs(val) if allowed[py, px] else 0.0
        if peak <= threshold:
            break
        comp = gain * val
        comps[(py, px)] = comps.get((py, px), 0.0) + comp
        # the PSF centred at (py, px), over the whole image
        res -= comp * p[cy - py:cy - py + ny, cx - px:cx - px + nx]
    else:
        it = niter
        peak = abs(brightest()[2]) if niter > 0 else 0.0
    model = np.zeros((ny, nx))
    for (py, px), flux in comps.items():
        model[py, px] = flux
    residual = res if isinstance(res, np.ndarray) else res.cpu().numpy()
    return CleanResult(model=model, residual=residual.astype(np.float64), iterations=it,
                       peak_residual=peak, components=int(np.count_nonzero(model)),
                       threshold=threshold, mask=None if mask is None else np.asarray(mask, bool))


@dataclass(frozen=True)
class Beam:
    """Elliptical Gaussian: FWHMs in pixels along its major and minor axes; ``pa`` in radians
    from +y toward -x (north through east, as BPA is defined for a RA---/DEC-- image)."""

    major: float
    minor: float
    pa: float

    def image(self, ny: int, nx: int) -> np.ndarray:
        """The beam, peak 1, centred at (ny // 2, nx // 2)."""
        y = np.arange(ny)[:, None] - ny // 2
        x = np.arange(nx)[None, :] - nx // 2
        s_maj, s_min = self.major / np.sqrt(8 * np.log(2)), self.minor / np.sqrt(8 * np.log(2))
        # coordinates along the major axis (direction pa from +y toward -x) and across it
        a = y * np.cos(self.pa) - x * np.sin(self.pa)
        b = y * np.sin(self.pa) + x * np.cos(self.pa)
        return np.exp(-0.5 * ((a / s_maj) ** 2 + (b / s_min) ** 2))

    @property
    def area_pixels(self) -> float:
        return float(np.pi * self.major * self.minor / (4 * np.log(2)))


def fit_beam(psf: np.ndarray) -> Beam:
    """Fit a Gaussian to the PSF main lobe (pixels above 35 % connected to the peak).

    A least-squares fit of a quadratic to ``log psf`` there is a Gaussian fit
    weighted toward the core, robust and closed-form.
    """
    from scipy import ndimage

    ny, nx = psf.shape
    cy, cx = ny // 2, nx // 2
    labels, _ = ndimage.label(psf > 0.35 * psf[cy, cx])
    yy, xx = np.nonzero(labels == labels[cy, cx])
    if len(yy) < 6:  # an unresolved core: fall back to a one-pixel beam
        return Beam(1.0, 1.0, 0.0)
    z = np.log(psf[yy, xx] / psf[cy, cx])
    y, x = yy - cy, xx - cx
    a = np.stack([x * x, x * y, y * y, np.ones_like(x, dtype=float)], axis=1).astype(float)
    coef, *_ = np.linalg.lstsq(a, z, rcond=None)
    cxx, cxy, cyy = coef[:3]
    # z = -1/2 [x y] Q [x y]^T with Q = -2 [[cxx, cxy/2], [cxy/2, cyy]]
    q = -2 * np.array([[cxx, cxy / 2], [cxy / 2, cyy]])
    evals, evecs = np.linalg.eigh(q)
    evals = np.clip(evals, 1e-12, None)
    sig = 1 / np.sqrt(evals)  # ascending evals -> sig[0] is the major axis
    fwhm = sig * np.sqrt(8 * np.log(2))
    vx, vy = evecs[:, 0]  # major-axis direction in (x, y)
    pa = float(np.arctan2(-vx, vy))  # from +y toward -x
    pa = (pa + np.pi / 2) % np.pi - np.pi / 2
    return Beam(major=float(fwhm[0]), minor=float(fwhm[1]), pa=pa)


def restore(model: np.ndarray, residual: np.ndarray, beam: Beam) -> np.ndarray:
    """Model convolved with the restoring beam, plus the residual (Jy/beam)."""
    ny, nx = model.shape
    kernel = np.fft.ifftshift(beam.image(ny, nx))
    conv = np.fft.irfft2(np.fft.rfft2(model) * np.fft.rfft2(kernel), s=model.shape)
    return conv + residual
