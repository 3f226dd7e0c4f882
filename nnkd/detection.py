"""Scored lesion detections from probability maps, and the box CSV format they share with FROC.

A detection is a connected component (full connectivity, like the training-side lesion boxes)
of ``prob > threshold``; its score is the component's maximum probability, its centre the
probability-weighted centre of mass (robust to a faint tail that stretches the box; it may lie
outside a non-convex component, which the FROC hit criterion tolerates), its box the inclusive
voxel bounding box.

CSV (one file per prediction folder)::

    case_id,score,center_0..center_{D-1},box_lo_0..box_lo_{D-1},box_hi_0..box_hi_{D-1}

Coordinates are voxel indices in the probability array's axis order (for nnU-Net output: the
order of the arrays its reader returns, e.g. (z, y, x) for SimpleITK images). nnU-Net stores 2D
images as ``(1, H, W)``; that dummy leading axis is dropped, so 2D cases get D = 2. A case with
no detection is written as a row holding only its ``case_id``, so the file lists every case.
The ground-truth box CSV of :mod:`nnkd.evaluation.froc` has the same layout without ``score``.
"""
from __future__ import annotations

import csv
import io
import os
import zipfile
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from nnkd.errors import NNKDError
from nnkd.io import read_csv_rows, write_text

Channel = Union[int, Sequence[int], None]


@dataclass
class Boxes:
    """n boxes in D dims: ``centers``, ``lo``, ``hi`` ``(n, D)`` float; ``scores`` ``(n,)`` or None (ground truth)."""

    centers: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    scores: Optional[np.ndarray] = None

    @classmethod
    def empty(cls, ndim: int, scored: bool = True) -> "Boxes":
        z = np.zeros((0, ndim))
        return cls(z, z.copy(), z.copy(), np.zeros(0) if scored else None)

    def __len__(self) -> int:
        return len(self.centers)

    @property
    def ndim(self) -> int:
        return self.centers.shape[1]


def lesion_probability(prob: np.ndarray, lesion_channel: Channel = None) -> np.ndarray:
    """``(C, *S)`` class probabilities -> ``(*S)`` lesion probability (sum of the listed channels).

    ``lesion_channel=None`` means ``prob`` already is the lesion map. A leading singleton axis
    of a 3-axis map (nnU-Net's 2D convention) is dropped.
    """
    if lesion_channel is not None:
        channels = [lesion_channel] if np.isscalar(lesion_channel) else list(lesion_channel)
        prob = prob[channels].sum(0)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    return prob


