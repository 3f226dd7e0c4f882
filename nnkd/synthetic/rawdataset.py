"""Writing synthetic cases as nnU-Net raw datasets under ``$nnUNet_raw``, all or nothing.

``nnkd dataset from-images`` (nnkd/image_folder.py) writes through the same functions. Every
dataset of one ``nnkd synth`` call is built in a hidden staging folder next to its target
(nnU-Net only looks at folders starting with "Dataset") and renamed into place once all are
complete, so an interrupted run never leaves a half-written dataset behind. Besides the files
nnU-Net needs, each dataset gets ``synth_truth.json`` (nnU-Net ignores it) and its case labels in
the dataset.json ``nnkd`` key, written by the same code as ``nnkd labels import``.

Datasets without lesion masks still need foreground in their masks (nnU-Net 2.8.1's fingerprint
extraction fails on all-background masks), so their label 1 marks something else (the image, the
field of view); ``NO_LESION_MASKS`` in their ``nnkd`` entry tells nnkd's trainers so.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

import nnkd
from nnkd.errors import NNKDError
from nnkd.io import atomic_path, write_json
from nnkd.labels import JSON_INDENT, with_case_labels

TRUTH_FILE = "synth_truth.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
_READER = {".nii.gz": "SimpleITKIO", ".png": "NaturalImage2DIO"}


@dataclass
class SynthCase:
    """One training case. ``images``: one array per image file (``_0000``, ``_0001``...), each of the
    segmentation's spatial shape (png: plus a trailing RGB axis for colour images); ``seg``: integer
    label map; ``label``: case class name; ``truth``: JSON-able ground truth (lesions, seed...)."""

    case_id: str
    images: list[np.ndarray]
    seg: np.ndarray
    label: str
    truth: dict


@dataclass(frozen=True)
class DatasetSpec:
    """What dataset.json says about a dataset (synthetic, or converted by ``nnkd dataset from-images``)."""

    dataset_id: int
    name: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    class_names: list[str]
    file_ending: str  # ".nii.gz" (3D, SimpleITK) or ".png" (2D, nnU-Net's natural-image reader)
    description: str
    spacing: tuple[float, ...] | None = None  # mm per array axis, nii.gz only
    extra: dict = field(default_factory=dict)  # further dataset.json keys (an "nnkd" entry is merged with the labels)

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"


class Staged(NamedTuple):
    folder: str  # where to write now
    target: str  # where the dataset will be once every staged dataset is complete


def raw_root() -> str:
    root = os.environ.get("nnUNet_raw")
    if not root:
        raise NNKDError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (the datasets "
                        "are written there)")
    return root


def check_targets(specs: Sequence[DatasetSpec], overwrite: bool) -> list[str]:
    """Target folders of ``specs``; NNKDError for a bad id or name, an existing target (unless
    ``overwrite``), or an id another dataset name already uses (nnU-Net could not tell them apart)."""
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    root = raw_root()
    targets = []
    for spec in specs:
        if not 1 <= spec.dataset_id <= 999:
            raise NNKDError(f"dataset id {spec.dataset_id} is outside 1..999 (nnU-Net uses three digits)")
        if not _NAME.fullmatch(spec.name):
            raise NNKDError(f"dataset name {spec.name!r}: use letters, digits, '_' and '-' only")
        target = os.path.join(root, spec.folder_name)
        if os.path.exists(target) and not overwrite:
            raise NNKDError(f"{target} already exists (use --overwrite to replace it)")
        others = [str(c) for c in find_candidate_datasets(spec.dataset_id) if str(c) != spec.folder_name]
        if others:
            raise NNKDError(f"dataset id {spec.dataset_id} is already used by {', '.join(others)} (in nnUNet_raw, "
                            f"nnUNet_preprocessed or nnUNet_results): choose another --id")
        targets.append(target)
    return targets


STALE_STAGING = re.compile(r"\.Dataset\d{3}_.*\.staging(\.old)?")  # what staged_datasets leaves when killed


@contextlib.contextmanager
def _root_lock(root: str) -> Iterator[None]:
    """Exclusive ``flock`` on the ``nnUNet_raw`` folder itself (no file is created): taken while a
    staging folder is created and locked, published, or while stale ones are looked for."""
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale_staging(root: str, notify: Callable[[str], None] | None = None) -> list[str]:
    """Remove the hidden staging folders (``.DatasetNNN_Name.*.staging`` and their ``.old`` copies of
    a replaced dataset) that a killed run left in ``root``; returns their paths. A folder whose
    build is still running is kept: its writer holds an ``flock`` on it. An ``.old`` copy whose
    dataset is missing (killed between the two renames of ``--overwrite``) is renamed back instead.
    ``notify`` gets one line per removed or restored folder."""
    removed = []
    with _root_lock(root):
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if not (STALE_STAGING.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)):
                continue
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another nnkd is building it right now
            finally:
                os.close(fd)
            target = os.path.join(root, entry.name[1:].split(".")[0])  # dataset names hold no dots
            if entry.name.endswith(".old") and not os.path.exists(target):
                # killed between moving the old dataset aside and moving the new one in: put it back
                os.replace(entry.path, target)
                if notify is not None:
                    notify(f"restored {target} from {entry.path}: an interrupted --overwrite had moved it aside")
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
            if notify is not None:
                notify(f"removed {entry.path}: a staging folder left behind by an interrupted dataset build")
    return removed


def print_notice(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def staged_datasets(specs: Sequence[DatasetSpec], overwrite: bool,
                    notify: Callable[[str], None] | None = print_notice) -> Iterator[list[Staged]]:
    """Staging folders for ``specs``; on a clean exit all of them replace their targets.

    Stale staging folders of killed runs are removed first (``notify`` says so); each new one is
    locked (``flock``) until it is published or removed, so that a concurrent run leaves it alone."""
    targets = check_targets(specs, overwrite)
    os.makedirs(raw_root(), exist_ok=True)
    remove_stale_staging(raw_root(), notify)
    staged, locks = [], []
    try:
        with _root_lock(raw_root()):
            for t in targets:
                staged.append(Staged(tempfile.mkdtemp(prefix=f".{os.path.basename(t)}.", suffix=".staging",
                                                      dir=raw_root()), t))
                locks.append(os.open(staged[-1].folder, os.O_RDONLY))
                fcntl.flock(locks[-1], fcntl.LOCK_EX)
        yield staged
        check_targets(specs, overwrite)  # nothing appeared meanwhile
        for s in staged:
            _default_permissions(s.folder)
        with _root_lock(raw_root()):
            _publish(staged)
    finally:
        for s in staged:
            shutil.rmtree(s.folder, ignore_errors=True)
        for fd in locks:
            os.close(fd)


def _default_permissions(folder: str) -> None:
    """Give the staged tree the permissions of ordinary new files: temporary files and folders
    are created private (0600/0700), but a dataset is usually shared with a group."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for parent, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(parent, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(parent, f), 0o666 & ~umask)


