"""Ensembling classification predictions of several models: the mean of their class probabilities,
case by case (what ``nnkd predict`` does across folds, here across trainers or configurations)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nnkd.errors import NNKDError
from nnkd.evaluation.predictions import Predictions


def average_predictions(preds: Sequence[Predictions], source: str = "ensemble") -> Predictions:
    """The case-wise mean of ``preds``' probabilities, in the first one's case and class order.

    Every input must predict the same cases and classes; NNKDError naming the files otherwise.
    Labels are kept where the inputs give one and do not contradict each other.
    """
    if len(preds) < 2:
        raise NNKDError(f"an ensemble needs at least two prediction sets, got {len(preds)}")
    first = preds[0]
    problems = []
    for p in preds[1:]:
        if sorted(p.class_names) != sorted(first.class_names):
            problems.append(f"{p.source} has classes {p.class_names}, {first.source} has {first.class_names}")
        only_here, only_first = sorted(set(p.case_ids) - set(first.case_ids)), sorted(set(first.case_ids) - set(p.case_ids))
        if only_here or only_first:
            problems.append(f"{p.source} and {first.source} predict different cases (only in the first: "
                            f"{', '.join(only_first[:10]) or '-'}; only in the second: {', '.join(only_here[:10]) or '-'})")
    if problems:
        raise NNKDError("cannot ensemble these predictions:\n" + "\n".join(f"  - {p}" for p in problems))
    total = np.zeros_like(first.probs)
    labels = list(first.labels)
    for p in preds:
        row = {c: i for i, c in enumerate(p.case_ids)}
        order = [row[c] for c in first.case_ids]
        total += p.probs[np.ix_(order, [p.class_names.index(c) for c in first.class_names])]
        for i, j in enumerate(order):
            if p.labels[j] is not None and labels[i] is not None and p.labels[j] != labels[i]:
                raise NNKDError(f"case {first.case_ids[i]}: label {labels[i]!r} in {first.source}, "
                                f"{p.labels[j]!r} in {p.source}")
            labels[i] = labels[i] if labels[i] is not None else p.labels[j]
    return Predictions(list(first.case_ids), total / len(preds), list(first.class_names), labels, source=source)
