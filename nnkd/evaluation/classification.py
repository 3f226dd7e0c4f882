"""Case-level classification metrics with bootstrap confidence intervals.

AUC follows the usual conventions: with K = 2 classes the second class is positive and one AUC
is reported; with K > 2 each class is scored one-vs-rest and the macro AUC is their unweighted
mean. 95 % intervals are percentile intervals over stratified bootstrap resamples.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

from nnkd.errors import NNKDError
from nnkd.evaluation.bootstrap import bootstrap, percentile_ci
from nnkd.evaluation.calibration import brier_score, reliability
from nnkd.evaluation.decision_curve import decision_curve
from nnkd.evaluation.jsonable import jsonable
from nnkd.evaluation.predictions import Predictions, align


def scored_classes(num_classes: int) -> list[int]:
    """Classes that get an AUC: the positive (second) class for K = 2, every class otherwise."""
    return [1] if num_classes == 2 else list(range(num_classes))


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUC over the last axis as the Mann-Whitney statistic (ties count 1/2).

    ``scores`` (..., N), ``positive`` bool broadcastable to it. Returns (...) AUCs; NaN where a
    row has no positive or no negative case. Vectorised over leading axes (bootstrap resamples).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.broadcast_to(np.asarray(positive, dtype=bool), scores.shape)
    ranks = rankdata(scores, axis=-1)
    n_pos = positive.sum(axis=-1).astype(np.float64)
    n_neg = scores.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def ovr_auc(probs: np.ndarray, y: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """Per scored class one-vs-rest AUC: (C,) or, for resample indices ``idx`` (R, N), (R, C)."""
    classes = scored_classes(probs.shape[1])
    if idx is None:
        return rank_auc(probs[:, classes].T, y[None, :] == np.array(classes)[:, None])
    scores = probs[idx][..., classes]                                 # (R, N, C)
    positive = y[idx][..., None] == np.array(classes)                 # (R, N, C)
    return rank_auc(np.moveaxis(scores, -1, 1), np.moveaxis(positive, -1, 1))  # (R, C)


def macro_auc(probs: np.ndarray, y: np.ndarray) -> float:
    """The reported AUC without interval: the positive class's for K = 2, else the mean one-vs-rest AUC
    over the classes present in ``y``; NaN when ``y`` holds fewer than two classes."""
    point = ovr_auc(np.asarray(probs), np.asarray(y))
    return float(np.nanmean(point)) if np.any(np.isfinite(point)) else float("nan")


def auc_with_ci(probs: np.ndarray, y: np.ndarray, class_names: Sequence[str], n_bootstrap: int = 1000,
                seed: int = 0, level: float = 0.95) -> dict:
    """Macro (or binary) AUC and per-class AUCs, each with a stratified-bootstrap percentile CI."""
    classes = scored_classes(probs.shape[1])
    point = ovr_auc(probs, y)
    with warnings.catch_warnings():  # an absent class gives an all-NaN column: its AUC is reported as null
        warnings.simplefilter("ignore", RuntimeWarning)
        samples = bootstrap(y, lambda idx: ovr_auc(probs, y, idx), n_bootstrap, seed)   # (R, C)
        macro_samples = np.nanmean(samples, axis=1)
        ci = percentile_ci(samples, level)
        macro_ci = percentile_ci(macro_samples, level)
        macro = macro_auc(probs, y)
    return {
        "value": macro,
        "ci95": macro_ci,
        "per_class": {class_names[k]: {"value": point[i], "ci95": ci[:, i]} for i, k in enumerate(classes)},
    }


def roc_curves(probs: np.ndarray, y: np.ndarray, class_names: Sequence[str]) -> dict:
    """ROC points per scored class ({name: {"fpr", "tpr"}}) and, for K > 2, their vertical macro
    average on the union of all FPR values ("macro")."""
    curves = {}
    for k in scored_classes(probs.shape[1]):
        if 0 < np.sum(y == k) < len(y):
            fpr, tpr, _ = skm.roc_curve(y == k, probs[:, k])
            curves[class_names[k]] = {"fpr": fpr, "tpr": tpr}
    if len(curves) > 1:
        grid = np.unique(np.concatenate([c["fpr"] for c in curves.values()]))
        tpr = np.mean([np.interp(grid, c["fpr"], c["tpr"]) for c in curves.values()], axis=0)
        curves["macro"] = {"fpr": grid, "tpr": tpr}
    return curves


def point_metrics(probs: np.ndarray, y: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support and the
    confusion matrix (rows true, columns predicted) for the arg-max decision."""
    labels = list(range(len(class_names)))
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():  # classes absent from y or never predicted: sklearn warns, scores 0
        warnings.simplefilter("ignore")
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            y, pred, labels=labels, zero_division=0)
        balanced = skm.balanced_accuracy_score(y, pred)
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": balanced,
        "macro_f1": float(np.mean(f1)),
        "per_class": {name: {"precision": precision[k], "recall": recall[k], "f1": f1[k], "support": support[k]}
                      for k, name in enumerate(class_names)},
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels),
    }