def _publish(staged: Sequence[Staged]) -> None:
    old = []
    for s in staged:
        if os.path.exists(s.target):
            old.append(f"{s.folder}.old")
            os.replace(s.target, old[-1])
        os.replace(s.folder, s.target)
    for folder in old:
        shutil.rmtree(folder, ignore_errors=True)


def write_dataset(folder: str, spec: DatasetSpec, cases: Iterable[SynthCase], num_cases: int, meta: dict) -> None:
    """Write ``cases`` (imagesTr, labelsTr), dataset.json with their labels, and synth_truth.json
    (``meta`` plus, per case, its class and ``truth``) into ``folder``."""
    from tqdm import tqdm

    labels, truth = {}, {}
    for case in tqdm(cases, total=num_cases, desc=spec.folder_name, unit="case", disable=None):
        write_case(folder, spec, case.case_id, case.images, case.seg)
        labels[case.case_id] = case.label
        truth[case.case_id] = {"class": case.label, **case.truth}
    write_dataset_json(folder, spec, labels, {
        "reference": f"synthetic, generated by nnkd {nnkd.__version__}; ground truth in {TRUTH_FILE}",
        "licence": "CC0-1.0"})
    write_json(os.path.join(folder, TRUTH_FILE), {**meta, "cases": truth})


def write_case(folder: str, spec: DatasetSpec, case_id: str, images: Sequence[np.ndarray], seg: np.ndarray) -> None:
    """One training case: ``imagesTr/<case_id>_<cccc><ending>`` per image, ``labelsTr/<case_id><ending>`` (uint8)."""
    for c, image in enumerate(images):
        write_image(os.path.join(folder, "imagesTr", f"{case_id}_{c:04d}{spec.file_ending}"), image, spec.spacing)
    write_image(os.path.join(folder, "labelsTr", case_id + spec.file_ending), seg.astype(np.uint8), spec.spacing)


