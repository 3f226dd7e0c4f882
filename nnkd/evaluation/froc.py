"""FROC analysis of lesion detections (CoMoTo's evaluation, docs/methods.md).

Inputs: a detection CSV (:mod:`nnkd.detection`) and the ground truth, either
* a folder of label images (nnU-Net ``labelsTr`` style, any nnU-Net file ending, read with
  nnU-Net's reader classes so the axis order matches nnU-Net's predictions): a lesion is a
  connected component (full connectivity) of ``label > 0``, its centre the centre of its box; or
* a CSV ``case_id,center_0..,box_lo_0..,box_hi_0..`` (inclusive voxel boxes, same coordinates
  as the detections; a row with only ``case_id`` declares a case without lesions).
Every ground-truth case must have a row in the detection CSV and vice versa.

Hit criterion: a detection hits lesion L when its centre lies inside L (the mask voxel at the
rounded centre belongs to L; for CSV ground truth: inside L's box) or within half of L's box
diagonal ``||hi - lo + 1||`` of L's centre, in voxel units. As in MONAI's (CAMELYON) FROC, each
lesion counts once, with the highest score among its hits; further hits on a lesion are
neither TP nor FP; a detection that hits no lesion is a FP; a detection may hit several lesions.

Operating points: one per distinct score (threshold ``score >= t``) plus (0, 0). FP rates are
per case over ALL cases (negatives included); sensitivities at the FP rates 1, 2, 3, 4 are
linearly interpolated between operating points (``np.interp``, as MONAI's
``compute_froc_score``: at an FP rate shared by several points the highest sensitivity; beyond the
last point the final sensitivity is kept). The numbers equal MONAI's ``compute_froc_curve_data`` /
``compute_froc_score`` (tests check it); see :func:`weighted_curves` for why they are not called
here. CIs: percentile bootstrap over cases (resampled with replacement, all cases each time).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from nnkd.detection import Boxes, read_box_csv
from nnkd.errors import NNKDError
from nnkd.evaluation.bootstrap import bootstrap, percentile_ci
from nnkd.io import save_figure, write_json

FP_RATES = (1.0, 2.0, 3.0, 4.0)
_GRID = 101  # FP-rate samples of the bootstrap band in the plot


@dataclass
class Matched:
    """Per-event arrays of a matched evaluation set (N cases)."""

    case_ids: list
    fp_scores: np.ndarray  # (F,) scores of detections that hit no lesion
    fp_case: np.ndarray  # (F,) their case index
    lesion_scores: np.ndarray  # (L,) best hit score per lesion, -inf when missed
    lesion_case: np.ndarray  # (L,)
    n_detections: int

    @property
    def n_cases(self) -> int:
        return len(self.case_ids)


def match_case(det: Boxes, gt: Boxes, instance: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Apply the hit criterion to one case.

    ``instance``: the lesion instance map (0 = background, lesion i = i + 1) or None for box
    ground truth. Returns ``(best score per lesion (L,), -inf when missed; is_fp (n,) bool)``.
    """
    if not len(det):
        return np.full(len(gt), -np.inf), np.zeros(0, dtype=bool)
    c = det.centers[:, None, :]  # (n, 1, D)
    if instance is not None:
        v = np.floor(det.centers + 0.5).astype(np.int64)
        inb = np.all((v >= 0) & (v < instance.shape), axis=1)
        at = np.zeros(len(det), dtype=np.int64)
        at[inb] = instance[tuple(v[inb].T)]
        inside = at[:, None] == np.arange(1, len(gt) + 1)[None]
    else:
        inside = np.all((c >= gt.lo[None] - 0.5) & (c <= gt.hi[None] + 0.5), axis=-1)
    half_diag = np.linalg.norm(gt.hi - gt.lo + 1, axis=1) / 2
    near = np.linalg.norm(c - gt.centers[None], axis=-1) <= half_diag[None]
    hit = inside | near  # (n, L)
    best = np.where(hit, det.scores[:, None], -np.inf).max(0, initial=-np.inf)
    return best, ~hit.any(1)