def evaluate_arrays(probs: np.ndarray, y: np.ndarray, class_names: Sequence[str], *, n_bootstrap: int = 1000,
                    seed: int = 0, n_bins: int = 10, thresholds: np.ndarray | None = None,
                    source: str = "predictions", single_class_ok: bool = False) -> dict:
    """All metrics for ``probs`` (N, K) and true class indices ``y`` (N,); see :func:`evaluate`.

    Labels of a single class raise :class:`NNKDError` (no AUC exists), unless ``single_class_ok``
    (a training fold's small validation split): then AUC and ROC are null/empty and ``note`` says why.
    """
    class_names = list(class_names)
    present = np.unique(y)
    single = len(present) < 2
    if single:
        why = f"every labelled case is class {class_names[present[0]]!r}; AUC needs cases of at least two classes"
        if not single_class_ok:
            raise NNKDError(f"{source}: {why}")
    binary = len(class_names) == 2
    result = {
        "n_cases": len(y),
        "class_names": class_names,
        "class_counts": {name: int(np.sum(y == k)) for k, name in enumerate(class_names)},
        "task": "binary" if binary else "multiclass",
        "positive_class": class_names[1] if binary else None,
        "auc": ({"value": None, "ci95": None, "per_class": {}} if single
                else auc_with_ci(probs, y, class_names, n_bootstrap, seed)),
        **point_metrics(probs, y, class_names),
        "brier": brier_score(probs, y),
        "calibration": reliability(probs, y, n_bins),
        "decision_curve": decision_curve(probs, y, class_names, scored_classes(len(class_names)), thresholds),
        "roc": roc_curves(probs, y, class_names),
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "stratified": True, "ci": "percentile 95%"},
    }
    if single:
        result["note"] = why
    return jsonable(result)


def evaluate(pred: Predictions, labels: Mapping[str, str], class_names: Sequence[str] | None = None, *,
             allow_missing: bool = False, **kwargs) -> dict:
    """Evaluate one prediction set against ``labels`` {case_id: class name}.

    ``class_names`` (default: the prediction file's) fixes the class order; keyword arguments are
    those of :func:`evaluate_arrays` (``n_bootstrap``, ``seed``, ``n_bins``, ``thresholds``).
    Returns a JSON-serialisable dict: counts, ``auc`` {value, ci95, per_class}, accuracy,
    balanced_accuracy, macro_f1, per_class, confusion_matrix, brier, calibration (ece + bins),
    decision_curve, roc (curve points) and the bootstrap settings. Undefined values are null.
    """
    class_names = list(pred.class_names if class_names is None else class_names)
    case_ids, probs, y = align(pred, labels, class_names, allow_missing)
    result = evaluate_arrays(probs, y, class_names, source=pred.source, **kwargs)
    result["source"] = pred.source
    missing = len(pred.case_ids) - len(case_ids), len(set(labels) - set(case_ids))
    if any(missing):
        result["excluded"] = {"predicted_without_label": missing[0], "labelled_without_prediction": missing[1]}
    return result
