"""The AnomalyDetection agent: a source catalogue and an anomaly catalogue from an image.

Reads ``restored.fits`` (and ``residual.fits`` beside it) from a parent
ImageReconstruction stage, else the job's dataset if that is a FITS image.
Outputs ``sources.ecsv`` (with each source's ``anomaly_score``) and
``anomalies.ecsv`` (astropy tables: RA/Dec in degrees, fluxes in Jy).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.executor.agent import Agent
from cosmic_horizons_lab.executor.context import JobContext


class AnomalyDetectionAgent(Agent):
    name = "AnomalyDetection"
    extra = "science"
    description = ("Find sources in an image (local background and noise maps, islands above "
                   "a threshold, Gaussian fits) and list anomalies: sources new or missing "
                   "against a reference catalogue, flux changes, residual structure.")
    params_schema = {
        "properties": {
            "detect_sigma": {"type": "number", "exclusiveMinimum": 0, "default": 5.0,
                             "description": "An island needs a peak above this many σ."},
            "island_sigma": {"type": "number", "exclusiveMinimum": 0, "default": 3.0,
                             "description": "Pixels above this many σ form islands."},
            "rms_box": {"type": "integer", "minimum": 4,
                        "description": "Box (pixels) of the local background and noise maps; "
                                       "default: about 10 beam widths (PyBDSF's rms_box)."},
            "rms_step": {"type": "integer", "minimum": 1,
                         "description": "Step (pixels) between the boxes; default: a third of "
                                        "the box."},
            "reference_catalog": {"type": "string",
                                  "description": "Reference catalogue (ECSV/CSV/FITS table with "
                                                 "ra_deg, dec_deg, flux_jy), relative to the "
                                                 "server root or absolute."},
            "reference_sources": {
                "type": "array",
                "items": {"type": "object",
                          "properties": {"ra_deg": {"type": "number"}, "dec_deg": {"type": "number"},
                                         "flux_jy": {"type": "number"}},
                          "required": ["ra_deg", "dec_deg"]},
                "description": "Reference sources given inline instead of a file.",
            },
            "match_radius_arcsec": {"type": "number", "exclusiveMinimum": 0,
                                    "description": "Cross-match radius; default: the beam FWHM."},
            "flux_tolerance": {"type": "number", "minimum": 0, "default": 0.2,
                               "description": "Relative flux change that counts as an anomaly."},
            "residual_sigma": {"type": "number", "exclusiveMinimum": 0, "default": 5.0,
                               "description": "Residual-image structure above this many σ is "
                                              "an anomaly."},
        },
    }

    def run(self, job: JobContext) -> dict[str, Any]:
        import numpy as np
        from astropy.table import Table

        from cosmic_horizons_lab.science.detection import (
            anomalies,
            anomaly_scores,
            find_sources,
            read_catalogue,
            read_image,
        )
        from cosmic_horizons_lab.science.device import peak_host_memory_bytes

        p = job.params
        started = time.perf_counter()
        image_path, residual_path = _input_image(job)
        job.report(progress=0.0, stage="reading")
        stages = job.stages()  # the trace's spans: read, detect, crossmatch, write
        stages.enter("read")
        img = read_image(image_path)
        residual = read_image(residual_path) if residual_path else None
        job.report(progress=0.3, stage="finding sources", vram_usage=peak_host_memory_bytes())
        detect_sigma = float(p.get("detect_sigma", 5.0))
        stages.enter("detect")
        sources, sigma = find_sources(img, detect_sigma=detect_sigma,
                                      island_sigma=float(p.get("island_sigma", 3.0)),
                                      box=p.get("rms_box"), step=p.get("rms_step"))
        reference = None
        if p.get("reference_catalog"):
            ref_path = Path(p["reference_catalog"])
            if not ref_path.is_absolute():
                ref_path = (job.server_root or Path.cwd()) / ref_path
            reference = read_catalogue(ref_path)
        elif p.get("reference_sources"):
            rows = p["reference_sources"]
            reference = Table({"ra_deg": np.array([r["ra_deg"] for r in rows], float),
                               "dec_deg": np.array([r["dec_deg"] for r in rows], float),
                               "flux_jy": np.array([r.get("flux_jy", np.nan) for r in rows], float)})
        radius = float(p["match_radius_arcsec"]) / 3600 if p.get("match_radius_arcsec") \
            else img.beam_fwhm_deg
        job.report(progress=0.6, stage="cross-matching", sources_found=len(sources),
                   image_rms=sigma, vram_usage=peak_host_memory_bytes())
        stages.enter("crossmatch")
        anomaly_table = anomalies(sources, reference, match_radius_deg=radius,
                                  flux_tolerance=float(p.get("flux_tolerance", 0.2)),
                                  residual=residual,
                                  residual_sigma=float(p.get("residual_sigma", 5.0)),
                                  # a reference source is missing only where this image could
                                  # show it: inside it, and above the detection threshold
                                  footprint=img, min_flux_jy=detect_sigma * sigma)
        # per source, for the sky map's row: |S − S_ref| / local σ (science/detection.py)
        sources["anomaly_score"] = anomaly_scores(sources, reference, match_radius_deg=radius,
                                                  beam_area_pixels=img.beam_area_pixels)
        stages.enter("write")
        sources.write(job.outputs / "sources.ecsv", format="ascii.ecsv", overwrite=True)
        anomaly_table.write(job.outputs / "anomalies.ecsv", format="ascii.ecsv", overwrite=True)
        stages.close()
        names, counts = np.unique(np.asarray(anomaly_table["kind"], str), return_counts=True)
        kinds = {str(k): int(c) for k, c in zip(names, counts)}
        elapsed = time.perf_counter() - started
        n_pix = int(img.data.size)
        metrics = {
            "sources_found": len(sources),
            "anomalies_found": len(anomaly_table),
            "anomalies_by_kind": kinds,
            "image_rms": sigma,
            "pixels_processed": n_pix,
            "visibilities_processed": 0,
            "vram_usage": peak_host_memory_bytes(),
            "pixels_per_s": n_pix / max(elapsed, 1e-9),
            "elapsed_s": elapsed,
        }
        job.report(progress=1.0, stage="done", **metrics)
        brightest = None
        if len(sources):
            brightest = {"ra_deg": float(sources["ra_deg"][0]), "dec_deg": float(sources["dec_deg"][0]),
                         "peak_jy_beam": float(sources["peak_jy_beam"][0]),
                         "flux_jy": float(sources["flux_jy"][0])}
        return {**metrics, "image": image_path.name, "brightest_source": brightest,
                "outputs": ["sources.ecsv", "anomalies.ecsv"]}


def _input_image(job: JobContext) -> tuple[Path, Path | None]:
    for folder in job.inputs:
        folder = Path(folder)
        for name in ("restored.fits", "dirty.fits"):
            if (folder / name).exists():
                res = folder / "residual.fits"
                return folder / name, (res if res.exists() and name == "restored.fits" else None)
        fits_files = sorted(folder.glob("*.fits"))
        if fits_files:
            return fits_files[0], None
    if job.dataset is not None and Path(job.dataset.path).suffix.lower() in (".fits", ".fit"):
        return Path(job.dataset.path), None
    raise ValueError("AnomalyDetection needs a FITS image from a parent stage or as its dataset")
