"""Random fields for tissue texture and clutter (any number of axes), each with unit standard deviation."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]) -> np.ndarray:
    """White Gaussian noise blurred with a Gaussian of ``sigma`` voxels, rescaled to unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def power_law_noise(rng: np.random.Generator, shape: tuple[int, ...], beta: float) -> np.ndarray:
    """Noise with power spectrum ``1 / |f|^beta`` (the mean set to 0), rescaled to unit std.

    beta ~ 3 mimics the anatomical background of mammograms ("clutter"): blob-like structures at
    every scale, some of them the size of a lesion.
    """
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij", sparse=True)
    f2 = sum(f ** 2 for f in freqs)
    f2.flat[0] = np.inf  # no DC component
    spectrum = np.fft.fftn(rng.standard_normal(shape)) * f2 ** (-beta / 4)  # amplitude = sqrt(power)
    field = np.fft.ifftn(spectrum).real
    return (field - field.mean()) / (field.std() + 1e-12)
