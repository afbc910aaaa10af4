"""FFT scaling at every grid size the imager uses.

``torch.fft.ifft2`` with the default normalisation has returned a wrongly
scaled result on the CPU for a 2048² complex64 input (an open PyTorch bug);
2048² is the grid of a 1024² image. The imager's spelling must agree with numpy.
"""

import numpy as np
import pytest
import torch

from cosmic_horizons_lab.science.gridding import ImageGeometry, ifft2_unnormalised


@pytest.mark.parametrize("n", [64, 128, 256, 512, 1024, 2048, 4096])
def test_unnormalised_inverse_fft_matches_numpy(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))).astype(np.complex64)
    ours = ifft2_unnormalised(torch.from_numpy(x)).numpy()
    ref = np.fft.ifft2(x.astype(np.complex128)) * (n * n)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5


@pytest.mark.parametrize("npix", [256, 512, 1024, 2048])
def test_grid_sizes_of_benchmark_images_are_covered(npix):
    nv, nu = ImageGeometry(npix, npix, 1e-5, 1e-5).grid_shape
    assert (nv, nu) == (2 * npix, 2 * npix)
