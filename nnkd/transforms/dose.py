"""On-line low-dose CT augmentation: image-domain noise with the texture of FBP noise.

A fast stand-in for :func:`nnkd.dose.simulate_low_dose` inside the training loop. Photon
noise reconstructed by filtered back-projection is zero-mean, its variance grows as
``1 / I0`` and its in-plane noise power spectrum rises with frequency (the ramp filter)
until the interpolation of projector and back-projector rolls it off; it is uncorrelated
across slices. The model here: ``std_HU = k / sqrt(I0)`` and

    NPS(f) ~ |f| * exp(-(f / f_c)^2)          f = in-plane radial frequency, cycles/pixel

applied to white Gaussian noise by FFT over the in-plane axes. ``k`` and ``f_c`` come from
:func:`calibrate_noise_model`, which runs the physics simulation on a water-ellipse phantom
(300 x 220 mm, 400 mm field of view). Measured ``k`` (I0 = 1e4): 10 800 at 128^2 pixels,
15 700 at 256^2, 22 100 at 512^2 (0.78 mm; the default, with f_c = 0.40); at I0 = 1e3 the
512^2 value is 24 200 (photon starvation starts behind 300 mm of water). ``k`` is per pixel of
the grid the noise is drawn on, roughly ~ 1 / (pixel size * sqrt(n_angles)), so for nnU-Net
patches resampled far from 0.8 mm, re-calibrate at the target spacing. The noise is
stationary: real noise is stronger behind dense, wide anatomy (``k`` grows roughly as
``exp(mean path / 2)`` with patient size).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform
from torch import Tensor

from nnkd.dose.simulate import DOSE_LEVELS
from nnkd.transforms.registry import register_transform

NOISE_K = 22000.0  # HU * sqrt(photons per ray), fitted at I0 = 1e4; see calibrate_noise_model
NOISE_CUTOFF = 0.40  # f_c, cycles/pixel


def fbp_like_noise(shape: Sequence[int], plane_axes: Tuple[int, int] = (-2, -1), cutoff: float = NOISE_CUTOFF,
                   generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32) -> Tensor:
    """Unit-variance Gaussian noise of ``shape`` with NPS ``|f| exp(-(f/cutoff)^2)`` over the
    two ``plane_axes`` and independent along every other axis."""
    shape = tuple(int(s) for s in shape)
    ax = tuple(a % len(shape) for a in plane_axes)
    ny, nx = shape[ax[0]], shape[ax[1]]
    f = torch.sqrt(torch.fft.fftfreq(ny, dtype=torch.float64)[:, None] ** 2
                   + torch.fft.rfftfreq(nx, dtype=torch.float64)[None] ** 2)
    amp = torch.sqrt(f * torch.exp(-(f / cutoff) ** 2))
    # Unit output variance: Parseval over the full spectrum; rfft columns other than DC (and
    # Nyquist for even nx) stand for two conjugate frequencies.
    weight = torch.full((nx // 2 + 1,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if nx % 2 == 0:
        weight[-1] = 1.0
    amp = amp / torch.sqrt((amp ** 2 * weight).sum() / (ny * nx))
    view = [1] * len(shape)
    view[ax[0]], view[ax[1]] = ny, nx // 2 + 1
    white = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    spec = torch.fft.rfftn(white, dim=ax) * amp.to(device=white.device, dtype=dtype).view(view)
    return torch.fft.irfftn(spec, s=(ny, nx), dim=ax)


@register_transform("lowdose_noise")
class LowDoseNoise(ImageOnlyTransform):
    """Per sample, with probability ``p``, add low-dose noise to the CT channel(s).

    Operates on one sample's ``image`` ``(C, *spatial)`` (2D or 3D) in nnU-Net's normalised
    units: ``hu_std`` (required; one value, or one per channel) is the normalisation std of
    the channel in HU (nnU-Net's ``CTNormalization`` divides by the dataset fingerprint's
    foreground std: pass that; 1.0 for an image still in HU), so the added noise has std
    ``k / sqrt(I0) / hu_std``. Noise is added after nnU-Net's percentile clipping, so it may
    leave the clipped range. The dose I0 is drawn uniformly from
    ``doses``, or log-uniformly from ``dose_range = (low, high)`` when that is given.
    ``plane_axes``: the in-plane (axial) spatial axes, counted in ``image`` without the
    channel axis; default the last two (nnU-Net keeps the slice axis first for typical CT).
    Each channel gets its own noise; the segmentation is untouched.
    """

    def __init__(self, hu_std: Union[float, Sequence[float]], p: float = 0.2,
                 doses: Sequence[float] = DOSE_LEVELS[1:], dose_range: Optional[Tuple[float, float]] = None,
                 channels: Sequence[int] = (0,), k: float = NOISE_K,
                 cutoff: float = NOISE_CUTOFF, plane_axes: Tuple[int, int] = (-2, -1)):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"lowdose_noise: p must be in [0, 1], got {p}")
        if dose_range is not None:
            lo, hi = (float(d) for d in dose_range)
            if not 0 < lo <= hi:
                raise ValueError(f"lowdose_noise: dose_range must be (low, high) with 0 < low <= high, got {dose_range}")
            self.dose_range = (lo, hi)
        else:
            self.dose_range = None
        self.doses = tuple(float(d) for d in doses)
        if self.dose_range is None and (not self.doses or min(self.doses) <= 0):
            raise ValueError(f"lowdose_noise: doses must be positive photon counts, got {doses}")
        self.channels = tuple(int(c) for c in channels)
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"lowdose_noise: channels must be distinct indices, got {channels}")
        stds = [float(hu_std)] * len(self.channels) if np.isscalar(hu_std) else [float(s) for s in hu_std]
        if len(stds) != len(self.channels) or min(stds, default=1.0) <= 0:
            raise ValueError(f"lowdose_noise: hu_std needs one positive value per channel {self.channels}, got {hu_std}")
        self.hu_std = tuple(stds)
        self.p, self.k, self.cutoff, self.plane_axes = float(p), float(k), float(cutoff), tuple(plane_axes)

    def sample_dose(self) -> float:
        if self.dose_range is not None:
            lo, hi = self.dose_range
            return math.exp(math.log(lo) + torch.rand(()).item() * (math.log(hi) - math.log(lo)))
        return self.doses[int(torch.randint(len(self.doses), ()).item())]

    def get_parameters(self, **data_dict) -> dict:
        return {"dose": self.sample_dose() if torch.rand(()).item() < self.p else None}

    def _apply_to_image(self, img: Tensor, **params) -> Tensor:
        dose = params["dose"]
        if dose is None:
            return img
        if max(self.channels) >= img.shape[0]:
            raise ValueError(f"lowdose_noise: channel {max(self.channels)} requested, image has {img.shape[0]}")
        plane = tuple(a % (img.ndim - 1) + 1 for a in self.plane_axes)  # skip the channel axis
        noise = fbp_like_noise((len(self.channels), *img.shape[1:]), plane, self.cutoff,
                               device=img.device, dtype=img.dtype)
        scale = torch.tensor(self.hu_std, dtype=img.dtype, device=img.device)
        scale = (self.k / math.sqrt(dose)) / scale.view(-1, *[1] * (img.ndim - 1))
        img[list(self.channels)] += noise * scale
        return img


def water_phantom(shape_yx: Tuple[int, int] = (512, 512), spacing_mm: float = 400 / 512,
                  axes_mm: Tuple[float, float] = (110.0, 150.0)) -> np.ndarray:
    """A water ellipse (semi-axes ``axes_mm`` along y, x) in air, HU, ``(Y, X)``."""
    y, x = (np.mgrid[:shape_yx[0], :shape_yx[1]] - (np.array(shape_yx)[:, None, None] - 1) / 2) * spacing_mm
    return np.where((y / axes_mm[0]) ** 2 + (x / axes_mm[1]) ** 2 <= 1, 0.0, -1000.0)


def calibrate_noise_model(shape_yx: Tuple[int, int] = (512, 512), spacing_mm: float = 400 / 512,
                          axes_mm: Tuple[float, float] = (110.0, 150.0), dose: float = 1e4,
                          n_slices: int = 4, roi_mm: float = 80.0, seed: int = 0) -> dict:
    """Fit ``k`` and ``f_c`` of :class:`LowDoseNoise` to the physics simulation.

    Simulates ``n_slices`` slices of :func:`water_phantom` at ``dose`` and at a noiseless
    dose, takes their difference in a central ``roi_mm`` square, and returns
    ``{"k": std * sqrt(dose), "cutoff": f_c, "std_hu": std}``, ``f_c`` being the grid value
    whose radial NPS shape is closest (least squares) to the measured one.
    """
    from nnkd.dose.simulate import simulate_low_doses

    vol = np.repeat(water_phantom(shape_yx, spacing_mm, axes_mm)[None], n_slices, 0)
    rng = np.random.default_rng(seed)
    noisy, clean = simulate_low_doses(vol, (spacing_mm, spacing_mm), [dose, 1e15], [rng, rng])
    r = max(4, int(round(roi_mm / spacing_mm / 2)))
    cy, cx = shape_yx[0] // 2, shape_yx[1] // 2
    noise = (noisy - clean)[:, cy - r:cy + r, cx - r:cx + r]
    noise = noise - noise.mean(axis=(1, 2), keepdims=True)
    std = float(noise.std())
    measured = _radial_nps(noise)
    candidates = np.linspace(0.2, 1.0, 33)
    errors = []
    for c in candidates:  # the model through the same crop and window as the measurement
        model = fbp_like_noise((8, *shape_yx), cutoff=float(c), generator=torch.Generator().manual_seed(seed))
        errors.append(((_radial_nps(model[:, cy - r:cy + r, cx - r:cx + r].double().numpy()) - measured) ** 2).sum())
    return {"k": std * math.sqrt(dose), "cutoff": float(candidates[int(np.argmin(errors))]), "std_hu": std}


def _radial_nps(patches: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Radial noise power spectrum of ``(N, S, S)`` patches, normalised to its maximum."""
    s = patches.shape[-1]
    win = np.hanning(s)[:, None] * np.hanning(s)[None]
    power = (np.abs(np.fft.fft2(patches * win)) ** 2).mean(0)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(s), np.fft.fftfreq(s), indexing="ij"))
    edges = np.linspace(0, 0.5, n_bins + 1)
    prof = np.array([power[(f >= a) & (f < b)].mean() for a, b in zip(edges[:-1], edges[1:])])
    return prof / prof.max()
