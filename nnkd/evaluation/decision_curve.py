"""Decision curve analysis: net benefit of treating when a class probability reaches a threshold.

``NB(t) = TP/n - FP/n * t / (1 - t)`` where a case is treated (called positive) when its score
is >= t; treat-all is ``prevalence - (1 - prevalence) * t / (1 - t)``, treat-none is 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_THRESHOLDS = np.round(np.arange(1, 100) / 100.0, 2)  # 0.01 .. 0.99


def net_benefit(scores: np.ndarray, outcome: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit (T,) of the rule ``score >= t`` for each threshold; ``scores``/``outcome`` (N,)."""
    scores = np.asarray(scores, dtype=np.float64)
    outcome = np.asarray(outcome, dtype=bool)
    t = np.asarray(thresholds, dtype=np.float64)
    n = len(scores)
    # count scores >= t by binary search on the sorted scores: O((N + T) log N) instead of an (T, N) grid
    pos, neg = np.sort(scores[outcome]), np.sort(scores[~outcome])
    tp = len(pos) - np.searchsorted(pos, t, side="left")
    fp = len(neg) - np.searchsorted(neg, t, side="left")
    return tp / n - fp / n * t / (1.0 - t)


def treat_all(outcome: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit (T,) of treating every case."""
    prevalence = float(np.mean(np.asarray(outcome, dtype=bool)))
    t = np.asarray(thresholds, dtype=np.float64)
    return prevalence - (1.0 - prevalence) * t / (1.0 - t)


def decision_curve(probs: np.ndarray, y: np.ndarray, class_names: Sequence[str],
                   classes: Sequence[int] | None = None, thresholds: np.ndarray | None = None) -> dict:
    """One-vs-rest decision curves for ``classes`` (default all) and their mean ("macro").

    ``probs`` (N, K), ``y`` (N,) class indices. Returns ``thresholds`` (T,), ``per_class``
    {name: {"model": (T,), "treat_all": (T,)}} and ``macro`` with the same two curves averaged over
    the classes; treat-none is 0 everywhere and not stored.
    """
    t = DEFAULT_THRESHOLDS if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if np.any((t <= 0) | (t >= 1)):
        raise ValueError("decision-curve thresholds must lie strictly between 0 and 1")
    classes = range(probs.shape[1]) if classes is None else classes
    per_class = {class_names[k]: {"model": net_benefit(probs[:, k], y == k, t), "treat_all": treat_all(y == k, t)}
                 for k in classes}
    macro = {key: np.mean([c[key] for c in per_class.values()], axis=0) for key in ("model", "treat_all")}
    return {"thresholds": t, "per_class": per_class, "macro": macro}