def label_lesions(label: np.ndarray) -> Tuple[np.ndarray, Boxes]:
    """``(*S)`` label image -> (instance map, lesion boxes with box-centre centres)."""
    instance, n = ndimage.label(label > 0, ndimage.generate_binary_structure(label.ndim, label.ndim))
    if n == 0:
        return instance, Boxes.empty(label.ndim, scored=False)
    slices = ndimage.find_objects(instance)
    lo = np.array([[s.start for s in sl] for sl in slices], dtype=np.float64)
    hi = np.array([[s.stop - 1 for s in sl] for sl in slices], dtype=np.float64)
    return instance, Boxes((lo + hi) / 2, lo, hi)


GroundTruth = Callable[[str], Tuple[Boxes, Optional[np.ndarray]]]


def open_ground_truth(ground_truth: str) -> Tuple[List[str], GroundTruth]:
    """``(case ids, load)`` for a label folder or a box CSV; ``load(case)`` gives
    ``(lesion boxes, instance map or None)``, reading label images lazily, one at a time."""
    if os.path.isfile(ground_truth):
        table = read_box_csv(ground_truth, scored=False)
        return list(table), lambda case: (table[case], None)
    if not os.path.isdir(ground_truth):
        raise NNKDError(f"ground truth {ground_truth} is neither a box CSV nor a folder of label images")
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    files, ending = _label_files(ground_truth)
    reader = determine_reader_writer_from_file_ending(ending, verbose=False)()

    def load(case: str) -> Tuple[Boxes, np.ndarray]:
        try:
            seg = reader.read_seg(files[case])[0][0]
        except Exception as e:  # readers raise anything from RuntimeError to ITK errors
            raise NNKDError(f"cannot read label image {files[case]}: {e}") from e
        if seg.ndim == 3 and seg.shape[0] == 1:  # nnU-Net's 2D convention, as in nnkd.detection
            seg = seg[0]
        instance, boxes = label_lesions(seg)
        return boxes, instance

    return list(files), load


