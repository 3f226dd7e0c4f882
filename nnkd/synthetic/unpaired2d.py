"""``unpaired2d``: endoscopy-like RGB polyp images in two unpaired modalities (the PaGKD setting).

Two datasets with disjoint cases: the student at id N (white-light-like) and the teacher at id N+1
(narrow-band-like). Every image shows one polyp whose colour and surface pattern carry the class:
adenoma = browner, stripes (tubular pits); hyperplastic = paler, a lattice of round spots;
serrated = yellowish, an irregular band-pass texture at the same scale (the three patterns have the
same mean and power).

Designed as learning with privileged information across unpaired sets: the *same* class cues in
both modalities, shown clearly in narrow-band light and faintly in white light, where WLI-only
nuisances compete with them (a random colour cast per image, vignetting, specular highlights,
low-frequency shading from folds and mucus, blur). Two class cues:

- **Colour** (the NICE criterion): the polyp's colour moves from its modality's mean along a class
  direction (adenoma browner, hyperplastic paler, serrated yellowish), by ``class_colour`` times a
  per-case U(0.5, 1) (how typical the polyp looks), on top of a class-independent case-to-case spread
  ``polyp_colour_sd``. A network reads it by comparing pooled polyp and mucosa colours, so a student
  can learn it within the benchmark's few hundred iterations; a colour cast or brightness gain
  multiplies polyp and mucosa alike and leaves the ratio.
- **Surface pattern**: stripes / lattice / irregular texture with random period (8-11 px at 64x64,
  above the band nnU-Net's low-resolution augmentation removes), orientation and phase. Clear in
  narrow-band light; too faint in white light for a student to learn at the benchmark's schedule.

The benchmark trains the white-light student on a small share of its set (about 30 cases) against
the full narrow-band set, so the student is data-limited and a teacher has something to pass on.

Measured on 150 cases per modality at 64x64 (5-fold cross-validated logistic regression, macro
one-vs-rest AUC; tests/test_synth.py checks the same on 90): the polyp-to-mucosa log colour ratio
read with the true masks, narrow-band 0.999, white-light 0.83 (the student's documented oracle);
4 spectral features of the pattern, narrow-band 1.0, white-light 0.91; both together, white-light 0.95.

Written as png (one ``_0000.png`` RGB file per case, nnU-Net's natural-image reader). The image is
black outside a round field of view, as endoscopy frames are. Without ``lesion_masks`` the masks
hold no lesion information: label 1 is that field of view (all-background masks would crash
nnU-Net's fingerprint extraction, which needs foreground voxels) and dataset.json's ``nnkd`` entry
says ``"masks": "none"``, so nnkd's classification trainer trains the head alone; with
``lesion_masks`` label 1 is the polyp. The images are the same either way, and the truth file has
the polyp box either way.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from nnkd.labels import NNKD_KEY, NO_LESION_MASKS
from nnkd.synthetic import geometry, textures
from nnkd.synthetic.rawdataset import (DatasetSpec, SynthCase, balanced_classes, case_ids, case_rng,
                                       check_cases, check_size, lesion_truth, staged_datasets, write_dataset)

CLASSES = ("adenoma", "hyperplastic", "serrated")
CHANNELS = {"0": "R", "1": "G", "2": "B"}
LABELS = {"background": 0, "polyp": 1}  # with lesion_masks
FOV_LABELS = {"background": 0, "field_of_view": 1}  # without
FOV_RADIUS = 0.66  # of the image size: only the corners are outside
DEFAULT_SIZE = (64, 64)
DEFAULT_CASES = 120  # per dataset: nnU-Net caps the 2d batch at 5 % of the cases, so batches of 6 (2 per class)
DEFAULT_NAME = "SynthPolyp"


@dataclass(frozen=True)
class EndoscopyModality:
    """How one modality renders the same kind of scene (colours are RGB in [0, 1])."""

    name: str  # dataset name suffix
    prefix: str  # case id prefix
    pattern_contrast: float  # amplitude of the class pattern (unit-std pattern times this)
    blur: float  # Gaussian sigma in pixels, applied to the rendered image
    noise: float  # white noise sd
    vignetting: float  # brightness loss at the corners
    highlights: int  # up to this many specular highlights
    mucosa: tuple
    polyp: tuple
    pattern: tuple  # colour direction the pattern moves pixels along
    colour_cast: float = 0.0  # sd of a random per-image RGB gain (white balance), around 1
    shading: float = 0.0  # amplitude of low-frequency shading (folds, mucus), relative brightness
    class_colour: float = 0.0  # length of the class's shift of the polyp colour (CLASS_COLOURS), times U(0.5, 1)
    polyp_colour_sd: float = 0.0  # sd per RGB channel of the polyp colour's class-independent case-to-case spread


# Unit RGB directions of each class's polyp colour relative to its modality's mean polyp colour (the NICE
# colour criterion): adenoma browner/darker, hyperplastic paler, serrated yellowish (mucus cap).
CLASS_COLOURS = {"adenoma": (-0.2, -0.7, -0.7), "hyperplastic": (0.6, 0.6, 0.6), "serrated": (0.6, 0.4, -0.6)}
WHITE_LIGHT = EndoscopyModality("WLI", "wli", pattern_contrast=0.09, blur=1.0, noise=0.05, vignetting=0.35,
                                highlights=5, mucosa=(0.80, 0.42, 0.38), polyp=(0.86, 0.50, 0.44),
                                pattern=(-0.6, -0.8, -0.7), colour_cast=0.08, shading=0.10,
                                class_colour=0.06, polyp_colour_sd=0.03)
NARROW_BAND = EndoscopyModality("NBI", "nbi", pattern_contrast=0.35, blur=0.0, noise=0.02, vignetting=0.15,
                                highlights=0, mucosa=(0.35, 0.58, 0.58), polyp=(0.45, 0.52, 0.42),
                                pattern=(-0.4, -0.9, -1.0), class_colour=0.15, polyp_colour_sd=0.03)


def surface_pattern(rng: np.random.Generator, cls: int, shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Unit-std class pattern of ``shape`` and its parameters (period in pixels, angle in radians)."""
    period, angle = rng.uniform(8.0, 11.0) * min(shape) / 64, rng.uniform(0, np.pi)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    u = (np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)
    v = (-np.sin(angle) * xx + np.cos(angle) * yy) * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)
    if CLASSES[cls] == "adenoma":
        field = np.cos(u)
    elif CLASSES[cls] == "hyperplastic":
        field = np.cos(u) * np.cos(v)
    else:  # serrated: difference of Gaussians passes the band around the same period
        white = rng.standard_normal(shape)
        field = ndimage.gaussian_filter(white, period / 6) - ndimage.gaussian_filter(white, period / 3)
    field = (field - field.mean()) / field.std()
    return field, {"period": period, "angle": angle}


