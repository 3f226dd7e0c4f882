"""Robustness across levels: the same metrics for one model under several conditions (simulated
dose levels, removed modalities), one row per level.

All levels are evaluated with the same bootstrap seed; on identical cases they therefore share
their resamples, so differences between levels are not blurred by resampling noise.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from nnkd.evaluation.classification import evaluate
from nnkd.evaluation.predictions import Predictions

LEVEL_COLUMNS = ("level", "n_cases", "auc", "auc_ci_low", "auc_ci_high", "accuracy", "balanced_accuracy",
                 "macro_f1", "ece", "brier")


def level_row(name: str, result: dict) -> dict:
    """One flat table row (keys LEVEL_COLUMNS + ``auc_<class>`` per scored class) from an
    :func:`nnkd.evaluation.classification.evaluate` result."""
    low, high = result["auc"]["ci95"]
    row = {"level": name, "n_cases": result["n_cases"], "auc": result["auc"]["value"], "auc_ci_low": low,
           "auc_ci_high": high, "accuracy": result["accuracy"], "balanced_accuracy": result["balanced_accuracy"],
           "macro_f1": result["macro_f1"], "ece": result["calibration"]["ece"], "brier": result["brier"]}
    if len(result["auc"]["per_class"]) > 1:
        row.update({f"auc_{c}": v["value"] for c, v in result["auc"]["per_class"].items()})
    return row


def levels_table(results: Mapping[str, dict]) -> dict:
    """{level: evaluate() result} -> {"class_names", "bootstrap", "levels": [row, ...]} in input order."""
    first = next(iter(results.values()))
    return {"class_names": first["class_names"], "bootstrap": first["bootstrap"],
            "levels": [level_row(name, r) for name, r in results.items()]}


def evaluate_levels(preds: Mapping[str, Predictions], labels: Mapping[str, str],
                    class_names: Sequence[str] | None = None, **kwargs) -> dict:
    """Evaluate each {level name: Predictions} against ``labels``; keyword arguments go to
    :func:`~nnkd.evaluation.classification.evaluate`. Returns :func:`levels_table`'s dict."""
    if not preds:
        raise ValueError("evaluate_levels needs at least one level")
    return levels_table({name: evaluate(p, labels, class_names, **kwargs) for name, p in preds.items()})
