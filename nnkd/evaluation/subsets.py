"""Robustness per channel subset: the levels report (:mod:`nnkd.evaluation.levels`) with one level per
set of input channels a model predicted with (``channels`` column of ``nnkd predict``'s CSV, e.g. ``CT``
or ``CT+FDG``), ordered from the most channels to the fewest.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np

from nnkd.errors import NNKDError
from nnkd.evaluation.predictions import Predictions, read_prediction_csv
from nnkd.io import read_csv_rows

CHANNELS_COLUMN = "channels"


def read_subsets(paths: Sequence[str]) -> Dict[str, Predictions]:
    """{subset: Predictions} from prediction CSVs carrying a ``channels`` column (one file may hold several
    subsets, several files one each). Refuses, listing every problem, files without the column and a case
    predicted twice with the same subset."""
    problems: List[str] = []
    rows: Dict[str, list] = {}  # subset -> [(case, probs, label, source)]
    class_names = None
    for path in paths:
        pred = read_prediction_csv(path)
        if class_names is not None and pred.class_names != class_names:
            problems.append(f"{path} has classes {pred.class_names}, {paths[0]} has {class_names}: subsets must "
                            f"come from the same model")
            continue
        class_names = pred.class_names
        table = read_csv_rows(path, "prediction file")
        header = [h.strip() for h in table[0]]
        if CHANNELS_COLUMN not in header:
            problems.append(f"{path}: no '{CHANNELS_COLUMN}' column (written by nnkd predict); cannot tell its "
                            f"channel subset")
            continue
        col, id_col = header.index(CHANNELS_COLUMN), header.index("case_id")
        subset_of = {r[id_col].strip(): r[col].strip() for r in table[1:] if any(c.strip() for c in r)}
        for i, case in enumerate(pred.case_ids):
            subset = subset_of[case]
            if not subset:
                problems.append(f"{path} (case {case}): empty '{CHANNELS_COLUMN}'")
                continue
            rows.setdefault(subset, []).append((case, pred.probs[i], pred.labels[i], path))
    for subset, items in rows.items():
        seen: Dict[str, str] = {}
        for case, _, _, path in items:
            if case in seen:
                problems.append(f"case {case} is predicted twice with channels {subset} ({seen[case]}, {path})")
            seen[case] = path
    if problems:
        raise NNKDError("\n".join([f"{len(problems)} problem(s) in the subset predictions:", *problems]))
    order = sorted(rows, key=lambda s: (-len(s.split("+")), list(rows).index(s)))
    return {s: Predictions([r[0] for r in rows[s]], np.stack([r[1] for r in rows[s]]), list(class_names),
                           [r[2] for r in rows[s]], source=", ".join(dict.fromkeys(r[3] for r in rows[s])))
            for s in order}


def add_auc_drop(table: dict) -> dict:
    """Each row gains ``auc_drop``: the first (most complete) subset's AUC minus this subset's."""
    ref = table["levels"][0]["auc"]
    for row in table["levels"]:
        row["auc_drop"] = None if ref is None or row["auc"] is None else ref - row["auc"]
    return table


def markdown_table(table: dict) -> str:
    """The subsets table as Markdown (subset, n, AUC [95% CI], AUC drop, accuracy, balanced accuracy, and
    Dice [95% CI] when the rows have it)."""
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    has_dice = "dice" in table["levels"][0]
    lines = ["| channels | n | AUC [95% CI] | AUC drop | accuracy | balanced accuracy |"
             + (" Dice [95% CI] |" if has_dice else ""), "|---|---|---|---|---|---|" + ("---|" if has_dice else "")]
    for r in table["levels"]:
        lines.append(f"| {r['level']} | {r['n_cases']} | {f(r['auc'])} [{f(r['auc_ci_low'])}, {f(r['auc_ci_high'])}] "
                     f"| {f(r.get('auc_drop'))} | {f(r['accuracy'])} | {f(r['balanced_accuracy'])} |"
                     + (f" {f(r['dice'])} [{f(r['dice_ci_low'])}, {f(r['dice_ci_high'])}] |" if has_dice else ""))
    return "\n".join(lines)


def write_subsets_report(out_dir: str, table: dict) -> List[str]:
    """``out_dir``/subsets.json, subsets.csv (first column ``channels``) and subsets.png; returns the paths."""
    from nnkd.evaluation.report import write_levels_report

    return write_levels_report(out_dir, table, stem="subsets", level="channels")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground (label > 0) Dice of two label arrays; NaN when both are empty (no lesion to find)."""
    a, b = pred > 0, truth > 0
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _label_file(folder: str, case: str) -> str | None:
    for name in sorted(os.listdir(folder)):
        if name.startswith(case + ".") and not name.endswith((".npz", ".pkl", ".json", ".csv")):
            return os.path.join(folder, name)
    return None


def subset_dice(preds: Dict[str, Predictions], masks: str, n_bootstrap: int = 1000, seed: int = 0) -> Dict[str, dict]:
    """{subset: {"dice", "dice_ci_low", "dice_ci_high", "n_dice"}}: mean foreground Dice over the cases whose
    segmentation (next to the subset's CSV, ``CASE<ending>``) and ground truth (``masks``/``CASE<ending>``)
    exist, with a percentile bootstrap 95 % CI of the mean; cases without a lesion in either are left out.
    Refuses, listing every case, segmentations whose shape differs from the mask's."""
    import SimpleITK as sitk

    if not os.path.isdir(masks):
        raise NNKDError(f"--masks {masks}: not a folder")
    out, problems = {}, []
    for subset, pred in preds.items():
        values = []
        for case in pred.case_ids:
            truth = _label_file(masks, case)
            seg = None
            for source in pred.source.split(", "):
                seg = seg or _label_file(os.path.dirname(os.path.abspath(source)), case)
            if truth is None or seg is None:
                continue
            a, b = sitk.GetArrayFromImage(sitk.ReadImage(seg)), sitk.GetArrayFromImage(sitk.ReadImage(truth))
            if a.shape != b.shape:
                problems.append(f"channels {subset}, case {case}: segmentation {seg} has shape {a.shape}, mask "
                                f"{truth} {b.shape}")
                continue
            values.append(dice(a, b))
        v = np.array([x for x in values if not np.isnan(x)])
        if not len(v):
            out[subset] = {"dice": None, "dice_ci_low": None, "dice_ci_high": None, "n_dice": 0}
            continue
        rng = np.random.default_rng(seed)
        means = v[rng.integers(0, len(v), (n_bootstrap, len(v)))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        out[subset] = {"dice": float(v.mean()), "dice_ci_low": float(low), "dice_ci_high": float(high),
                       "n_dice": int(len(v))}
    if problems:
        raise NNKDError("\n".join([f"{len(problems)} segmentation(s) do not fit their mask:", *problems]))
    return out