def write_dataset_json(folder: str, spec: DatasetSpec, labels: Mapping[str, str], provenance: Mapping[str, str]) -> None:
    """``folder/dataset.json`` for ``spec`` with ``labels`` ({case id: class name}) under the ``nnkd`` key
    (merged with any ``nnkd`` entry in ``spec.extra``); ``provenance`` (reference, licence) follows the
    description."""
    dataset_json = {
        "name": spec.name,
        "description": spec.description,
        **provenance,
        "channel_names": spec.channel_names,
        "labels": spec.labels,
        "numTraining": len(labels),
        "file_ending": spec.file_ending,
        "overwrite_image_reader_writer": _READER[spec.file_ending],
        **spec.extra,
    }
    write_json(os.path.join(folder, "dataset.json"), with_case_labels(dataset_json, spec.class_names, labels),
               indent=JSON_INDENT)


def write_image(path: str, array: np.ndarray, spacing: tuple[float, ...] | None) -> None:
    """One image file, atomically: nii.gz through SimpleITK (``spacing`` in array axis order), png
    through scikit-image (2D grey, or RGB with a trailing axis of 3)."""
    with atomic_path(path) as tmp:
        if path.endswith(".nii.gz"):
            import SimpleITK as sitk

            image = sitk.GetImageFromArray(array)
            image.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK orders axes x, y, z
            sitk.WriteImage(image, tmp, useCompression=True)
        elif path.endswith(".png"):
            from skimage import io

            io.imsave(tmp, array, check_contrast=False)
        else:
            raise ValueError(f"unsupported file ending: {path}")


def case_rng(seed: int, dataset_index: int, case_index: int) -> np.random.Generator:
    """The generator of one case: reproducible from ``[seed, dataset_index, case_index]`` alone."""
    return np.random.default_rng([seed, dataset_index, case_index])


def balanced_classes(seed: int, dataset_index: int, num_cases: int, num_classes: int) -> np.ndarray:
    """``(num_cases,)`` class indices, as equal in number as possible, in a seeded random order."""
    return np.random.default_rng([seed, dataset_index]).permutation(np.arange(num_cases) % num_classes)


def case_ids(prefix: str, num_cases: int) -> list[str]:
    width = max(3, len(str(num_cases - 1)))
    return [f"{prefix}_{i:0{width}d}" for i in range(num_cases)]


def check_size(size: Sequence[int] | int, ndim: int, minimum: int) -> tuple[int, ...]:
    """``--size``: one value (same on every axis) or ``ndim`` values, each at least ``minimum``."""
    size = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(size) == 1:
        size = size * ndim
    if len(size) != ndim or any(int(s) < minimum for s in size):
        raise NNKDError(f"--size {' '.join(map(str, size))}: give 1 or {ndim} values, each at least {minimum}")
    return tuple(int(s) for s in size)


def check_cases(num_cases: int) -> int:
    if num_cases < 1:
        raise NNKDError(f"--cases must be at least 1, got {num_cases}")
    return int(num_cases)


def lesion_truth(masks: np.ndarray, label: int, **per_lesion: Sequence) -> list[dict]:
    """JSON-able description of the lesions in ``masks`` ``(L, *spatial)``: label value, centroid,
    inclusive box and voxel count (all in array axis order), plus the given per-lesion values."""
    from nnkd.synthetic.geometry import mask_boxes

    if len(masks) == 0:
        return []
    boxes = mask_boxes(masks)
    counts = masks.reshape(len(masks), -1).sum(1)
    grids = np.indices(masks.shape[1:]).reshape(masks.ndim - 1, -1)  # (D, N)
    centroids = masks.reshape(len(masks), -1) @ grids.T / counts[:, None]
    return [{"label": label, "centre": np.round(centroids[i], 3).tolist(), "bbox": boxes[i].tolist(),
             "voxels": int(counts[i]), **{k: _jsonable(v[i]) for k, v in per_lesion.items()}}
            for i in range(len(masks))]


def _jsonable(value):
    value = np.asarray(value)
    return np.round(value, 4).tolist() if value.dtype.kind == "f" else value.tolist()