def _label_files(folder: str) -> Tuple[Dict[str, str], str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = sorted({e for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}, key=len, reverse=True)
    files, found = {}, set()
    for name in sorted(os.listdir(folder)):
        ending = next((e for e in endings if name.lower().endswith(e)), None)
        if ending and not name.startswith("."):
            files[name[:-len(ending)]] = os.path.join(folder, name)
            found.add(ending)
    if not files:
        raise NNKDError(f"no label images in {folder} (looked for {', '.join(endings)})")
    if len(found) > 1:
        raise NNKDError(f"{folder} mixes label file endings {sorted(found)}; keep one")
    return files, found.pop()


def match_all(detections: Dict[str, Boxes], ground_truth: str, pred_name: str = "detections",
              allow_missing: bool = False) -> Matched:
    """Match every ground-truth case against its detections (case sets must agree; with
    ``allow_missing`` only the ground-truth cases that have a row are evaluated)."""
    cases, load = open_ground_truth(ground_truth)
    if allow_missing:
        cases = [c for c in cases if c in detections]
        if not cases:
            raise NNKDError(f"{pred_name}: no case in common with the ground truth {ground_truth}")
    known = set(cases)
    no_gt = [c for c in detections if c not in known]
    if no_gt:
        raise NNKDError(f"{pred_name}: {len(no_gt)} case(s) have no ground truth in {ground_truth}: "
                        f"{', '.join(no_gt[:10])}{' ...' if len(no_gt) > 10 else ''}")
    no_det = [c for c in cases if c not in detections]
    if no_det:
        raise NNKDError(f"{pred_name}: no row for {len(no_det)} ground-truth case(s): {', '.join(no_det[:10])}"
                        f"{' ...' if len(no_det) > 10 else ''} (nnkd detect writes a row with only the case_id "
                        "for a case without detections)")
    fp_s, fp_c, les_s, les_c = [], [], [], []
    for i, case in enumerate(cases):
        gt, instance = load(case)
        det = detections[case]
        if len(det) and det.ndim != gt.ndim:
            raise NNKDError(f"case {case}: detections have {det.ndim} coordinates, the ground truth {gt.ndim} axes")
        best, is_fp = match_case(det, gt, instance)
        fp_s.append(det.scores[is_fp])
        fp_c.append(np.full(int(is_fp.sum()), i))
        les_s.append(best)
        les_c.append(np.full(len(gt), i))
    return Matched(cases, _cat(fp_s, np.float64), _cat(fp_c, np.int64), _cat(les_s, np.float64),
                   _cat(les_c, np.int64), sum(len(d) for d in detections.values()))


def _cat(parts: list, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def weighted_curves(m: Matched, weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operating points for R case weightings at once (bootstrap resamples = case counts).

    weights: ``(R, N)``; unit weights give the plain FROC. Returns ``(fp_per_case, sensitivity)``
    ``(R, U + 1)`` and the thresholds ``(U + 1,)``: first (0, 0) at threshold inf, then one point per
    distinct score, highest first. Same points as MONAI's ``compute_froc_curve_data`` (checked in
    the tests), which loops over thresholds in Python (too slow for 1000 resamples; importing
    monai also takes seconds); one vectorised path makes the point estimate and its bootstrap
    the same computation.
    """
    hit = np.isfinite(m.lesion_scores)
    scores = np.concatenate([m.fp_scores, m.lesion_scores[hit]])
    cases = np.concatenate([m.fp_case, m.lesion_case[hit]])
    is_fp = np.arange(len(scores)) < len(m.fp_scores)
    order = np.argsort(-scores, kind="stable")
    scores, cases, is_fp = scores[order], cases[order], is_fp[order]
    w = weights[:, cases]  # (R, E)
    fp_cum = np.cumsum(w * is_fp, axis=1)
    tp_cum = np.cumsum(w * ~is_fp, axis=1)
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True)) if len(scores) else np.zeros(0, np.int64)
    n_targets = weights[:, m.lesion_case].sum(1, keepdims=True)
    zeros = np.zeros((len(weights), 1))
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample without lesions: NaN sensitivity
        sens = np.hstack([zeros, tp_cum[:, ends]]) / n_targets
    return np.hstack([zeros, fp_cum[:, ends] / m.n_cases]), sens, np.concatenate([[np.inf], scores[ends]])


def interp_rows(x: np.ndarray, fps: np.ndarray, sens: np.ndarray) -> np.ndarray:
    """``np.interp(x, fps[r], sens[r])`` for every row r at once: ``(R, X)``.

    Rows of ``fps`` are non-decreasing from 0; offsetting row r by ``r * span`` makes the
    flattened array sorted, so one ``searchsorted`` finds every row's segment.
    """
    r, u = fps.shape
    span = max(float(fps.max(initial=0)), float(np.max(x))) + 1.0
    offset = (np.arange(r) * span)[:, None]
    j = np.searchsorted((fps + offset).ravel(), (x[None] + offset).ravel(), side="right").reshape(r, -1)
    j = j - 1 - np.arange(r)[:, None] * u
    j1 = np.minimum(j + 1, u - 1)
    x0, x1 = np.take_along_axis(fps, j, 1), np.take_along_axis(fps, j1, 1)
    y0, y1 = np.take_along_axis(sens, j, 1), np.take_along_axis(sens, j1, 1)
    t = np.where(x1 > x0, (x[None] - x0) / np.where(x1 > x0, x1 - x0, 1.0), 0.0)
    return y0 + t * (y1 - y0)


def froc_report(pred_csv: str, ground_truth: str, out_dir: str, n_bootstrap: int = 1000, seed: int = 0,
                allow_missing: bool = False) -> dict:
    """FROC of ``pred_csv`` against ``ground_truth``; writes ``out_dir/froc.json`` and ``froc.png``.

    Returns the report: sensitivities at 1-4 FP/case, their mean, sensitivity at 2 FP/case (each
    with a 95 % bootstrap CI), case/lesion/detection counts and the curve.
    """
    m = match_all(read_box_csv(pred_csv, scored=True), ground_truth, pred_csv, allow_missing)
    if not len(m.lesion_scores):
        raise NNKDError(f"{ground_truth}: no lesion in any case; sensitivity is undefined")
    rates = np.asarray(FP_RATES)
    fps, sens, thr = weighted_curves(m, np.ones((1, m.n_cases)))
    fps, sens = fps[0], sens[0]
    at = interp_rows(rates, fps[None], sens[None])[0]
    x_max = 5.0 if fps[-1] <= 5 else min(float(fps[-1]), 20.0)
    grid = np.linspace(0.0, x_max, _GRID)

    def statistic(idx: np.ndarray) -> np.ndarray:
        n = m.n_cases
        counts = np.bincount((idx + n * np.arange(len(idx))[:, None]).ravel(), minlength=n * len(idx))
        fps_r, sens_r, _ = weighted_curves(m, counts.reshape(len(idx), n))
        return interp_rows(np.concatenate([rates, grid]), fps_r, sens_r)

    boot = bootstrap(np.zeros(m.n_cases), statistic, n_resamples=n_bootstrap, seed=seed)
    boot_at = boot[:, :len(rates)]
    ci_at = percentile_ci(boot_at)
    mean_ci = percentile_ci(boot_at.mean(1))
    i2 = FP_RATES.index(2.0)
    report = {
        "n_cases": m.n_cases,
        "n_positive_cases": int(len(np.unique(m.lesion_case))),
        "n_lesions": int(len(m.lesion_scores)),
        "n_detections": m.n_detections,
        "fp_rates": list(FP_RATES),
        "sensitivity": at.tolist(),
        "sensitivity_ci95": ci_at.T.tolist(),
        "mean_sensitivity": float(at.mean()),
        "mean_sensitivity_ci95": mean_ci.tolist(),
        "sensitivity_at_2fp": float(at[i2]),
        "sensitivity_at_2fp_ci95": ci_at[:, i2].tolist(),
        "max_fp_per_case": float(fps[-1]),  # FP rates beyond it keep the final sensitivity
        "curve": {"fp_per_case": fps.tolist(), "sensitivity": sens.tolist(),
                  "threshold": [None if not np.isfinite(t) else float(t) for t in thr]},
        "fp_rate_per": "case, over all cases (negatives included)",
        "hit_criterion": "centre inside the lesion, or within half the lesion box diagonal of its centre",
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "pred_csv": os.path.abspath(pred_csv),
        "ground_truth": os.path.abspath(ground_truth),
    }
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "froc.json"), report)
    save_figure(plot_froc(report, grid, percentile_ci(boot[:, len(rates):]), x_max),
                os.path.join(out_dir, "froc.png"), dpi=150, bbox_inches="tight")
    return report


def plot_froc(report: dict, grid: np.ndarray, band: np.ndarray, x_max: float):
    """The FROC curve with its 95 % bootstrap band and the 1-4 FP/case operating points."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    curve = report["curve"]
    ax.fill_between(grid, band[0], band[1], color="C0", alpha=0.2, lw=0, label="95% bootstrap CI")
    ax.plot(curve["fp_per_case"], curve["sensitivity"], color="C0", lw=1.8, label="FROC")
    last_fp, last_sens = curve["fp_per_case"][-1], curve["sensitivity"][-1]
    if last_fp < x_max:  # FP rates the model never reaches get its final sensitivity
        ax.plot([last_fp, x_max], [last_sens, last_sens], "--", color="C0", lw=1, label="held (lowest threshold)")
    ax.plot(report["fp_rates"], report["sensitivity"], "o", color="C1", label="1-4 FP/case")
    for r in report["fp_rates"]:
        ax.axvline(r, color="0.85", lw=0.8, zorder=0)
    lo, hi = report["mean_sensitivity_ci95"]
    ax.set_title(f"mean sensitivity (1-4 FP) {report['mean_sensitivity']:.3f} [{lo:.3f}, {hi:.3f}]\n"
                 f"{report['n_lesions']} lesions, {report['n_cases']} cases", fontsize=10)
    ax.set_xlabel("false positives per case")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(0, x_max)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig
