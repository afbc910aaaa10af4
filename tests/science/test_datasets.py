"""The shipped demo, the synthetic presets and the registry hooks."""

import hashlib
import time

import numpy as np
import pytest

from cosmic_horizons_lab.data import DEMO_SHA256
from cosmic_horizons_lab.science.simulate import SIM_PRESETS, materialize, preset, simulate
from cosmic_horizons_lab.science.visibilities import describe_dataset, read_visibilities


def test_demo_file_is_intact(demo_path):
    data = demo_path.read_bytes()
    assert len(data) == 4_253_760
    assert hashlib.sha256(data).hexdigest() == DEMO_SHA256["VLA.TDEM0003.1src"]


def test_describe_demo_reads_shape_from_the_data(demo_path):
    d = describe_dataset(demo_path)
    assert d["format"] == "uvfits" and d["size_bytes"] == 4_253_760
    assert d["shape"] == {"baselines": 153, "times": 15, "channels": 64, "polarizations": 4,
                          "visibilities": 1360 * 64 * 4}
    assert d["phase_centre"]["name"] == "J1008+0730"
    assert d["frequency_hz"][0] == pytest.approx(36.3045e9, rel=1e-4)


def test_describe_fits_image(tmp_path):
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros((1, 1, 40, 30), np.float32)).writeto(tmp_path / "im.fits")
    d = describe_dataset(tmp_path / "im.fits")
    assert d["format"] == "fits-image" and d["shape"]["npix_x"] == 30 and d["shape"]["npix_y"] == 40


@pytest.mark.parametrize("name", sorted(SIM_PRESETS))
def test_presets_are_deterministic_fast_and_roundtrip(name, tmp_path):
    t0 = time.perf_counter()
    path = materialize(name, tmp_path / "a.uvfits")
    assert time.perf_counter() - t0 < 10  # < 5 s alone; CI shares two cores
    materialize(name, tmp_path / "b.uvfits")
    a, b = read_visibilities(path), read_visibilities(tmp_path / "b.uvfits")
    assert np.array_equal(a.vis, b.vis) and np.array_equal(a.uvw, b.uvw)
    sim = simulate(preset(name))
    np.testing.assert_allclose(a.vis, sim.data.vis, rtol=0, atol=1e-6)
    d = describe_dataset(path)
    nb, nt, nf, npol = sim.data.shape
    assert d["shape"] == {"baselines": nb, "times": nt, "channels": nf, "polarizations": npol,
                          "visibilities": nb * nt * nf * npol}


def test_uvw_follow_earth_rotation():
    sim = simulate(preset("SIM.small"))
    uvw = sim.data.uvw  # (B, T, 3)
    # |uvw| is the baseline length whatever the hour angle: rotation only turns it
    lengths = np.linalg.norm(uvw, axis=-1)
    assert np.allclose(lengths, lengths[:, :1], rtol=1e-9)
    assert np.abs(uvw[:, 0, :2] - uvw[:, -1, :2]).max() > 10.0  # metres, over 15 minutes


def test_a_measurement_set_reads_as_the_uvfits_it_was_written_from(demo_path, tmp_path):
    """The demo observation written as a Measurement Set (pyuvdata + python-casacore) gives the
    executor the same visibilities, and an agent runs on it as on the uvfits."""
    from pyuvdata import UVData

    from cosmic_horizons_lab.science.visibilities import quiet

    ms = tmp_path / "demo.ms"
    with quiet():
        UVData.from_file(str(demo_path)).write_ms(str(ms))
    assert ms.is_dir() and (ms / "table.dat").exists()
    a, b = read_visibilities(demo_path), read_visibilities(ms)
    assert a.shape == b.shape
    np.testing.assert_allclose(b.vis, a.vis, rtol=1e-6, atol=1e-6)
    assert np.array_equal(a.flags, b.flags)
    d = describe_dataset(ms)
    assert d["format"] == "measurement_set" and d["shape"] == describe_dataset(demo_path)["shape"]
    assert d["size_bytes"] == sum(f.stat().st_size for f in ms.rglob("*") if f.is_file())

    from .conftest import run_job

    rc, rec = run_job(tmp_path / "flag", "AlphaCal", {"rfi_strategy": "low"},
                      {"id": "demo-ms", "path": str(ms), "format": "ms"})
    assert rc == 0, rec[-3:]
    result = rec[-1]["result"]
    assert result["visibilities_processed"] == 1360 * 64 * 4


@pytest.mark.parametrize("name", sorted(SIM_PRESETS))
def test_listed_preset_sizes_are_what_generation_writes(name, tmp_path):
    """GET datasets lists a preset's size before it is generated (issue 13: it listed 0)."""
    from cosmic_horizons_lab.data import SIMULATED_BYTES

    path = materialize(name, tmp_path / f"{name}.uvfits")
    assert path.stat().st_size == SIMULATED_BYTES[name]
    _assert_shipped_shape_is_pyuvdatas(name, path)


def test_the_demo_shape_the_package_ships_is_pyuvdatas(demo_path):
    _assert_shipped_shape_is_pyuvdatas("VLA.TDEM0003.1src", demo_path)


def _assert_shipped_shape_is_pyuvdatas(ds_id, path):
    """The listing serves ``BUILTIN_SHAPES`` without reading the file: it must be what pyuvdata
    reads from the file, and what our own reader says."""
    from pyuvdata import UVData

    from cosmic_horizons_lab.data import BUILTIN_SHAPES

    uv = UVData.from_file(str(path), read_data=False)
    assert BUILTIN_SHAPES[ds_id] == {"baselines": uv.Nbls, "times": uv.Ntimes, "channels": uv.Nfreqs,
                                     "polarizations": uv.Npols, "visibilities": uv.Nblts * uv.Nfreqs * uv.Npols}
    assert describe_dataset(path)["shape"] == BUILTIN_SHAPES[ds_id]
