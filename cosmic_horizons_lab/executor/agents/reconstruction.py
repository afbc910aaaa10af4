"""The ImageReconstruction agent: visibilities to a CLEANed, restored Stokes I image.

Reads AlphaCal's ``calibrated.uvfits`` from a parent stage when there is one,
else the job's dataset. Outputs FITS images with a celestial WCS:
``dirty.fits``, ``psf.fits``, ``model.fits`` (CLEAN components, Jy/pixel),
``residual.fits`` and ``restored.fits`` (Jy/beam), the input to AnomalyDetection.
Every image and the job's metrics carry the noise: ``image_rms`` (the residual's
robust σ; FITS ``IMAGERMS``) and ``expected_image_noise`` (the thermal noise expected
from the visibilities' own noise; FITS ``THERMRMS``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.executor.agent import Agent
from cosmic_horizons_lab.executor.context import JobContext


class ImageReconstructionAgent(Agent):
    name = "ImageReconstruction"
    extra = "science"
    description = ("Grid visibilities (ES kernel, w-stacking), FFT to a dirty image, Cotton-Schwab "
                   "CLEAN (Högbom minor cycles, major cycles, auto-mask) to a multiple of the "
                   "measured noise, restore; FITS images with WCS and noise.")
    params_schema = {
        "properties": {
            "npix": {"type": "integer", "minimum": 32, "maximum": 16384, "default": 512,
                     "description": "Image side in pixels (square image)."},
            "cell_arcsec": {"type": "number", "exclusiveMinimum": 0,
                            "description": "Pixel size; default: a quarter of the finest fringe."},
            "weighting": {"type": "string", "enum": ["natural", "uniform", "briggs"],
                          "default": "natural",
                          "description": "natural: best sensitivity; uniform: best resolution; "
                                         "briggs: in between, set by robust."},
            "robust": {"type": "number", "minimum": -2, "maximum": 2, "default": 0.0,
                       "description": "Briggs robustness (-2 ≈ uniform, 2 ≈ natural)."},
            "niter": {"type": "integer", "minimum": 0, "maximum": 1000000, "default": 1000,
                      "description": "Maximum CLEAN components; 0 makes only the dirty image."},
            "gain": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.1,
                     "description": "CLEAN loop gain."},
            "threshold_sigma": {"type": "number", "minimum": 0, "default": 3.0,
                                "description": "Stop CLEAN at this many σ of the thermal image noise "
                                               "(measured in the visibilities' Stokes V or time "
                                               "differences)."},
            "auto_mask_sigma": {"type": "number", "minimum": 0, "default": 5.0,
                                "description": "Auto-mask: CLEAN everywhere down to this many σ, then "
                                               "only where components were found, down to "
                                               "threshold_sigma; 0 turns it off."},
            "major_gain": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.8,
                           "description": "Fraction of the peak residual a minor cycle removes "
                                          "before a major cycle re-grids the residual visibilities."},
            "max_major_cycles": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 20,
                                 "description": "Most major cycles (model subtracted from the "
                                                "visibilities); 0 runs the minor cycle alone."},
            "epsilon": {"type": "number", "minimum": 1e-7, "maximum": 1e-2, "default": 1e-4,
                        "description": "Gridding accuracy (sets the kernel support); the "
                                       "default is WSClean's for its w-gridder "
                                       "(science.gridding.DEFAULT_EPSILON)."},
            "w_correction": {"type": "boolean", "default": True,
                             "description": "Correct the w term (w-stacking); off is faster for "
                                            "small fields."},
        },
    }

    def run(self, job: JobContext) -> dict[str, Any]:
        import numpy as np

        from cosmic_horizons_lab.science import device as dev
        from cosmic_horizons_lab.science.gridding import DEFAULT_EPSILON
        from cosmic_horizons_lab.science.imaging import make_images, write_fits
        from cosmic_horizons_lab.science.visibilities import read_visibilities

        p = job.params
        device = dev.select_device(p.get("gpu_count"))
        dev.reset_peak_memory(device)
        started = time.perf_counter()
        source = _input_visibilities(job)
        job.report(progress=0.0, stage="reading", device=dev.device_description(device))
        stages = job.stages()  # the trace's spans: read, grid, clean, write
        stages.enter("read")
        vs = read_visibilities(source, writable=False)  # imaging never writes them back
        n_vis = vs.n_visibilities

        def progress(frac: float) -> None:
            # make_images grids the dirty image and the PSF up to 0.6 of its progress, then CLEANs
            stages.enter("grid" if frac < 0.6 else "clean")
            job.report(progress=0.05 + 0.85 * frac, stage="imaging",
                       visibilities_processed=int(n_vis * min(1.0, frac / 0.8)),
                       vram_usage=dev.peak_memory_bytes(device))

        stages.enter("grid")
        result = make_images(vs, device, npix=int(p.get("npix", 512)),
                             cell_arcsec=p.get("cell_arcsec"), weighting=p.get("weighting", "natural"),
                             robust=float(p.get("robust", 0.0)), epsilon=float(p.get("epsilon", DEFAULT_EPSILON)),
                             do_w=bool(p.get("w_correction", True)), niter=int(p.get("niter", 1000)),
                             gain=float(p.get("gain", 0.1)),
                             threshold_sigma=float(p.get("threshold_sigma", 3.0)),
                             auto_mask=float(p.get("auto_mask_sigma", 5.0)),
                             major_gain=float(p.get("major_gain", 0.8)),
                             max_major_cycles=int(p.get("max_major_cycles", 20)), progress=progress)
        dev.synchronize(device)
        out = job.outputs
        files = ["dirty.fits", "psf.fits"]
        stages.enter("write")
        write_fits(out / "dirty.fits", result.dirty, result)
        write_fits(out / "psf.fits", result.psf, result)
        final = result.dirty
        if result.clean is not None and result.restored is not None:
            write_fits(out / "model.fits", result.clean.model, result, bunit="JY/PIXEL")
            write_fits(out / "residual.fits", result.clean.residual, result)
            write_fits(out / "restored.fits", result.restored, result)
            files += ["model.fits", "residual.fits", "restored.fits"]
            final = result.restored
        stages.close()
        iy, ix = np.unravel_index(int(np.argmax(final)), final.shape)
        from cosmic_horizons_lab.science.imaging import image_wcs

        ra, dec = image_wcs(result.geometry, result.phase_centre, result.ref_freq, ndim=2) \
            .pixel_to_world_values(ix, iy)
        elapsed = time.perf_counter() - started
        metrics = {
            "visibilities_processed": n_vis,
            "visibilities_gridded": result.n_visibilities,
            "vram_usage": dev.peak_memory_bytes(device),
            "visibilities_per_s": result.n_visibilities / max(elapsed, 1e-9),
            "image_rms": result.extras["image_rms_jy_beam"],
            "peak_jy_beam": float(final[iy, ix]),
            "peak_pixel": [int(ix), int(iy)],
            "peak_ra_deg": float(ra), "peak_dec_deg": float(dec),
            "cell_arcsec": float(np.degrees(result.geometry.cell_x) * 3600),
            "beam_arcsec": [float(result.beam.major * np.degrees(result.geometry.cell_x) * 3600),
                            float(result.beam.minor * np.degrees(result.geometry.cell_x) * 3600)],
            "clean_components": result.clean.components if result.clean else 0,
            "clean_iterations": result.clean.iterations if result.clean else 0,
            "major_cycles": result.clean.major_cycles if result.clean else 0,
            "clean_threshold": result.clean.threshold if result.clean else None,
            "clean_flux_jy": float(result.clean.model.sum()) if result.clean else 0.0,
            "expected_image_noise": result.extras["expected_image_noise_jy_beam"],
            "visibility_noise_jy": result.extras["thermal_noise_jy"],
            "noise_method": result.extras["noise_method"],
            "elapsed_s": elapsed,
        }
        metrics["dynamic_range"] = metrics["peak_jy_beam"] / metrics["image_rms"] \
            if metrics["image_rms"] > 0 else None
        job.report(progress=1.0, stage="done", **metrics)
        return {**metrics, "device": dev.device_description(device), "outputs": files}


def _input_visibilities(job: JobContext) -> Path:
    for folder in job.inputs:
        candidate = Path(folder) / "calibrated.uvfits"
        if candidate.exists():
            return candidate
    if job.dataset is None:
        raise ValueError("ImageReconstruction needs calibrated visibilities from a parent stage "
                         "or a visibility dataset")
    return Path(job.dataset.path)
