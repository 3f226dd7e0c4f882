"""``lesion2d``: breast-imaging-like grey images with 0 to 3 round lesions (the CoMoTo setting).

Two unpaired datasets: the student at id N (tomosynthesis-like: low lesion contrast, strong 1/f^3
anatomical clutter whose blobs mimic lesions, more noise, slight blur) and the teacher at id N+1
(mammography-like: high contrast, mild clutter). Label 1 = lesion; lesions never touch, so each
connected component is one lesion (``synth_truth.json`` lists their centres, radii and boxes). Case
classes: negative / positive (has a lesion).

Designed so that lesion-level distillation has something to transfer: the lesions are the *same*
objects in both modalities, visible in the student's at a low but learnable contrast, and 16-24 px
across at 64x64 (radius 8-12 px, scaled with the image), so every lesion spans 2-3 cells of a
stride-8 encoder stage and the 9 keypoints of its box read different feature vectors. The benchmark
trains the student on 10-20 % of its set (``student.train_fraction``), the low-data regime of the
paper. Measured on 60 cases per modality (tests/test_synth.py: lesion discs against equally sized
lesion-free discs, scored by the mean inside minus a ring around them, with the true positions and
radii): AUC about 0.99 in the teacher modality, about 0.85 in the student's (its documented oracle).

Files are 16-bit grey png (12-bit values, as mammography detectors deliver): 2D images read by
nnU-Net's natural-image reader like the RGB datasets, and lossless, so the faint student
contrast is not lost to 8-bit quantisation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from nnkd.synthetic import geometry, textures
from nnkd.synthetic.rawdataset import (DatasetSpec, SynthCase, case_ids, case_rng, check_cases, check_size,
                                       lesion_truth, staged_datasets, write_dataset)

CLASSES = ("negative", "positive")
CHANNELS = {"0": "mammo"}
LABELS = {"background": 0, "lesion": 1}
DEFAULT_SIZE = (64, 64)
DEFAULT_CASES = 60
DEFAULT_NAME = "SynthLesion"
MAX_LESIONS = 3
MAX_VALUE = 4095  # 12-bit
RADIUS_RANGE = (8.0, 12.0)  # lesion radius in pixels at 64x64 (scaled with the image): 2-3 cells of a stride-8 stage


@dataclass(frozen=True)
class LesionModality:
    name: str  # dataset name suffix
    prefix: str  # case id prefix
    lesion_contrast: float  # added inside a lesion (tissue ~0.45, intensities in [0, 1])
    clutter: float  # sd of the 1/f^beta tissue background
    noise: float  # white noise sd
    blur: float  # Gaussian sigma in pixels
    clutter_beta: float = 3.0


HIGH_CONTRAST = LesionModality("HighContrast", "hc", lesion_contrast=0.30, clutter=0.05, noise=0.015, blur=0.0)
LOW_CONTRAST = LesionModality("LowContrast", "lc", lesion_contrast=0.10, clutter=0.10, noise=0.04, blur=0.7)


def make_case(rng: np.random.Generator, num_lesions: int, shape: tuple[int, int],
              modality: LesionModality) -> tuple[np.ndarray, np.ndarray, dict]:
    """One image: ``(grey uint16 (H, W), lesion mask uint8 (H, W), truth)``; fewer lesions than asked
    only when they cannot be placed apart (the truth and the case class follow the mask)."""
    h, w = shape
    breast_radii = np.array([0.55 * h, 0.92 * w]) * rng.uniform(0.9, 1.0, 2)
    breast_dist = geometry.normalised_distance(shape, (h / 2, 0.0), breast_radii)  # chest wall at x = 0
    breast = breast_dist <= 1

    candidates = 48
    radii = rng.uniform(*RADIUS_RANGE, candidates) * min(shape) / 64
    centres = geometry.uniform_in_ellipsoid(rng, candidates, (h / 2, 0.0), breast_radii * 0.75)
    centres[:, 1] = np.abs(centres[:, 1]) + radii + 1  # the half of the ellipse inside the image, off the wall
    keep = geometry.pick_separated(centres, radii, gap=2.0)[:num_lesions]
    lesions = geometry.ellipsoid_masks(shape, centres[keep], np.repeat(radii[keep, None], 2, 1)) & breast

    yy, xx = np.mgrid[:h, :w]
    dist = np.sqrt((yy[None] - centres[keep, 0, None, None]) ** 2 + (xx[None] - centres[keep, 1, None, None]) ** 2)
    profile = np.clip(radii[keep, None, None] + 0.5 - dist, 0, 1).max(0, initial=0.0)  # antialiased discs
    tissue = 0.45 + 0.05 * (1 - breast_dist ** 2) + modality.clutter * textures.power_law_noise(
        rng, shape, modality.clutter_beta)
    image = np.where(breast, tissue + modality.lesion_contrast * profile * breast, 0.03)
    if modality.blur > 0:
        image = ndimage.gaussian_filter(image, modality.blur)
    image = image + modality.noise * rng.standard_normal(shape)
    grey = np.round(np.clip(image, 0, 1) * MAX_VALUE).astype(np.uint16)
    truth = {"lesions": lesion_truth(lesions, LABELS["lesion"], radius=radii[keep])}
    return grey, lesions.any(0).astype(np.uint8), truth


def generate(dataset_id: int, cases: int = DEFAULT_CASES, seed: int = 0, size=DEFAULT_SIZE,
             name: str = DEFAULT_NAME, overwrite: bool = False,
             student: LesionModality = LOW_CONTRAST, teacher: LesionModality = HIGH_CONTRAST) -> list[str]:
    """Write the student ``Dataset<id>_<name>_LowContrast`` and the teacher
    ``Dataset<id+1>_<name>_HighContrast`` (``cases`` each, disjoint) into $nnUNet_raw; returns both
    folders (student first). Lesion counts 0..3 come in equal shares, so about a quarter is negative."""
    cases, shape = check_cases(cases), check_size(size, 2, 32)
    roles = ((dataset_id, student, "student: low contrast, cluttered"),
             (dataset_id + 1, teacher, "teacher: high contrast"))
    specs = [DatasetSpec(i, f"{name}_{m.name}", CHANNELS, LABELS, list(CLASSES), ".png",
                         f"Synthetic lesion detection ({role}); label 1 = lesion; case class = has a lesion; "
                         f"unpaired with Dataset{dataset_id + (i == dataset_id):03d}.")
             for i, m, role in roles]

    def build(index: int, modality: LesionModality):
        counts = np.random.default_rng([seed, index]).permutation(np.arange(cases) % (MAX_LESIONS + 1))
        for i, (case_id, n) in enumerate(zip(case_ids(modality.prefix, cases), counts)):
            grey, mask, truth = make_case(case_rng(seed, index, i), int(n), shape, modality)
            label = CLASSES[int(len(truth["lesions"]) > 0)]
            yield SynthCase(case_id, [grey], mask, label, {"seed": [seed, index, i], **truth})

    with staged_datasets(specs, overwrite) as staged:
        for index, ((_, modality, _), spec, s) in enumerate(zip(roles, specs, staged)):
            meta = {"kind": "lesion2d", "role": ("student", "teacher")[index], "seed": seed, "size": shape,
                    "axes": "y, x (numpy array order)", "boxes": "inclusive [min, max] pixel indices",
                    "modality": asdict(modality)}
            write_dataset(s.folder, spec, build(index, modality), cases, meta)
    return [s.target for s in staged]
