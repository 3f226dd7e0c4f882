"""Low-dose CT simulation from a full-dose volume: re-project, add photon noise, reconstruct.

Volumes are SimpleITK arrays ``(Z, Y, X)`` in HU; the first axis is the axial slice index
and every slice is simulated independently (parallel-beam, 2D). The output keeps the grid.

``variant="physics"`` (default, docs/methods.md)::

    mu   = mu_water * spacing * (1 + max(HU, -1000) / 1000)   attenuation per pixel (dimensionless)
    p    = Radon(mu)                                           line integrals, n_angles = slice width
    N    ~ Poisson(I0 * exp(-p))                               detected photons, I0 per ray = dose
    p'   = -log(max(N, 1) / I0)
    HU'  = 1000 * (FBP(p') / (mu_water * spacing) - 1)

HU below -1000 (scanner padding such as -1024/-3024) has no physical attenuation and is
simulated as air (-1000). Pixels are assumed square; with anisotropic in-plane spacing the
geometric mean sets the path length (only the noise level depends on it).

``variant="line_integral"``: our reading of the official REACT-KD script, which adds photon
noise to line integrals of a min-max normalised slice, without Beer-Lambert::

    u    = (HU - min) / (max - min)            per slice; a constant slice is returned as is
    p    = Radon(u) * 256 / max(Y, X)          the script's geometry: the slice spans 256 length units
    p'   = Poisson(I0 * p) / I0
    HU'  = clip(FBP(p') / (256 / max(Y, X)), 0, 1) * (max - min) + min

Both variants share the geometry of :mod:`nnkd.dose.radon` (detector and rays sized to the
slice diagonal, so the whole slice is reconstructed; the script padded to a square and relied
on its toolbox doing the same). Reference doses: :data:`DOSE_LEVELS`.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
import torch

from nnkd.dose.radon import GEOMETRIES

MU_WATER_PER_MM = 0.0192  # linear attenuation of water at ~70 keV, 1/mm
DOSE_LEVELS = (1e6, 5e4, 1e4, 1e3, 5e2)  # incident photons per ray; 1e6 ~ full dose
VARIANTS = ("physics", "line_integral")
_SCRIPT_EXTENT = 256.0  # length units the official script's slice spans
# Pixels per batch of slices (16 at 512^2): larger batches share more interpolation work;
# peak memory ~1 GB at 512^2 with 5 doses.
_SLICE_BUDGET = 1 << 22


def simulate_low_dose(volume_hu: np.ndarray, spacing_yx: Tuple[float, float], dose: float,
                      rng: np.random.Generator, variant: str = "physics", **kwargs) -> np.ndarray:
    """One simulated low-dose volume: float32, same shape as ``volume_hu`` ``(Z, Y, X)``.

    ``spacing_yx``: in-plane pixel spacing in mm; ``dose``: I0, incident photons per ray;
    ``rng``: the only source of randomness. ``kwargs`` go to :func:`simulate_low_doses`.
    """
    return simulate_low_doses(volume_hu, spacing_yx, [dose], [rng], variant, **kwargs)[0]


def simulate_low_doses(volume_hu: np.ndarray, spacing_yx: Tuple[float, float], doses: Sequence[float],
                       rngs: Sequence[np.random.Generator], variant: str = "physics", *,
                       mu_water: float = MU_WATER_PER_MM, backend: str = "torch",
                       device="cpu") -> List[np.ndarray]:
    """Several dose levels of one volume; each noiseless sinogram is computed once and reused.

    ``rngs[i]`` draws the noise of ``doses[i]`` (one generator per dose, so a dose's result
    does not depend on which other doses are requested). ``backend``: ``"torch"`` (default)
    or ``"skimage"`` (reference, slower); ``device`` applies to torch.
    Returns one float32 ``(Z, Y, X)`` array per dose.
    """
    vol = np.asarray(volume_hu)
    if vol.ndim == 2:
        return [o[0] for o in simulate_low_doses(vol[None], spacing_yx, doses, rngs, variant,
                                                 mu_water=mu_water, backend=backend, device=device)]
    if vol.ndim != 3:
        raise ValueError(f"volume must be (Z, Y, X) or (Y, X), got shape {vol.shape}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if len(doses) != len(rngs):
        raise ValueError(f"one rng per dose: got {len(doses)} doses and {len(rngs)} rngs")
    if any(not (d > 0 and math.isfinite(d)) for d in doses):
        raise ValueError(f"doses must be positive numbers of photons per ray, got {list(doses)}")
    if backend not in GEOMETRIES:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(GEOMETRIES)}")

    z, h, w = vol.shape
    geom = GEOMETRIES[backend]((h, w), n_angles=w, device=device)
    outs = [np.empty(vol.shape, dtype=np.float32) for _ in doses]
    step = max(1, _SLICE_BUDGET // (h * w))
    sim = _physics if variant == "physics" else _line_integral
    for z0 in range(0, z, step):
        block = vol[z0:z0 + step].astype(np.float64)
        for out, res in zip(outs, sim(geom, block, spacing_yx, doses, rngs, mu_water)):
            out[z0:z0 + step] = res
    return outs


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64) if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def _fbp_each(geom, sinograms: List[np.ndarray]) -> List[np.ndarray]:
    """FBP of several ``(B, A, n_det)`` sinograms in one call (they share every interpolation)."""
    rec = _numpy(geom.fbp(np.concatenate(sinograms)))
    return np.split(rec, len(sinograms))


def _physics(geom, block, spacing_yx, doses, rngs, mu_water):
    mu_px = mu_water * math.sqrt(float(spacing_yx[0]) * float(spacing_yx[1]))
    mu = mu_px * (1.0 + np.maximum(block, -1000.0) / 1000.0)
    p = _numpy(geom.project(mu))
    noisy = [(math.log(dose) - np.log(np.maximum(rng.poisson(dose * np.exp(-p)), 1))).astype(np.float32)
             for dose, rng in zip(doses, rngs)]
    return [1000.0 * (rec / mu_px - 1.0) for rec in _fbp_each(geom, noisy)]


def _line_integral(geom, block, spacing_yx, doses, rngs, mu_water):
    lo = block.min(axis=(1, 2), keepdims=True)
    span = block.max(axis=(1, 2), keepdims=True) - lo
    flat = span <= 1e-6
    u = (block - lo) / np.where(flat, 1.0, span)
    scale = _SCRIPT_EXTENT / max(block.shape[1:])
    p = np.maximum(_numpy(geom.project(u)), 0.0) * scale  # Poisson needs a non-negative mean
    noisy = [(rng.poisson(dose * p) / dose).astype(np.float32) for dose, rng in zip(doses, rngs)]
    return [np.where(flat, block, np.clip(rec / scale, 0.0, 1.0) * span + lo)
            for rec in _fbp_each(geom, noisy)]
