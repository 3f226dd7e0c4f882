"""Paired comparison of two models' AUCs on the same cases: DeLong's test per scored class and a
paired stratified-bootstrap CI of the AUC difference (binary AUC, or the macro AUC for K > 2); and the
same difference averaged over training seeds (:func:`compare_over_seeds`)."""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from nnkd.errors import NNKDError
from nnkd.evaluation.bootstrap import bootstrap, percentile_ci, seeds_and_cases
from nnkd.evaluation.classification import ovr_auc, scored_classes
from nnkd.evaluation.delong import delong_test
from nnkd.evaluation.jsonable import jsonable
from nnkd.evaluation.predictions import Predictions, align, align_all


def compare_arrays(probs_a: np.ndarray, probs_b: np.ndarray, y: np.ndarray, class_names: Sequence[str], *,
                   n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Compare ``probs_a`` and ``probs_b`` (N, K) for true class indices ``y`` (N,).

    Returns auc_a, auc_b, difference {value, ci95} (A - B; the binary or macro AUC),
    per_class {name: DeLong auc_a, auc_b, difference, se, z, p, and the bootstrap ci95}, and, for a
    binary task, the DeLong ``z`` / ``p`` of the single AUC at top level.
    """
    classes = scored_classes(len(class_names))
    per_class = {}
    for k in classes:
        if 0 < np.sum(y == k) < len(y):
            per_class[class_names[k]] = delong_test(y == k, probs_a[:, k], probs_b[:, k]).to_dict()
        else:
            per_class[class_names[k]] = {"auc_a": None, "auc_b": None, "difference": None, "se": None,
                                         "z": None, "p": None}

    def diff(idx: np.ndarray) -> np.ndarray:  # (R, C + 1): per-class differences, then the macro one
        d = ovr_auc(probs_a, y, idx) - ovr_auc(probs_b, y, idx)
        return np.concatenate([d, np.nanmean(d, axis=1, keepdims=True)], axis=1)

    with warnings.catch_warnings():  # classes absent from y: all-NaN columns reported as null
        warnings.simplefilter("ignore", RuntimeWarning)
        samples = bootstrap(y, diff, n_bootstrap, seed)
        ci = percentile_ci(samples, level)
        point_a, point_b = ovr_auc(probs_a, y), ovr_auc(probs_b, y)
        auc_a, auc_b = float(np.nanmean(point_a)), float(np.nanmean(point_b))
    for i, k in enumerate(classes):
        per_class[class_names[k]]["ci95"] = ci[:, i]
    result = {
        "n_cases": len(y),
        "class_names": list(class_names),
        "task": "binary" if len(class_names) == 2 else "multiclass",
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": {"value": auc_a - auc_b, "ci95": ci[:, -1]},
        "per_class": per_class,
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "stratified": True, "paired": True,
                      "ci": "percentile 95%"},
    }
    if len(classes) == 1:
        only = per_class[class_names[classes[0]]]
        result["delong"] = {"z": only["z"], "p": only["p"], "se": only["se"]}
    return jsonable(result)


def compare(a: Predictions, b: Predictions, labels: Mapping[str, str], class_names: Sequence[str] | None = None,
            *, allow_missing: bool = False, names: Sequence[str] = ("A", "B"), **kwargs) -> dict:
    """Compare two prediction sets on the cases they share with ``labels``; both must cover the same
    cases (after ``allow_missing`` drops unlabelled ones). Keyword arguments go to :func:`compare_arrays`."""
    class_names = list(a.class_names if class_names is None else class_names)
    ids_a, probs_a, y = align(a, labels, class_names, allow_missing)
    ids_b, probs_b, _ = align(b, labels, class_names, allow_missing)
    if set(ids_a) != set(ids_b):
        only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
        raise NNKDError(f"{a.source} and {b.source} must predict the same cases: only in the first: "
                        f"{', '.join(only_a[:10]) or '-'}; only in the second: {', '.join(only_b[:10]) or '-'}")
    row = {c: i for i, c in enumerate(ids_b)}
    probs_b = probs_b[[row[c] for c in ids_a]]
    result = compare_arrays(probs_a, probs_b, y, class_names, **kwargs)
    result["names"] = list(names)
    result["sources"] = [a.source, b.source]
    return result


def compare_over_seeds(pairs: Sequence[tuple], labels: Mapping[str, str], class_names: Sequence[str] | None = None,
                       *, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """A minus B averaged over training seeds on one test set: ``pairs`` holds one (Predictions A,
    Predictions B) per seed, all on the same cases. The point value is the mean over seeds of the macro-AUC
    differences; the interval resamples the cases (stratified, the same for every seed) and the seeds
    (:func:`nnkd.evaluation.bootstrap.seeds_and_cases`)."""
    class_names = list(pairs[0][0].class_names if class_names is None else class_names)
    probs, y = align_all([p for pair in pairs for p in pair], labels, class_names)
    arrays = list(zip(probs[0::2], probs[1::2]))

    def statistic(pa, pb):
        return lambda idx: np.nanmean(ovr_auc(pa, y, idx) - ovr_auc(pb, y, idx), axis=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_seed = [float(np.nanmean(ovr_auc(pa, y) - ovr_auc(pb, y))) for pa, pb in arrays]
        samples = seeds_and_cases(y, [statistic(pa, pb) for pa, pb in arrays], n_bootstrap, seed)
        ci = percentile_ci(samples, level)
    return jsonable({"difference": float(np.mean(per_seed)), "ci95": ci, "per_seed": per_seed,
                     "n_seeds": len(arrays), "n_cases": len(y),
                     "p_not_better": float(np.mean(samples <= 0)),
                     "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "levels": "cases (stratified) and seeds",
                                   "ci": f"percentile {100 * level:.0f}%"}})
