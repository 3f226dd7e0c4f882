"""``paired3d``: dual-tracer PET/CT-like liver volumes with graded tumours (the REACT-KD setting).

Channels CT (HU), FDG and ACE (SUV-like); labels liver = 1, tumour = 2; case classes G1/G2/G3.
Each volume is a body cylinder in air with a liver ellipsoid holding 1 or 2 separate tumours.

Designed as learning with privileged information (Vapnik's LUPI; Lopez-Paz et al. 2016, "Unifying
distillation and privileged information"): one latent, continuous **severity** ``s`` in [0, 1] per case
drives everything.

- Grade = ``s + N(0, label_noise)`` thresholded at 1/3 and 2/3: the label is noisy near the
  thresholds, so a case's grade says less than its severity does.
- PET (the privileged modality, little noise): the tumour-to-liver uptake ratios move monotonically
  with ``s``, in opposite directions as in hepatocellular carcinoma (FDG rises, acetate falls), with a
  3 % case-to-case spread. A teacher that reads them estimates ``s`` itself, so its soft output ranks
  cases *within* a grade: information beyond the hard label for distillation to pass on.
- CT (the student modality, more noise): one noisy copy of the severity, the CT cue ``s + N(0, ct_cue_sd)``,
  shows twice. The viable tumour is darker than the liver by 10 HU at cue 0 to 50 HU at cue 1 (an
  intensity contrast a network reads by pooling, so a student can learn it in a few hundred iterations),
  and it holds a hypodense necrotic core whose radius, as a fraction of the tumour's, grows with the cue
  (geometric: unchanged by intensity augmentation). nnU-Net's brightness/contrast/gamma augmentation,
  applied to 15-30 % of the training samples, perturbs the contrast's size but not its sign.

Ground truth per case in ``synth_truth.json``: ``severity``, ``ct_cue``, ``core_fraction``, the uptake
ratios and the tumours. Measured on 150 cases of 16x32x32 (5-fold cross-validated logistic regression,
macro one-vs-rest AUC; tests/test_synth.py checks the same on 90): PET uptake ratios read with the true
masks 0.97 (the label noise caps it below 1); the true CT cue 0.83 (the student's documented oracle); the
tumour-to-liver contrast read from the CT 0.81, the core share 0.80, the contrast with every case
intensity-augmented 0.75; the FDG ratio's within-grade Spearman correlation with the severity above 0.7.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from nnkd.synthetic import geometry, textures
from nnkd.synthetic.rawdataset import (DatasetSpec, SynthCase, balanced_classes, case_ids, case_rng, check_cases,
                                       check_size, lesion_truth, staged_datasets, write_dataset)

GRADES = ("G1", "G2", "G3")
CHANNELS = {"0": "CT", "1": "FDG", "2": "ACE"}
LABELS = {"background": 0, "liver": 1, "tumour": 2}
DEFAULT_SIZE = (16, 32, 32)  # z, y, x voxels: 3d_fullres patch 16x32x32
DEFAULT_CASES = 30
DEFAULT_NAME = "SynthLiverPETCT"
SPACING = (4.0, 2.0, 2.0)  # mm (z, y, x): thick slices as in clinical CT; a 64 mm cube by default
THRESHOLDS = (1 / 3, 2 / 3)  # severity -> grade


@dataclass(frozen=True)
class Paired3DParams:
    """How the latent severity ``s`` in [0, 1] shows in each channel, and the nuisance levels."""

    label_noise: float = 0.06  # sd added to s before thresholding into the grade
    fdg_ratio: tuple = (1.3, 3.0)  # tumour / liver FDG uptake at s = 0 and s = 1 (log-linear in between)
    ace_ratio: tuple = (2.6, 1.1)  # tumour / liver acetate uptake at s = 0 and s = 1
    ratio_sd: float = 0.03  # log-normal case-to-case spread of both ratios (the privileged signal is clean)
    pet_noise: float = 0.05  # relative voxel noise of the PET-like channels
    pet_blur: float = 1.6  # mm, PET resolution (Gaussian sigma)
    ct_cue_sd: float = 0.2  # sd of the CT cue around s (the student's signal is noisy)
    core_fraction: tuple = (0.15, 0.8)  # necrotic core radius / tumour radius at CT cue 0 and 1
    tumour_contrast: tuple = (-10.0, -50.0)  # HU, viable tumour minus liver at CT cue 0 and 1 (linear between)
    core_contrast: float = -45.0  # HU, necrotic core minus viable tumour
    contrast_sd: float = 3.0  # HU, case-to-case spread of both contrasts
    ct_noise: float = 15.0  # HU, white noise sd (quantum noise)
    ct_texture: float = 8.0  # HU, sd of smooth tissue texture


def severity_for_grade(rng: np.random.Generator, grade: int, label_noise: float) -> float:
    """A severity ``s ~ U(0, 1)`` conditioned on ``grade == digitize(s + N(0, label_noise), THRESHOLDS)``
    (rejection sampling): the classes stay balanced and the grades overlap near the thresholds."""
    while True:
        s = rng.random()
        if np.digitize(s + label_noise * rng.standard_normal(), THRESHOLDS) == grade:
            return float(s)


def core_fraction(ct_cue: float, params: Paired3DParams) -> float:
    """Necrotic core radius as a fraction of the tumour radius for a CT cue (``s`` plus noise)."""
    lo, hi = params.core_fraction
    return float(lo + (hi - lo) * np.clip(ct_cue, 0.0, 1.0))


def tumour_contrast(ct_cue: float, params: Paired3DParams) -> float:
    """Viable tumour minus liver in HU for a CT cue: hypo-attenuation deepens with the severity."""
    lo, hi = params.tumour_contrast
    return float(lo + (hi - lo) * np.clip(ct_cue, 0.0, 1.0))


def make_case(rng: np.random.Generator, grade: int, shape: tuple[int, int, int],
              spacing: tuple[float, float, float] = SPACING,
              params: Paired3DParams = Paired3DParams()) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """One case: ``([ct int16, fdg float32, ace float32], seg uint8, truth)``, arrays of ``shape`` (z, y, x)
    with voxel ``spacing`` in mm; anatomy scales with the field of view, tumours are spheres in mm."""
    shape, spacing = tuple(shape), np.asarray(spacing, float)
    z, y, x = shape
    severity = severity_for_grade(rng, grade, params.label_noise)
    ct_cue = severity + params.ct_cue_sd * rng.standard_normal()
    fraction = core_fraction(ct_cue, params)

    body = (geometry.normalised_distance((y, x), (y / 2, x / 2), (0.46 * y, 0.48 * x)) <= 1)[None].repeat(z, 0)
    liver_centre = np.array([z / 2, 0.5 * y, 0.45 * x]) + rng.uniform(-0.04, 0.04, 3) * shape
    liver_radii = np.array([0.40 * z, 0.36 * y, 0.38 * x]) * rng.uniform(0.93, 1.07, 3)
    liver = geometry.normalised_distance(shape, liver_centre, liver_radii) <= 1
    body |= liver

    # 1 or 2 tumours large enough to show a core (radius 17-24 % of the field of view), centres inside
    # the liver, kept 2 coarse voxels apart so each is one connected component
    candidates = 32
    radii_mm = rng.uniform(0.17, 0.24, candidates) * min(np.multiply(shape, spacing))
    radii_mm[1:] *= 0.8  # a second tumour is a smaller satellite
    radii = radii_mm[:, None] / spacing  # (K, 3) voxels
    shrink = np.clip(liver_radii - radii - 1.0, 0.5, None)
    centres = liver_centre + geometry.uniform_in_ellipsoid(rng, candidates, np.zeros(3), np.ones(3)) * shrink
    num_tumours = 1 + int(rng.random() < 0.5)
    keep = geometry.pick_separated(centres * spacing, radii_mm, gap=2.0 * spacing.max())[:num_tumours]
    tumours = geometry.ellipsoid_masks(shape, centres[keep], radii[keep]) & liver
    tumour = tumours.any(0)
    cores = geometry.ellipsoid_masks(shape, centres[keep], radii[keep] * fraction).any(0) & tumour

    seg = np.zeros(shape, np.uint8)
    seg[liver], seg[tumour] = LABELS["liver"], LABELS["tumour"]

    liver_hu = rng.normal(60.0, 8.0)
    tumour_hu = liver_hu + tumour_contrast(ct_cue, params) + params.contrast_sd * rng.standard_normal()
    core_hu = tumour_hu + params.core_contrast + params.contrast_sd * rng.standard_normal()
    ct = np.where(body, 25.0 + 20.0 * textures.smooth_noise(rng, shape, 6.0 / spacing), -1000.0)
    ct[liver] = liver_hu
    ct[tumour] = tumour_hu
    ct[cores] = core_hu
    ct = ndimage.gaussian_filter(ct, 1.0 / spacing)  # partial-volume edges
    ct += body * (params.ct_texture * textures.smooth_noise(rng, shape, 3.0 / spacing))
    ct += np.where(body, params.ct_noise, 5.0) * rng.standard_normal(shape)

    fdg_ratio = params.fdg_ratio[0] * (params.fdg_ratio[1] / params.fdg_ratio[0]) ** severity \
        * np.exp(params.ratio_sd * rng.standard_normal())
    ace_ratio = params.ace_ratio[0] * (params.ace_ratio[1] / params.ace_ratio[0]) ** severity \
        * np.exp(params.ratio_sd * rng.standard_normal())

    def pet(liver_uptake: float, ratio: float, body_uptake: float) -> np.ndarray:
        activity = np.where(body, body_uptake, 0.0)
        activity[liver] = liver_uptake
        activity[tumour] = liver_uptake * ratio
        activity = ndimage.gaussian_filter(activity, params.pet_blur / spacing)
        noisy = activity * (1 + params.pet_noise * rng.standard_normal(shape)) + 0.02 * rng.standard_normal(shape)
        return np.clip(noisy, 0, None).astype(np.float32)

    fdg = pet(rng.uniform(1.8, 2.4), fdg_ratio, 0.6)
    ace = pet(rng.uniform(1.2, 1.6), ace_ratio, 0.5)
    truth = {"lesions": lesion_truth(tumours, LABELS["tumour"], radius_mm=radii_mm[keep]),
             "severity": round(severity, 4), "ct_cue": round(float(ct_cue), 4),
             "core_fraction": round(fraction, 4), "fdg_ratio": round(float(fdg_ratio), 4),
             "ace_ratio": round(float(ace_ratio), 4)}
    return [np.round(ct).astype(np.int16), fdg, ace], seg, truth


def generate(dataset_id: int, cases: int = DEFAULT_CASES, seed: int = 0, size=DEFAULT_SIZE,
             name: str = DEFAULT_NAME, overwrite: bool = False, params: Paired3DParams = Paired3DParams()) -> list[str]:
    """Write the dataset ``Dataset<id>_<name>`` into $nnUNet_raw; returns its folder."""
    cases, shape = check_cases(cases), check_size(size, 3, 16)
    spec = DatasetSpec(dataset_id, name, CHANNELS, LABELS, list(GRADES), ".nii.gz",
                       "Synthetic dual-tracer PET/CT liver volumes; case class = tumour grade, a noisy threshold "
                       "of a latent severity (clear in FDG/ACE uptake, noisy in the CT necrotic-core size).",
                       spacing=SPACING)
    ids = case_ids("liver", cases)
    grades = balanced_classes(seed, 0, cases, len(GRADES))

    def build():
        for i, (case_id, grade) in enumerate(zip(ids, grades)):
            images, seg, truth = make_case(case_rng(seed, 0, i), int(grade), shape, SPACING, params)
            yield SynthCase(case_id, images, seg, GRADES[grade], {"seed": [seed, 0, i], **truth})

    meta = {"kind": "paired3d", "seed": seed, "size": shape, "spacing_mm": SPACING, "grade_thresholds": THRESHOLDS,
            "axes": "z, y, x (numpy array order)", "boxes": "inclusive [min, max] voxel indices", "parameters": asdict(params)}
    with staged_datasets([spec], overwrite) as (staged,):
        write_dataset(staged.folder, spec, build(), cases, meta)
    return [staged.target]
