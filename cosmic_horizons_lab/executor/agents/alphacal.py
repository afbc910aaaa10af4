"""The AlphaCal agent: RFI flagging, then gain calibration, of one visibility dataset.

Outputs (in the job's ``outputs/``):

* ``calibrated.uvfits`` — the calibrated visibilities with the new flags,
  the input to ImageReconstruction;
* ``flags.npz`` — the flag cube (baseline, time, channel, polarisation) with
  the antenna pairs, times and frequencies it refers to;
* ``caltable.npz`` — gains per solution cell, antenna and feed (see
  :meth:`.calibration.CalTable.save` for its keys).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.executor.agent import Agent
from cosmic_horizons_lab.executor.context import JobContext

SKY_COMPONENT = {
    "type": "object",
    "properties": {
        "ra_deg": {"type": "number", "description": "Right ascension (J2000), degrees."},
        "dec_deg": {"type": "number", "description": "Declination (J2000), degrees."},
        "flux_jy": {"type": "number", "description": "Flux density at the lowest frequency, Jy."},
        "spectral_index": {"type": "number", "default": 0.0},
        "fwhm_arcsec": {"type": "number", "minimum": 0, "default": 0.0,
                        "description": "Gaussian FWHM; 0 for a point source."},
    },
    "required": ["ra_deg", "dec_deg", "flux_jy"],
    "additionalProperties": False,
}


class AlphaCalAgent(Agent):
    name = "AlphaCal"
    extra = "science"
    description = ("Flag RFI (SumThreshold, AOFlagger-style) and solve antenna gains (StEFCal) "
                   "against a sky model; writes calibrated visibilities, flags and a caltable.")
    params_schema = {
        "properties": {
            "rfi_strategy": {
                "type": "string",
                "enum": ["none", "low", "medium", "high_sensitivity"],
                "default": "medium",
                "description": ("RFI flagging sensitivity, judged on the residual after a sky "
                                "surface fitted per baseline: 'low' flags only unmistakable RFI, "
                                "'medium' RFI down to about 5σ per visibility, 'high_sensitivity' "
                                "also the faint wings of RFI (dilation), at the cost of more good "
                                "data; 'none' skips flagging."),
            },
            "solution_interval": {
                "type": "integer", "minimum": 0, "default": 0,
                "description": "Integrations per gain solution; 0 solves one per scan (all times).",
            },
            "channel_bin": {
                "type": "integer", "minimum": 0, "default": 1,
                "description": ("Channels per gain solution; 1 follows delays across the band, "
                                "0 solves one gain for the whole band."),
            },
            "model_flux_jy": {
                "type": "number", "exclusiveMinimum": 0, "default": 1.0,
                "description": ("Flux of the default model, a point source at the phase centre "
                                "(a calibrator); ignored when sky_model is given."),
            },
            "sky_model": {
                "type": "array", "items": SKY_COMPONENT,
                "description": "Sky components to calibrate against instead of the point source.",
            },
            "ref_antenna": {
                "type": "integer",
                "description": "Antenna number whose phase is zero; default: the one with most data.",
            },
        },
    }

    def run(self, job: JobContext) -> dict[str, Any]:
        import numpy as np

        from cosmic_horizons_lab.science import device as dev
        from cosmic_horizons_lab.science.calibration import apply_gains, solve_gains
        from cosmic_horizons_lab.science.flagging import flag_visibilities
        from cosmic_horizons_lab.science.skymodel import Geometry, Source, predict, sources_from_params
        from cosmic_horizons_lab.science.visibilities import read_visibilities, write_uvfits

        params = {k: v for k, v in job.params.items()}
        source = _input_visibilities(job)
        device = dev.select_device(params.get("gpu_count"))
        dev.reset_peak_memory(device)
        started = time.perf_counter()
        job.report(progress=0.0, stage="reading", device=dev.device_description(device))
        stages = job.stages()  # the trace's spans: read, flag, calibrate, write
        stages.enter("read")
        vs = read_visibilities(source)
        n_vis = vs.n_visibilities
        metrics: dict[str, Any] = {"visibilities_total": n_vis}

        def flag_progress(done: int, total: int) -> None:
            job.report(progress=0.05 + 0.4 * done / total, stage="flagging",
                       visibilities_processed=int(n_vis * done / total),
                       vram_usage=dev.peak_memory_bytes(device), **metrics)

        strategy = params.get("rfi_strategy", "medium")
        stages.enter("flag", **{"cosmic.rfi_strategy": strategy})
        t0 = time.perf_counter()
        flags_before = vs.flags.copy()
        if strategy != "none":
            flags = flag_visibilities(vs.vis, vs.flags, strategy, device, progress=flag_progress)
        else:
            flags = vs.flags.copy()
        dev.synchronize(device)
        flag_s = time.perf_counter() - t0
        present = np.broadcast_to(vs.present[:, :, None, None], flags.shape)
        metrics["flagged_fraction"] = float(flags[present].mean()) if present.any() else 0.0
        metrics["rfi_flagged_fraction"] = float((flags & ~flags_before)[present].mean()) \
            if present.any() else 0.0
        metrics["flagging_visibilities_per_s"] = n_vis / max(flag_s, 1e-9)

        stages.enter("calibrate")
        if params.get("sky_model"):
            sources = sources_from_params(params["sky_model"], vs.phase_centre)
        else:
            sources = [Source(0.0, 0.0, float(params.get("model_flux_jy", 1.0)))]
        model = predict(vs.uvw, vs.freqs, sources, geometry=Geometry.of(vs)).astype(np.complex64)

        def cal_progress(done: int, total: int) -> None:
            job.report(progress=0.45 + 0.4 * done / total, stage="calibrating",
                       visibilities_processed=n_vis, vram_usage=dev.peak_memory_bytes(device),
                       **metrics)

        t0 = time.perf_counter()
        cal = solve_gains(vs, flags, model, device,
                          solution_interval=int(params.get("solution_interval", 0)),
                          channel_bin=int(params.get("channel_bin", 1)),
                          ref_antenna=params.get("ref_antenna"), progress=cal_progress)
        calibrated, cal_flags, cal_weights = apply_gains(vs, flags, cal)
        dev.synchronize(device)
        cal_s = time.perf_counter() - t0
        metrics["calibration_residual"] = cal.residual
        metrics["calibration_iterations"] = cal.iterations
        metrics["calibration_visibilities_per_s"] = n_vis / max(cal_s, 1e-9)
        metrics["flagged_fraction"] = float(cal_flags[present].mean()) if present.any() else 0.0
        # agreement with the model after calibration (parallel hands, unflagged)
        hands = [k for k in (vs.pol_index(p) for p in ("RR", "LL", "XX", "YY", "I")) if k is not None]
        good = ~cal_flags[..., hands] & present[..., hands]
        ratio = calibrated[..., hands][good] / np.broadcast_to(model[..., None], good.shape)[good]
        metrics["calibrated_model_ratio_median"] = float(np.median(ratio.real)) if ratio.size else None

        stages.enter("write")
        job.report(progress=0.9, stage="writing", visibilities_processed=n_vis,
                   vram_usage=dev.peak_memory_bytes(device), **metrics)
        out = job.outputs
        vs.vis, vs.flags, vs.weights = calibrated, cal_flags, cal_weights
        write_uvfits(vs, out / "calibrated.uvfits", units="Jy",
                     history=f"AlphaCal: rfi_strategy={strategy}, StEFCal, "
                             f"model={[s.__dict__ for s in sources]}")
        np.savez_compressed(out / "flags.npz", flags=cal_flags, rfi_flags=flags,
                            ant1=vs.ant1, ant2=vs.ant2, time_jd=vs.times, freq_hz=vs.freqs,
                            polarizations=np.array(vs.pols))
        cal.save(out / "caltable.npz", vs.times, vs.freqs)
        stages.close()
        elapsed = time.perf_counter() - started
        metrics.update(visibilities_processed=n_vis, vram_usage=dev.peak_memory_bytes(device),
                       visibilities_per_s=n_vis / max(elapsed, 1e-9), elapsed_s=elapsed)
        job.report(progress=1.0, stage="done", **metrics)
        return {**metrics, "device": dev.device_description(device), "rfi_strategy": strategy,
                "outputs": ["calibrated.uvfits", "flags.npz", "caltable.npz"]}


def _input_visibilities(job: JobContext) -> Path:
    """A parent's ``calibrated.uvfits`` if this job is a later pipeline stage, else the dataset."""
    for folder in job.inputs:
        for name in ("calibrated.uvfits",):
            if (Path(folder) / name).exists():
                return Path(folder) / name
    if job.dataset is None:
        raise ValueError("AlphaCal needs a visibility dataset")
    return Path(job.dataset.path)
