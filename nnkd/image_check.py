"""Image files checked before nnU-Net reads them: the one check of ``nnkd predict`` and ``nnkd check``.

nnU-Net's readers accept damaged input silently: SimpleITK reads a ``.nii.gz`` cut short as a
zero-filled volume and returns NaN voxels of a NIfTI file as 0. :func:`check_image` therefore
decompresses ``.gz`` files to their end-of-stream marker, reads NIfTI voxels with nibabel (other
formats with SimpleITK) and counts non-finite values. :func:`check_case` adds the case-level checks
(channel files present, same shape and geometry as each other and as the label, label values
known); :func:`check_raw_dataset` runs them over a raw nnU-Net dataset. Every function returns
all problems it finds, each naming the case and file.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnkd.errors import NNKDError

#: geometry (spacing, origin, direction / affine) of two files of one case must agree to this tolerance
GEOMETRY_ATOL = 1e-3


@dataclass
class ImageInfo:
    """What the case-level checks compare: voxel grid shape, geometry and (labels) the distinct values."""
    shape: Tuple[int, ...]
    geometry: Optional[np.ndarray]  # NIfTI: the 4x4 affine; others: spacing + origin + direction
    values: Optional[np.ndarray] = None


def channel_files(folder: str, file_ending: str) -> Dict[str, Dict[int, str]]:
    """{case id: {channel index: path}} for nnU-Net's ``CASE_XXXX<ending>`` names in ``folder``."""
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(file_ending)}$")
    found: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        m = pattern.match(name)
        if m:
            found.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(folder, name)
    return found


def _gzip_problem(path: str) -> Optional[str]:
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as e:
        return f"truncated or corrupt gzip stream ({e})"
    return None


def _read(path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(path)
        return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    geometry = np.concatenate([img.GetSpacing(), img.GetOrigin(), img.GetDirection()]).astype(np.float64)
    return sitk.GetArrayFromImage(img), geometry


def check_image(path: str, label: bool = False) -> Tuple[Optional[ImageInfo], List[str]]:
    """Read one image file completely; returns (its info or None, problems naming the file)."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        return None, [f"{name}: file not found ({path})"]
    if os.path.getsize(path) == 0:
        return None, [f"{name}: empty file"]
    if path.endswith(".gz"):
        problem = _gzip_problem(path)
        if problem:
            return None, [f"{name}: {problem}"]
    try:
        data, geometry = _read(path)
    except Exception as e:  # readers raise many types (nibabel, ITK); the message names the file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, [f"{name}: unreadable ({first})"]
    problems = []
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            problems.append(f"{name}: {bad} of {data.size} voxels are NaN or infinite")
    if geometry is not None and not np.all(np.isfinite(geometry)):
        problems.append(f"{name}: non-finite geometry (spacing, origin or direction)")
    values = None
    if label and not problems:
        values = np.unique(data)
        if not np.all(np.equal(np.mod(values, 1), 0)):
            problems.append(f"{name}: label values are not integers")
    return ImageInfo(tuple(data.shape), geometry, values), problems


def check_case(case: str, images: Sequence[str], label: Optional[str] = None,
               label_values: Optional[Iterable[int]] = None) -> List[str]:
    """Every problem of one case's channel files (and label file): unreadable, truncated, non-finite,
    and shape or geometry differing between its files; each line starts with ``case <id>``."""
    problems, infos = [], []
    for path in images:
        info, p = check_image(path)
        problems += p
        infos.append((path, info))
    if label is not None:
        info, p = check_image(label, label=True)
        problems += p
        infos.append((label, info))
        if info is not None and info.values is not None and label_values is not None:
            unknown = sorted(set(info.values.astype(np.int64).tolist()) - set(label_values))
            if unknown:
                problems.append(f"{os.path.basename(label)}: label value(s) {unknown} not in dataset.json labels "
                                f"{sorted(set(label_values))}")
    readable = [(p, i) for p, i in infos if i is not None]
    if readable:
        ref_path, ref = readable[0]
        for path, info in readable[1:]:
            if info.shape != ref.shape:
                problems.append(f"{os.path.basename(path)}: shape {info.shape} differs from "
                                f"{os.path.basename(ref_path)} {ref.shape}")
            elif (info.geometry is not None and ref.geometry is not None
                  and (info.geometry.shape != ref.geometry.shape
                       or not np.allclose(info.geometry, ref.geometry, rtol=0, atol=GEOMETRY_ATOL))):
                problems.append(f"{os.path.basename(path)}: geometry (spacing, origin or direction) differs from "
                                f"{os.path.basename(ref_path)}")
    return [f"case {case}: {p}" for p in problems]


def _label_values(labels: dict) -> List[int]:
    out = []
    for v in labels.values():
        out += [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]
    return out


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise NNKDError(f"{path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise NNKDError(f"{path}: not valid JSON: {e}") from None


def check_raw_dataset(folder: str, progress: Optional[Callable[[str], None]] = None) -> Tuple[int, List[str]]:
    """Check every case of a raw nnU-Net dataset (``imagesTr``/``labelsTr``, and ``imagesTs`` if present).

    Returns (number of cases checked, every problem found). ``progress(case)`` is called per case.
    """
    dataset_json = _load_json(os.path.join(folder, "dataset.json"))
    missing = [k for k in ("channel_names", "labels", "file_ending") if k not in dataset_json]
    if missing:
        raise NNKDError(f"{folder}/dataset.json: missing entr{'y' if len(missing) == 1 else 'ies'} "
                        f"{', '.join(missing)}")
    ending, n = dataset_json["file_ending"], len(dataset_json["channel_names"])
    values = _label_values(dataset_json["labels"])
    problems: List[str] = []
    cases: List[Tuple[str, List[str], Optional[str]]] = []
    if "dataset" in dataset_json:  # explicit file lists instead of the folder naming convention
        for case, entry in dataset_json["dataset"].items():
            cases.append((case, [os.path.join(folder, p) for p in entry["images"]],
                          os.path.join(folder, entry["label"])))
    else:
        for sub, has_labels in (("imagesTr", True), ("imagesTs", False)):
            images = os.path.join(folder, sub)
            if not os.path.isdir(images):
                if has_labels:
                    problems.append(f"{images}: folder not found")
                continue
            found = channel_files(images, ending)
            labels = os.path.join(folder, "labelsTr")
            if has_labels and os.path.isdir(labels):
                orphans = sorted(f for f in os.listdir(labels)
                                 if f.endswith(ending) and f[: -len(ending)] not in found)
                problems += [f"labelsTr/{f}: label without images in imagesTr" for f in orphans]
            for case, files in found.items():
                absent = [c for c in range(n) if c not in files]
                extra = sorted(set(files) - set(range(n)))
                if absent:
                    problems.append(f"case {case}: missing channel file(s) "
                                    f"{', '.join(f'{sub}/{case}_{c:04d}{ending}' for c in absent)}")
                if extra:
                    problems.append(f"case {case}: file(s) for channel(s) {extra} but dataset.json names {n} channel(s)")
                label = os.path.join(labels, case + ending) if has_labels else None
                cases.append((case, [files[c] for c in sorted(files) if c < n], label))
        n_train = sum(1 for c in cases if c[2] is not None)
        if "numTraining" in dataset_json and dataset_json["numTraining"] != n_train:
            problems.append(f"dataset.json: numTraining is {dataset_json['numTraining']} but imagesTr holds "
                            f"{n_train} case(s)")
    for case, images, label in cases:
        if progress is not None:
            progress(case)
        problems += check_case(case, images, label, values)
    return len(cases), problems
