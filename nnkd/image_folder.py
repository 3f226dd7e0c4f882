"""A folder of 2D images plus a ``case_id,label`` table as an nnU-Net raw dataset
(``nnkd dataset from-images``).

Input: IMAGES_DIR with one image per case (png, jpg/jpeg, bmp, tif/tiff; case id = file stem),
a label CSV with the columns ``case_id,label`` (read by :func:`nnkd.labels.parse_label_csv`) and,
optionally, MASKS_DIR with one lossless mask per image under the same stem. Output:
``$nnUNet_raw/DatasetNNN_NAME`` with ``imagesTr/<case>_0000.png`` (8-bit RGB for nnU-Net's
natural-image reader ``NaturalImage2DIO``: grey images become 3 equal channels, alpha is dropped,
16-bit images are scaled to 8 bits), ``labelsTr/<case>.png``, dataset.json with the case labels
under the ``nnkd`` key (as ``nnkd labels import`` writes them) and ``image_sources.json`` (the
file each case came from; nnU-Net ignores it).

Masks. nnU-Net 2.8.1 cannot plan a dataset whose masks are all background: fingerprint
extraction takes percentiles of the intensities under the foreground and fails with
"IndexError: index -1 is out of bounds for axis 0 with size 0". Without MASKS_DIR
(classification-only) every mask therefore labels the whole image as label 1 ``image``, and the
dataset.json ``nnkd`` entry says ``"masks": "none"``: the masks carry no lesion information, and
nnkd's classification trainer trains the classification head alone. With MASKS_DIR the masks
are kept with their values: 0 = background, 1..K as given (a mask holding only 0 and 255 is
binary: 255 becomes 1), named ``background``/``lesion`` when K = 1, else ``label_1``..``label_K``.

Case ids become valid nnU-Net identifiers (letters, digits, ``_``, ``-``; first a letter or a
digit): other characters are replaced by ``_`` (``image_sources.json`` records the original file).

All or nothing: every problem (unreadable image or mask, image without a label, label without an
image, missing mask, clashing case ids, ...) is collected and refused in one NNKDError that lists
each file; the dataset is built in a hidden staging folder next to its target and renamed into
place only when complete (nnkd.synthetic.rawdataset).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

import nnkd
from nnkd.errors import NNKDError
from nnkd.io import write_json
from nnkd.labels import NNKD_KEY, NO_LESION_MASKS, natural_key, parse_label_csv
from nnkd.synthetic.rawdataset import (DatasetSpec, print_notice, staged_datasets, write_case,
                                       write_dataset_json)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")  # refused for masks: compression changes label values
CHANNELS = {"0": "R", "1": "G", "2": "B"}
IMAGE_LABELS = {"background": 0, "image": 1}  # without masks: label 1 = the whole image
MAX_MASK_LABEL = 31  # higher values look like greyscale or anti-aliased pictures, not label maps
SOURCES_FILE = "image_sources.json"
PROGRESS_MIN_CASES = 20  # shorter folders convert in a moment: no progress lines
_NOT_ID = re.compile(r"[^A-Za-z0-9_\-]+")

Progress = Callable[[str], None]


class SourceCase(NamedTuple):
    case_id: str  # valid nnU-Net identifier (the file stem, sanitised)
    stem: str  # the file stem: the case_id of the label CSV
    image: str  # path
    mask: str | None  # path (with masks)
    label: str  # class name


class Survey(NamedTuple):
    cases: list[SourceCase]  # every image with a label, in natural order of case id
    problems: list[str]  # one line per offending file or row
    ignored: list[str]  # entries of IMAGES_DIR that are no image files


class Converted(NamedTuple):
    folder: str  # the written dataset
    cases: list[SourceCase]
    class_names: list[str]  # index order
    labels: dict[str, int]  # dataset.json "labels"
    ignored: list[str]


# ---------------------------------------------------------------------------------------------
# Matching files and labels (names only, nothing decoded)


def list_images(folder: str, what: str) -> tuple[dict[str, list[str]], list[str]]:
    """({stem: [file names]}, other entry names) of ``folder``'s image files (extensions of
    IMAGE_EXTENSIONS in any case; hidden entries skipped); NNKDError when ``folder`` is no folder."""
    if not os.path.isdir(folder):
        raise NNKDError(f"{what} folder not found: {folder}")
    by_stem: dict[str, list[str]] = {}
    ignored = []
    for entry in sorted(os.scandir(folder), key=lambda e: natural_key(e.name)):
        if entry.name.startswith("."):
            continue
        stem, ext = os.path.splitext(entry.name)
        if entry.is_file() and ext.lower() in IMAGE_EXTENSIONS:
            by_stem.setdefault(stem, []).append(entry.name)
        else:
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))
    return by_stem, ignored


def case_identifier(stem: str) -> str:
    """``stem`` as an nnU-Net case identifier: runs of characters other than ASCII letters, digits,
    '_' and '-' become '_', and leading '_'/'-' go; '' when nothing is left."""
    return _NOT_ID.sub("_", stem).lstrip("_-")


def survey(images_dir: str, labels_csv: str, masks_dir: str | None = None) -> Survey:
    """Match image files, label rows and masks by file stem; every mismatch is a problem line.

    NNKDError at once only for a missing folder, an IMAGES_DIR without image files, or a label CSV
    without its header (bad rows of the CSV are problem lines, see parse_label_csv)."""
    rows, csv_problems = parse_label_csv(labels_csv)
    images, ignored = list_images(images_dir, "image")
    if not images:
        raise NNKDError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    problems = [f"{labels_csv} {p}" for p in csv_problems] + _several(images_dir, images, "images")
    labelled = {r.case_id: r for r in rows}
    for stem, names in images.items():
        if stem not in labelled:
            problems.append(f"{os.path.join(images_dir, names[0])}: no label in {labels_csv} (case_id {stem!r})")
    for r in rows:
        if r.case_id not in images:
            hint = " (case_id is the file name without its extension)" \
                if os.path.splitext(r.case_id)[1].lower() in IMAGE_EXTENSIONS else ""
            problems.append(f"{labels_csv} line {r.line}: no image for case_id {r.case_id!r} in {images_dir}{hint}")
    masks = _match_masks(images_dir, images, masks_dir, problems) if masks_dir else {}
    stems = [s for s in images if s in labelled]
    ids = _case_ids(stems, problems)
    cases = [SourceCase(ids[s], s, os.path.join(images_dir, images[s][0]), masks.get(s), labelled[s].label)
             for s in stems]
    return Survey(sorted(cases, key=lambda c: natural_key(c.case_id)), problems, ignored)


def _several(folder: str, by_stem: dict[str, list[str]], what: str) -> list[str]:
    return [f"{folder}: several {what} for case {stem!r}: {', '.join(names)}"
            for stem, names in by_stem.items() if len(names) > 1]


def _match_masks(images_dir: str, images: dict[str, list[str]], masks_dir: str, problems: list[str]) -> dict[str, str]:
    """{stem: mask path} for the images that have exactly one lossless mask; mismatches go to ``problems``."""
    masks, _ = list_images(masks_dir, "mask")
    problems += _several(masks_dir, masks, "masks")
    found = {}
    for stem, names in masks.items():
        path = os.path.join(masks_dir, names[0])
        if stem not in images:
            problems.append(f"{path}: mask without an image of the same stem in {images_dir}")
        elif os.path.splitext(path)[1].lower() in LOSSY_EXTENSIONS:
            problems.append(f"{path}: JPEG masks are lossy (compression changes label values); "
                            f"save masks as png, bmp or tif")
        else:
            found[stem] = path
    for stem, names in images.items():
        if stem not in masks:
            problems.append(f"{os.path.join(images_dir, names[0])}: no mask {stem}.png (or .bmp, .tif) in {masks_dir}")
    return found


def _case_ids(stems: Sequence[str], problems: list[str]) -> dict[str, str]:
    """{stem: case id}; stems that leave no identifier or share one with another stem go to ``problems``."""
    ids = {s: case_identifier(s) for s in stems}
    problems += [f"case_id {s!r}: no letter or digit left for an nnU-Net identifier; rename the file"
                 for s, i in ids.items() if not i]
    sharing: dict[str, list[str]] = {}
    for s, i in ids.items():
        sharing.setdefault(i, []).append(s)
    problems += [f"case_ids {', '.join(map(repr, ss))} all become the nnU-Net identifier {i!r}; rename one"
                 for i, ss in sharing.items() if i and len(ss) > 1]
    return ids


# ---------------------------------------------------------------------------------------------
# Decoding


def _open(path: str):
    """The first frame of an image file, loaded; ValueError with the decoder's reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            raise ValueError(f"{frames} frames or pages, expected one image")
        im.load()
        return im
    except UnidentifiedImageError:
        raise ValueError("not an image file Pillow can decode") from None
    except ValueError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, EOFError... for damaged files
        raise ValueError(f"{type(e).__name__}: {e}") from None


