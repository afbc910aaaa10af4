"""Agent classes: cheap to import, schemas that accept the portal's payloads, a synthetic pipeline."""

import json
import subprocess
import sys

import pytest
from astropy.table import Table

from cosmic_horizons_lab.executor.registry import get_agent

from .conftest import REPO, run_job

AGENTS = ["AlphaCal", "ImageReconstruction", "AnomalyDetection"]


def test_agent_modules_import_without_heavy_libraries():
    code = ("import sys; from cosmic_horizons_lab.executor.registry import agents; agents(); "
            "heavy = [m for m in ('torch', 'numpy', 'pyuvdata', 'astropy', 'scipy') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", AGENTS)
def test_schema_is_valid_json_schema_with_defaults(name):
    import jsonschema

    schema = get_agent(name).schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({}, schema)
    for prop, spec in schema["properties"].items():
        assert spec.get("description"), (name, prop)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"no_such_parameter": 1}, schema)


def test_imaging_defaults_to_the_gridders_accuracy_and_wscleans():
    """The schema (what the form and the API show) and the science agree on ε by default,
    and it is WSClean's ``-wgridder-accuracy`` default, read from the installed WSClean
    where there is one."""
    import shutil

    from cosmic_horizons_lab.science.gridding import DEFAULT_EPSILON

    assert get_agent("ImageReconstruction").schema()["properties"]["epsilon"]["default"] == DEFAULT_EPSILON
    if shutil.which("wsclean"):
        usage = subprocess.run(["wsclean"], capture_output=True, text=True).stdout
        line = usage[usage.index("-wgridder-accuracy"):].splitlines()[1]
        assert float(line.split("Default:")[1]) == DEFAULT_EPSILON, line


def test_alphacal_accepts_the_seed_payload_and_refuses_unknown_strategies():
    import jsonschema

    schema = get_agent("AlphaCal").schema()
    jsonschema.validate({"rfi_strategy": "high_sensitivity", "gpu_count": 2, "max_runtime": "04:00:00"},
                        schema)
    assert {"low", "medium", "high_sensitivity"} <= set(schema["properties"]["rfi_strategy"]["enum"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"rfi_strategy": "extreme"}, schema)


def test_synthetic_pipeline_recovers_the_sky(tmp_path):
    """SIM.sky through all three stages; the anomaly stage, given the true sky as its
    reference, must find every source and report nothing missing or new."""
    import numpy as np

    from cosmic_horizons_lab.science.simulate import SIM_PRESETS, materialize

    path = materialize("SIM.sky", tmp_path / "sim.uvfits")
    cfg = SIM_PRESETS["SIM.sky"]["config"]
    dataset = {"id": "SIM.sky", "path": str(path), "format": "uvfits"}
    ra0, dec0 = np.radians(cfg.ra_deg), np.radians(cfg.dec_deg)
    reference = []
    for s in cfg.sources:
        n = np.sqrt(1 - s.l**2 - s.m**2)
        dec = np.arcsin(s.m * np.cos(dec0) + n * np.sin(dec0))
        ra = ra0 + np.arctan2(s.l, n * np.cos(dec0) - s.m * np.sin(dec0))
        reference.append({"ra_deg": float(np.degrees(ra)), "dec_deg": float(np.degrees(dec)),
                          "flux_jy": s.flux, "fwhm_arcsec": float(np.degrees(s.fwhm) * 3600)})
    rc, rec = run_job(tmp_path / "cal", "AlphaCal", {"rfi_strategy": "low", "sky_model": reference,
                                                     "channel_bin": 0}, dataset)
    assert rc == 0
    assert rec[-1]["result"]["calibrated_model_ratio_median"] == pytest.approx(1.0, abs=0.02)
    rc, rec = run_job(tmp_path / "img", "ImageReconstruction", {"npix": 256, "niter": 2000},
                      dataset, inputs=[tmp_path / "cal" / "outputs"])
    assert rc == 0
    rc, rec = run_job(tmp_path / "det", "AnomalyDetection",
                      {"reference_sources": [{k: r[k] for k in ("ra_deg", "dec_deg", "flux_jy")}
                                             for r in reference], "flux_tolerance": 0.2}, dataset,
                      inputs=[tmp_path / "img" / "outputs"])
    assert rc == 0
    sources = Table.read(tmp_path / "det" / "outputs" / "sources.ecsv")
    found = Table.read(tmp_path / "det" / "outputs" / "anomalies.ecsv")
    assert len(sources) == len(cfg.sources)
    kinds = list(found["kind"])
    assert "missing_source" not in kinds and "new_source" not in kinds, found
    progress = [json.loads(line) for line in (tmp_path / "det" / "events.jsonl").read_text().splitlines()]
    assert any(r.get("metrics", {}).get("sources_found") == len(sources) for r in progress)
