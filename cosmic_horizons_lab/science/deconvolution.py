"""Cotton-Schwab CLEAN: Högbom minor cycles inside major cycles, with an optional auto-mask.

The algorithm (Schwab 1984; as WSClean and CASA ``tclean`` run it):

1. **Minor cycle** (:func:`.clean.hogbom`): Högbom CLEAN of the residual image
   against a PSF twice the image's size, so that every component subtracts a
   whole PSF wherever in the image it lies. It runs until the peak residual
   falls to ``(1 - major_gain)`` of its value at the start of the cycle (WSClean's
   ``-mgain``), or to the stopping threshold, whichever is higher.
2. **Major cycle**: the components found are turned into model visibilities
   (a direct Fourier sum over the components at every sample's ``(u, v, w)``,
   the w term included, so exact where the image-plane PSF is only an
   approximation away from the phase centre), subtracted from the
   visibilities, and the residual visibilities are gridded again into a new
   residual image. This corrects what the minor cycle got wrong (the PSF's
   variation across a wide field, gridding error) before it can accumulate.
3. **Stopping rule**: the threshold is ``threshold_sigma × σ`` with σ the
   expected thermal image noise, from the visibilities' own noise
   (:mod:`.noise`); where that is unknown, the residual image's robust σ,
   re-measured every major cycle (WSClean's ``-auto-threshold``). CLEAN ends when
   no allowed pixel is above the threshold at the start of a cycle, or after
   ``niter`` components.
4. **Auto-mask** (WSClean's ``-auto-mask``; on by default in the imager, at 5σ): with
   ``auto_mask > threshold_sigma`` the cycles first clean down to ``auto_mask × σ``
   everywhere, σ here the larger of the thermal and the residual's robust σ, so
   that neither noise peaks nor the sidelobes of what is not yet cleaned enter;
   the pixels that then hold components become the mask, and cleaning continues
   down to the threshold only inside it, so noise peaks elsewhere collect no flux. The mask is
   widened by the PSF's half-power footprint, so a source between pixel centres can
   still be modelled by components on the pixels around it.

The model-visibility sum costs O(samples × component pixels); where that would
exceed :data:`PREDICT_LIMIT` the major cycle is skipped and the minor cycle's own
residual (the dirty image minus the model convolved with the 2× PSF) is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cosmic_horizons_lab.science.clean import CleanResult, hogbom, psf_window
from cosmic_horizons_lab.science.device import chunk_size
from cosmic_horizons_lab.science.gridding import DEFAULT_EPSILON, ImageGeometry, dirty_image

#: Largest samples × component pixels a major cycle's model prediction may cost, per device kind.
PREDICT_LIMIT = {"cpu": 4e9, "cuda": 2e11}


def model_visibilities(uvw_lambda: np.ndarray, model: np.ndarray, geom: ImageGeometry,
                       device: torch.device) -> np.ndarray:
    """Visibilities of a model image (Jy/pixel): ``Σ_k S_k exp(+2πi (u l_k + v m_k + w (n_k - 1)))``
    at each row of ``uvw_lambda`` (n, 3), the measurement equation of :mod:`.skymodel`
    (and so the exact adjoint of :func:`.gridding.dirty_image`). complex128 (n,)."""
    ys, xs = np.nonzero(model)
    out = np.zeros(len(uvw_lambda), np.complex128)
    if len(ys) == 0 or len(uvw_lambda) == 0:
        return out
    lmn = np.stack([geom.l_grid()[ys, xs], geom.m_grid()[ys, xs], geom.nm1()[ys, xs]])
    pos = torch.from_numpy(lmn).to(device)  # (3, K) float64
    flux = torch.from_numpy(model[ys, xs].astype(np.float64)).to(device)
    step = chunk_size(len(ys) * 40, device, minimum=256)
    for s in range(0, len(uvw_lambda), step):
        uvw = torch.from_numpy(np.ascontiguousarray(uvw_lambda[s:s + step], np.float64)).to(device)
        turns = uvw @ pos  # float64: phases of long baselines need it
        phase = (2 * np.pi) * torch.remainder(turns, 1.0)
        re = torch.cos(phase) @ flux
        im = torch.sin(phase) @ flux
        out[s:s + step] = (re + 1j * im).cpu().numpy()
    return out


def cotton_schwab(dirty: np.ndarray, psf: np.ndarray, device: torch.device, *,
                  uvw_lambda: np.ndarray, vis: np.ndarray, weight: np.ndarray,
                  geom: ImageGeometry, expected_noise: float, gain: float = 0.1,
                  niter: int = 1000, threshold_sigma: float = 3.0, major_gain: float = 0.8,
                  max_major_cycles: int = 20, auto_mask: float = 0.0, epsilon: float = DEFAULT_EPSILON,
                  do_w: bool = True, progress: Callable[[float], None] | None = None) -> CleanResult:
    """CLEAN ``dirty`` (Jy/beam, normalised by ``Σ weight``) by the algorithm of the module
    docstring. ``psf``: peak 1 at its centre, twice the image's size for components anywhere;
    ``uvw_lambda``, ``vis``, ``weight``: the imaged samples (the dirty image's own).
    ``expected_noise``: the thermal σ of the image (Jy/beam), 0 if unknown."""
    from cosmic_horizons_lab.science.detection import robust_sigma

    keep = weight > 0
    uvw, wgt = uvw_lambda[keep], weight[keep]
    resid_vis = np.asarray(vis[keep], np.complex128).copy()
    wsum = float(wgt.sum())
    limit = PREDICT_LIMIT.get(device.type, PREDICT_LIMIT["cpu"])
    y0, y1, x0, x1 = psf_window(dirty.shape, psf.shape)
    residual = np.asarray(dirty, np.float64)
    model = np.zeros_like(residual)
    mask: np.ndarray | None = None
    masking = auto_mask > threshold_sigma
    total = cycles = 0
    level = 0.0
    while total < niter:
        measured = robust_sigma(residual)
        if masking and mask is None:  # only what stands out of noise and sidelobes alike
            level = auto_mask * max(expected_noise, measured)
        else:
            level = threshold_sigma * (expected_noise if expected_noise > 0 else measured)
        region = residual[y0:y1, x0:x1] if mask is None else np.where(mask, residual, 0.0)[y0:y1, x0:x1]
        peak = float(np.abs(region).max()) if region.size else 0.0
        if peak <= level:
            if masking and mask is None and model.any():
                mask = _auto_mask(model, psf)
                continue
            break
        minor = hogbom(residual, psf, device, gain=gain, niter=niter - total,
                       threshold=max(level, (1.0 - major_gain) * peak), mask=mask)
        if minor.iterations == 0:
            break
        total += minor.iterations
        model += minor.model
        n_comp = int(np.count_nonzero(minor.model))
        if cycles < max_major_cycles and len(uvw) * n_comp <= limit:
            resid_vis -= model_visibilities(uvw, minor.model, geom, device)
            residual = dirty_image(uvw, resid_vis, wgt, geom, device, epsilon=epsilon,
                                   do_w=do_w) / wsum
            cycles += 1
        else:
            residual = minor.residual
        if progress is not None:
            progress(min(1.0, total / max(niter, 1)))
    region = residual[y0:y1, x0:x1] if mask is None else np.where(mask, residual, 0.0)[y0:y1, x0:x1]
    return CleanResult(model=model, residual=residual, iterations=total,
                       peak_residual=float(np.abs(region).max()) if region.size else 0.0,
                       components=int(np.count_nonzero(model)), major_cycles=cycles,
                       threshold=level, mask=mask)


def _auto_mask(model: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Pixels within the PSF's half-power footprint of a component of ``model``."""
    from scipy import ndimage

    qy, qx = psf.shape
    labels, _ = ndimage.label(psf > 0.5 * psf[qy // 2, qx // 2])
    core = labels == labels[qy // 2, qx // 2]
    ys, xs = np.nonzero(core)
    footprint = core[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return ndimage.binary_dilation(model != 0, structure=footprint)
