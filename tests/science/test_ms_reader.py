"""The direct Measurement Set reader against pyuvdata's reading of the same MS.

``read_visibilities(path, writable=False)`` reads an MS straight from its tables
(python-casacore) instead of through pyuvdata; the cube must be what pyuvdata makes of
it, sample for sample: the same conjugation, polarisation order, baselines and flags.
"""

import numpy as np
import pytest

from cosmic_horizons_lab.science.visibilities import from_uvdata, read_uvdata, read_visibilities
from tests.science import external as ext


@pytest.fixture(scope="module")
def ms_path(tmp_path_factory):
    band = ext.Band("L", (1.3e9, 1.301e9, 1.302e9), cell_arcsec=8.0, npix=64)
    uv = ext.empty_observation(band, n_times=5, integration_s=60.0)
    rng = np.random.default_rng(11)
    shape = uv.data_array.shape
    uv.data_array = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    uv.flag_array = rng.random(shape) < 0.05
    uv.nsample_array = rng.uniform(0.5, 2.0, shape)
    # one baseline missing at one time: the cube must mark it absent
    drop = (uv.ant_1_array == uv.ant_1_array[0]) & (uv.ant_2_array == uv.ant_2_array[0]) & \
        (uv.time_array == uv.time_array[0])
    uv.select(blt_inds=np.nonzero(~drop)[0])
    return ext.write(uv, tmp_path_factory.mktemp("ms") / "obs.ms")


def test_direct_reader_gives_pyuvdata_cube(ms_path):
    ours = read_visibilities(ms_path, writable=False)
    ref = from_uvdata(read_uvdata(ms_path))
    assert ours.source is None and ref.source is not None
    assert ours.pols == ref.pols
    assert not ours.present.all()
    for name in ("vis", "flags", "present", "uvw", "ant1", "ant2", "freqs", "weights", "row_index"):
        assert np.array_equal(getattr(ours, name), getattr(ref, name)), name
    np.testing.assert_allclose(ours.times, ref.times, rtol=0, atol=1e-6)  # JD: < 0.1 s
    np.testing.assert_allclose(ours.phase_centre, ref.phase_centre, rtol=1e-12)