def detect(prob: np.ndarray, threshold: float = 0.5, min_size: int = 0, lesion_channel: Channel = None) -> Boxes:
    """Detections of one case, highest score first (see the module docstring).

    prob: ``(*S)`` lesion probability map, or ``(C, *S)`` with ``lesion_channel`` set.
    Components with fewer than ``min_size`` voxels are dropped.
    """
    prob = lesion_probability(np.asarray(prob), lesion_channel)
    structure = ndimage.generate_binary_structure(prob.ndim, prob.ndim)
    labels, n = ndimage.label(prob > threshold, structure)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = np.flatnonzero(sizes >= max(min_size, 1)) + 1
    if keep.size == 0:
        return Boxes.empty(prob.ndim)
    scores = np.asarray(ndimage.maximum(prob, labels, keep), dtype=np.float64)
    centers = np.asarray(ndimage.center_of_mass(prob, labels, keep), dtype=np.float64).reshape(-1, prob.ndim)
    slices = ndimage.find_objects(labels)
    lo = np.array([[s.start for s in slices[i - 1]] for i in keep], dtype=np.float64)
    hi = np.array([[s.stop - 1 for s in slices[i - 1]] for i in keep], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    return Boxes(centers[order], lo[order], hi[order], scores[order])


def read_nnunet_probabilities(npz_path: str, lesion_channel: Channel = 1) -> np.ndarray:
    """Lesion probability map from an ``nnUNetv2_predict --save_probabilities`` ``.npz``.

    nnU-Net 2.8.1 writes ``np.savez_compressed(case + '.npz', probabilities=(C, *S))`` in the
    original image geometry (plus ``case.pkl`` with the properties, not needed for voxel output).
    """
    try:
        with np.load(npz_path) as data:
            if "probabilities" not in data.files:
                raise NNKDError(f"{npz_path}: no 'probabilities' array (has {', '.join(data.files) or 'none'}); "
                                "expected an nnUNetv2_predict --save_probabilities output")
            prob = data["probabilities"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise NNKDError(f"cannot read {npz_path}: {e}") from e
    channels = [lesion_channel] if np.isscalar(lesion_channel) else list(lesion_channel)
    if prob.ndim < 3 or any(not 0 <= c < prob.shape[0] for c in channels):
        raise NNKDError(f"{npz_path}: probabilities of shape {prob.shape} have no channel {lesion_channel} "
                        f"(channels 0..{prob.shape[0] - 1}; set --channel)")
    return lesion_probability(prob, lesion_channel)


def detect_folder(pred_folder: str, out_csv: str, threshold: float = 0.5, min_size: int = 0,
                  lesion_channel: Channel = 1, progress: bool = True) -> Tuple[int, int]:
    """Detect lesions in every ``*.npz`` of an nnU-Net prediction folder; write the CSV atomically.

    Returns ``(number of cases, number of detections)``.
    """
    if not os.path.isdir(pred_folder):
        raise NNKDError(f"prediction folder {pred_folder} does not exist")
    files = sorted(f for f in os.listdir(pred_folder) if f.endswith(".npz"))
    if not files:
        raise NNKDError(f"no .npz probability files in {pred_folder}: predict with "
                        "`nnUNetv2_predict ... --save_probabilities` to keep the probability maps")
    results: Dict[str, Boxes] = {}
    iterator = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="detect", unit="case")
    for name in iterator:
        prob = read_nnunet_probabilities(os.path.join(pred_folder, name), lesion_channel)
        results[name[:-len(".npz")]] = detect(prob, threshold, min_size)
    write_box_csv(out_csv, results)
    return len(results), sum(len(b) for b in results.values())


def box_columns(ndim: int, scored: bool) -> list:
    cols = ["case_id"] + (["score"] if scored else [])
    for prefix in ("center", "box_lo", "box_hi"):
        cols += [f"{prefix}_{d}" for d in range(ndim)]
    return cols


def write_box_csv(path: str, cases: Dict[str, Boxes]) -> None:
    """Write ``{case_id: Boxes}`` atomically (an empty Boxes -> a row with the case id only)."""
    ndims = {b.ndim for b in cases.values()} or {2}
    if len(ndims) > 1:
        raise NNKDError(f"{path}: cases have different dimensionality {sorted(ndims)}")
    ndim = ndims.pop()
    scored = all(b.scores is not None for b in cases.values())
    cols = box_columns(ndim, scored)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for case, b in cases.items():
        if not len(b):
            writer.writerow([case] + [""] * (len(cols) - 1))
        for i in range(len(b)):
            values = ([b.scores[i]] if scored else []) + [*b.centers[i], *b.lo[i], *b.hi[i]]
            writer.writerow([case, *(format(float(v), ".8g") for v in values)])
    write_text(path, buf.getvalue())


def read_box_csv(path: str, scored: bool) -> Dict[str, Boxes]:
    """Read a detection (``scored``) or ground-truth box CSV; errors name the file, line and column.

    Cases keep their first-appearance order; a row with only ``case_id`` declares a case without boxes.
    """
    rows = read_csv_rows(path, "box file")
    header = [h.strip() for h in rows[0]]
    ndim = sum(h.startswith("center_") for h in header)
    expected = box_columns(ndim, scored)
    if ndim == 0 or header != expected:
        raise NNKDError(f"{path}: header {','.join(header)} is not the expected "
                        f"{','.join(box_columns(max(ndim, 2), scored))} (D = number of center_ columns)")
    values: Dict[str, list] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        case = row[0].strip()
        if not case:
            raise NNKDError(f"{path}, line {line}: empty case_id")
        rest = [c.strip() for c in row[1:]]
        values.setdefault(case, [])
        if not any(rest):
            continue
        if len(row) != len(header):
            raise NNKDError(f"{path}, line {line} (case {case}): {len(row)} fields, header has {len(header)}")
        nums = []
        for column, cell in zip(header[1:], rest):
            try:
                nums.append(float(cell))
            except ValueError:
                raise NNKDError(f"{path}, line {line} (case {case}): {column} = {cell!r} is not a number") from None
            if not np.isfinite(nums[-1]):
                raise NNKDError(f"{path}, line {line} (case {case}): {column} = {cell} is not finite")
        values[case].append(nums)
    if not values:
        raise NNKDError(f"{path}: no rows")
    out = {}
    off = int(scored)
    for case, rows_ in values.items():
        if not rows_:
            out[case] = Boxes.empty(ndim, scored)
            continue
        a = np.asarray(rows_, dtype=np.float64)
        c, lo, hi = (a[:, off + i * ndim: off + (i + 1) * ndim] for i in range(3))
        if np.any(hi < lo):
            raise NNKDError(f"{path} (case {case}): a box has box_hi < box_lo")
        out[case] = Boxes(c, lo, hi, a[:, 0] if scored else None)
    return out