def read_image(path: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB: grey becomes 3 equal channels, alpha is dropped, palettes are
    applied, 16-bit grey is scaled to 8 bits (value / 257); ValueError for unreadable files and
    floating-point pixels."""
    im = _open(path)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(im).astype(np.int64)
        if grey.min() < 0 or grey.max() > 65535:
            raise ValueError(f"{im.mode} pixel values {grey.min()}..{grey.max()} outside 0..65535")
        return np.repeat(np.round(grey / 257).astype(np.uint8)[..., None], 3, axis=-1)
    if im.mode == "F":
        raise ValueError("floating-point pixels (mode F): expected 8- or 16-bit images")
    return np.asarray(im.convert("RGB"))


def read_mask(path: str) -> np.ndarray:
    """``(H, W)`` uint8 label map: values 0..MAX_MASK_LABEL kept, a mask holding only 0 and 255
    becomes 0/1; colour masks whose channels are equal are read as grey. ValueError otherwise."""
    im = _open(path)
    if im.mode == "F":
        raise ValueError("floating-point pixels (mode F): expected a label map")
    values = np.asarray(im).astype(np.int64)
    if values.ndim == 3:  # LA, RGB, RGBA...: the colour channels must agree
        colour = values[..., :1] if im.mode in ("LA", "La") else values[..., :3]
        if (colour != colour[..., :1]).any():
            raise ValueError(f"colour mask ({im.mode} with differing channels): expected one label value per pixel")
        values = colour[..., 0]
    present = np.unique(values)
    if present[-1] == 255 and set(present.tolist()) <= {0, 255}:
        return (values // 255).astype(np.uint8)
    if present[0] < 0 or present[-1] > MAX_MASK_LABEL:
        shown = ", ".join(map(str, present[:8])) + (", ..." if len(present) > 8 else "")
        raise ValueError(f"values {shown}: expected a label map (0 = background, 1..K, K <= {MAX_MASK_LABEL}) "
                         f"or a binary 0/255 mask")
    return values.astype(np.uint8)


def convert_cases(cases: Sequence[SourceCase], folder: str | None, spec: DatasetSpec,
                  progress: Progress | None = None) -> tuple[set[int], list[str]]:
    """Decode every case and, while no problem has been found, write it into ``folder`` (None:
    check only); returns (mask values seen, problem lines). Without a mask file the mask is the
    whole image (label 1). ``progress`` gets a counter line about every 10 % (from
    PROGRESS_MIN_CASES cases on)."""
    values: set[int] = set()
    problems: list[str] = []
    step = max(1, -(-len(cases) // 10))
    progress = progress if len(cases) >= PROGRESS_MIN_CASES else None
    for i, case in enumerate(cases, 1):
        rgb, seg = _decode(case, problems)
        if seg is not None:
            values.update(np.unique(seg).tolist())
        if folder is not None and not problems:
            write_case(folder, spec, case.case_id, [rgb], seg)
        if progress is not None and (i % step == 0 or i == len(cases)):
            progress(f"{spec.folder_name}: {i}/{len(cases)} images")
    return values, problems


def _decode(case: SourceCase, problems: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(RGB image, mask) of one case; None for what could not be read (its problem is appended)."""
    rgb = seg = None
    try:
        rgb = read_image(case.image)
    except ValueError as e:
        problems.append(f"{case.image}: unreadable image ({e})")
    if case.mask is None:
        return rgb, None if rgb is None else np.ones(rgb.shape[:2], np.uint8)
    try:
        seg = read_mask(case.mask)
    except ValueError as e:
        problems.append(f"{case.mask}: unusable mask ({e})")
    if rgb is not None and seg is not None and seg.shape != rgb.shape[:2]:
        problems.append(f"{case.mask}: {seg.shape[1]}x{seg.shape[0]} pixels, but its image {case.image} has "
                        f"{rgb.shape[1]}x{rgb.shape[0]}")
        seg = None
    return rgb, seg


def mask_labels(values: Iterable[int]) -> tuple[dict[str, int], list[str]]:
    """(dataset.json labels, problems) for the label values found in the given masks: they must
    run 0, 1, ..., K with K >= 1 (nnU-Net needs consecutive labels and some foreground)."""
    foreground = sorted(set(values) - {0})
    if not foreground:
        return {"background": 0, "lesion": 1}, [
            "every mask is background only: nnU-Net 2.8.1 cannot plan such a dataset; leave out --masks for a "
            "classification-only dataset"]
    missing = sorted(set(range(1, foreground[-1] + 1)) - set(foreground))
    if missing:
        return {}, [f"mask values must run 0, 1, ..., K without gaps (nnU-Net needs consecutive labels): found "
                    f"{', '.join(map(str, [0, *foreground]))}, missing {', '.join(map(str, missing))}"]
    if foreground == [1]:
        return {"background": 0, "lesion": 1}, []
    return {"background": 0, **{f"label_{k}": k for k in foreground}}, []


# ---------------------------------------------------------------------------------------------
# The dataset


def from_images(images_dir: str, labels_csv: str, dataset_id: int, name: str, masks_dir: str | None = None,
                overwrite: bool = False, progress: Progress | None = None) -> Converted:
    """Write ``$nnUNet_raw/Dataset<id>_<name>`` from an image folder, its label CSV and optional masks.

    Refuses (NNKDError, nothing written) an existing dataset id (unless ``overwrite``, which replaces
    a dataset of the same id and name only) and, in one message listing each, every problem found
    in the files. Class indices follow the natural-sort order of the labels (G2 before G10)."""
    found = survey(images_dir, labels_csv, masks_dir)
    class_names = sorted({c.label for c in found.cases}, key=natural_key)
    spec = DatasetSpec(dataset_id, name, CHANNELS, IMAGE_LABELS, class_names, ".png",
                       _description(images_dir, len(found.cases), masks_dir),
                       extra={} if masks_dir else {NNKD_KEY: dict(NO_LESION_MASKS)})
    with staged_datasets([spec], overwrite, progress or print_notice) as (stage,):
        values, problems = convert_cases(found.cases, None if found.problems else stage.folder, spec, progress)
        labels, label_problems = mask_labels(values) if masks_dir else (IMAGE_LABELS, [])
        _refuse(found.problems + problems or label_problems, images_dir, spec)  # value gaps only once all masks read
        spec = dataclasses.replace(spec, labels=labels)
        write_dataset_json(stage.folder, spec, {c.case_id: c.label for c in found.cases},
                           {"reference": f"converted by nnkd {nnkd.__version__} (nnkd dataset from-images); "
                                         f"source files in {SOURCES_FILE}"})
        write_json(os.path.join(stage.folder, SOURCES_FILE), _sources(found.cases, images_dir, labels_csv, masks_dir))
    return Converted(stage.target, found.cases, class_names, labels, found.ignored)


def _description(images_dir: str, n: int, masks_dir: str | None) -> str:
    masks = f"lesion masks from {os.path.abspath(masks_dir)}" if masks_dir else \
        "no lesion masks: label 1 is the whole image (nnU-Net needs foreground to plan)"
    return f"{n} 2D images from {os.path.abspath(images_dir)}; {masks}."


def _refuse(problems: Sequence[str], images_dir: str, spec: DatasetSpec) -> None:
    if problems:
        raise NNKDError(f"refusing to convert {images_dir} into {spec.folder_name} (nothing was written), "
                        f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


def _sources(cases: Sequence[SourceCase], images_dir: str, labels_csv: str, masks_dir: str | None) -> dict:
    """image_sources.json: the input paths and, per case id, its image (and mask) file names."""
    return {"images": os.path.abspath(images_dir), "labels": os.path.abspath(labels_csv),
            "masks": os.path.abspath(masks_dir) if masks_dir else None,
            "cases": {c.case_id: {"image": os.path.basename(c.image), "label": c.label,
                                  **({"mask": os.path.basename(c.mask)} if c.mask else {})} for c in cases}}