def field_of_view(shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: the round field of view of the endoscope."""
    return geometry.normalised_distance(shape, np.divide(shape, 2), np.multiply(shape, FOV_RADIUS)) <= 1


def make_case(rng: np.random.Generator, cls: int, shape: tuple[int, int],
              modality: EndoscopyModality) -> tuple[np.ndarray, np.ndarray, dict]:
    """One image: ``(rgb uint8 (H, W, 3), polyp mask uint8 (H, W), truth)``."""
    h, w = shape
    centre = rng.uniform(0.35, 0.65, 2) * shape
    radii = rng.uniform(0.24, 0.32, 2) * shape
    dist = geometry.normalised_distance(shape, centre, radii)
    mask = (dist <= 1) & field_of_view(shape)
    soft = 1 / (1 + np.exp((dist - 1) / 0.06))  # (H, W) polyp weight with a smooth rim
    bump = np.sqrt(np.clip(1 - dist ** 2, 0, None))  # polyp height: lit from the front

    base = 1 + 0.08 * textures.smooth_noise(rng, shape, 6.0)
    direction = np.asarray(CLASS_COLOURS[CLASSES[cls]]) / np.linalg.norm(CLASS_COLOURS[CLASSES[cls]])
    shift = modality.class_colour * rng.uniform(0.5, 1.0) * direction
    polyp = np.asarray(modality.polyp) + shift + modality.polyp_colour_sd * rng.standard_normal(3)
    colour = (np.asarray(modality.mucosa) * (1 - soft[..., None]) * base[..., None]
              + polyp * soft[..., None] * (1 + 0.15 * bump[..., None]))
    pattern, pattern_params = surface_pattern(rng, cls, shape)
    colour = colour + modality.pattern_contrast * (soft * pattern)[..., None] * np.asarray(modality.pattern)

    yy, xx = np.mgrid[:h, :w]
    r2 = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
    colour = colour * (1 - modality.vignetting * r2 / 2)[..., None]
    if modality.shading > 0:
        colour = colour * (1 + modality.shading * textures.smooth_noise(rng, shape, min(shape) / 6))[..., None]
    if modality.colour_cast > 0:
        colour = colour * np.exp(modality.colour_cast * rng.standard_normal(3))
    n_hl = rng.integers(0, modality.highlights + 1)
    if n_hl:
        spots = geometry.uniform_in_ellipsoid(rng, n_hl, centre, radii * 0.8)  # (n, 2)
        d2 = (yy[None] - spots[:, 0, None, None]) ** 2 + (xx[None] - spots[:, 1, None, None]) ** 2
        colour = colour + 0.7 * np.exp(-d2 / (2 * rng.uniform(0.8, 1.6, (n_hl, 1, 1)) ** 2)).sum(0)[..., None]
    if modality.blur > 0:
        colour = ndimage.gaussian_filter(colour, (modality.blur, modality.blur, 0))
    colour = colour + modality.noise * rng.standard_normal(colour.shape)
    colour = colour * field_of_view(shape)[..., None]
    rgb = np.round(np.clip(colour, 0, 1) * 255).astype(np.uint8)
    truth = {"lesions": lesion_truth(mask[None], LABELS["polyp"]), **pattern_params,
             "colour_shift": shift.round(4).tolist()}
    return rgb, mask.astype(np.uint8), truth


def generate(dataset_id: int, cases: int = DEFAULT_CASES, seed: int = 0, size=DEFAULT_SIZE,
             name: str = DEFAULT_NAME, overwrite: bool = False, lesion_masks: bool = False,
             student: EndoscopyModality = WHITE_LIGHT, teacher: EndoscopyModality = NARROW_BAND) -> list[str]:
    """Write the student dataset ``Dataset<id>_<name>_WLI`` and the teacher ``Dataset<id+1>_<name>_NBI``
    (``cases`` each, disjoint) into $nnUNet_raw; returns both folders (student first)."""
    cases, shape = check_cases(cases), check_size(size, 2, 32)
    roles = ((dataset_id, student, "student: white-light-like, class pattern faint"),
             (dataset_id + 1, teacher, "teacher: narrow-band-like, class pattern clear"))
    specs = [DatasetSpec(i, f"{name}_{m.name}", CHANNELS, LABELS if lesion_masks else FOV_LABELS, list(CLASSES), ".png",
                         f"Synthetic endoscopy polyps ({role}); case class = surface pattern; "
                         f"unpaired with Dataset{dataset_id + (i == dataset_id):03d}.",
                         extra={} if lesion_masks else {NNKD_KEY: dict(NO_LESION_MASKS)})
             for i, m, role in roles]

    def build(index: int, modality: EndoscopyModality):
        classes = balanced_classes(seed, index, cases, len(CLASSES))
        for i, (case_id, cls) in enumerate(zip(case_ids(modality.prefix, cases), classes)):
            rgb, mask, truth = make_case(case_rng(seed, index, i), int(cls), shape, modality)
            seg = mask if lesion_masks else field_of_view(shape).astype(np.uint8)
            yield SynthCase(case_id, [rgb], seg, CLASSES[cls], {"seed": [seed, index, i], **truth})

    with staged_datasets(specs, overwrite) as staged:
        for index, ((_, modality, _), spec, s) in enumerate(zip(roles, specs, staged)):
            meta = {"kind": "unpaired2d", "role": ("student", "teacher")[index], "seed": seed, "size": shape,
                    "axes": "y, x (numpy array order)", "boxes": "inclusive [min, max] pixel indices",
                    "lesion_masks_written": lesion_masks, "modality": asdict(modality)}
            write_dataset(s.folder, spec, build(index, modality), cases, meta)
    return [s.target for s in staged]
