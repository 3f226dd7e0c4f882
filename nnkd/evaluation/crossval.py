"""Classification in nnU-Net's k-fold workflow: out-of-fold results and the choice of a model.

Training fold k of a model writes ``fold_k/validation/classification.csv``: the classes predicted for
the fold's validation cases, with their true labels. Over the five folds every training case is
predicted once by a model that did not train on it. :func:`gather` pools these files into one
out-of-fold prediction set; :func:`crossval_report` evaluates it (AUC with a bootstrap CI, decision
curve, calibration, ... as ``nnkd evaluate``) and adds per-fold AUCs with their mean and standard
deviation. :func:`compare_models` ranks several trainers or configurations (and, as
``nnUNetv2_find_best_configuration`` does for segmentation, the ensembles of each pair) by their
out-of-fold AUC on the cases they share and compares each with the best by DeLong's test and a
paired bootstrap: the recommendation for classification.
"""
from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnkd.errors import NNKDError
from nnkd.evaluation.classification import auc_with_ci, evaluate, ovr_auc, point_metrics
from nnkd.evaluation.comparison import compare_arrays
from nnkd.evaluation.ensemble import average_predictions
from nnkd.evaluation.jsonable import jsonable
from nnkd.evaluation.predictions import Predictions, read_prediction_csv

DEFAULT_FOLDS = (0, 1, 2, 3, 4)  # nnU-Net's 5-fold cross-validation
VALIDATION_CSV = os.path.join("validation", "classification.csv")


@dataclass
class OutOfFold:
    """A model's pooled validation predictions. ``fold_of`` maps each case to its fold."""

    name: str
    folder: str
    folds: List[int]  # the folds gathered
    missing: List[str]  # validation files of requested folds that do not exist (skipped)
    predictions: Predictions
    fold_of: Dict[str, int] = field(default_factory=dict)


def model_folder(results_root: str, dataset_name: str, trainer: str, plans: str, configuration: str) -> str:
    """``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>`` (nnU-Net's layout)."""
    return os.path.join(results_root, dataset_name, f"{trainer}__{plans}__{configuration}")


def gather(folder: str, folds: Sequence[int] = DEFAULT_FOLDS, allow_missing: bool = False,
           name: Optional[str] = None) -> OutOfFold:
    """Pool ``folder/fold_k/validation/classification.csv`` over ``folds``.

    Refuses (NNKDError listing every problem): a missing model folder; missing validation files
    (named; with ``allow_missing`` they are skipped and listed in ``missing``, but at least one fold
    must be there); unreadable files; folds with different classes; a case in two folds; cases
    without a true label.
    """
    name = name or os.path.basename(os.path.normpath(folder))
    if not os.path.isdir(folder):
        raise NNKDError(f"model folder not found: {folder}")
    paths = {k: os.path.join(folder, f"fold_{k}", VALIDATION_CSV) for k in folds}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing and (not allow_missing or len(missing) == len(paths)):
        hint = "" if allow_missing else "; train them (nnUNetv2_train ... FOLD -tr ...) or use --allow-missing to skip them"
        raise NNKDError(f"{name}: {len(missing)} of {len(paths)} fold(s) have no validation classification file"
                        f"{hint}:\n" + "\n".join(f"  - {p}" for p in missing))
    problems: List[str] = []
    read: Dict[int, Predictions] = {}
    for k, path in paths.items():
        if path in missing:
            continue
        try:
            read[k] = read_prediction_csv(path)
        except NNKDError as e:
            problems.append(str(e))
    if problems:
        raise NNKDError(f"{name}: unreadable validation files:\n" + "\n".join(f"  - {p}" for p in problems))
    first = next(iter(read.values()))
    fold_of: Dict[str, int] = {}
    for k, pred in read.items():
        if pred.class_names != first.class_names:
            problems.append(f"{pred.source} has classes {pred.class_names}, {first.source} has {first.class_names}")
        unlabelled = [c for c, lab in zip(pred.case_ids, pred.labels) if lab is None]
        if unlabelled:
            problems.append(f"{pred.source}: {len(unlabelled)} case(s) without a label: {', '.join(unlabelled[:10])}")
        for c in pred.case_ids:
            if c in fold_of:
                problems.append(f"case {c} is a validation case of fold_{fold_of[c]} and fold_{k}: the folds do not "
                                f"come from one split (splits_final.json changed between trainings?)")
            fold_of.setdefault(c, k)
    if problems:
        raise NNKDError(f"{name}: cannot pool the folds:\n" + "\n".join(f"  - {p}" for p in problems))
    pooled = Predictions([c for p in read.values() for c in p.case_ids],
                         np.concatenate([p.probs for p in read.values()]), list(first.class_names),
                         [lab for p in read.values() for lab in p.labels], source=f"{folder} (out-of-fold)")
    # sorted case order, as compare_models uses: the same cases then get the same bootstrap resamples
    pooled = _restrict(pooled, set(pooled.case_ids), pooled.class_names)
    return OutOfFold(name, folder, sorted(read), missing, pooled, fold_of)


def _fold_row(k: int, probs: np.ndarray, y: np.ndarray, class_names: Sequence[str]) -> dict:
    with warnings.catch_warnings():  # a fold without some class: its AUC is null
        warnings.simplefilter("ignore", RuntimeWarning)
        auc = float(np.nanmean(ovr_auc(probs, y))) if len(np.unique(y)) > 1 else None
    points = point_metrics(probs, y, class_names)
    return {"fold": k, "n_cases": int(len(y)), "auc": auc, "accuracy": float(points["accuracy"]),
            "balanced_accuracy": float(points["balanced_accuracy"])}


def crossval_report(oof: OutOfFold, n_bootstrap: int = 1000, seed: int = 0, n_bins: int = 10) -> dict:
    """Metrics of the pooled out-of-fold predictions (``pooled``: :func:`evaluate`'s dict) and per
    fold (``per_fold`` rows; ``fold_auc`` mean and sample standard deviation over the folds whose
    AUC is defined)."""
    pred = oof.predictions
    labels = pred.labels_dict()
    pooled = evaluate(pred, labels, n_bootstrap=n_bootstrap, seed=seed, n_bins=n_bins)
    y = np.array([pred.class_names.index(lab) for lab in pred.labels])
    folds = np.array([oof.fold_of[c] for c in pred.case_ids])
    rows = [_fold_row(k, pred.probs[folds == k], y[folds == k], pred.class_names) for k in oof.folds]
    aucs = [r["auc"] for r in rows if r["auc"] is not None]
    return jsonable({
        "model": oof.name, "folder": oof.folder, "folds": oof.folds, "missing": oof.missing,
        "n_cases": len(pred.case_ids), "auc": pooled["auc"],
        "fold_auc": {"mean": float(np.mean(aucs)) if aucs else None,
                     "sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None, "n_folds": len(aucs)},
        "per_fold": rows, "pooled": pooled,
    })


def compare_models(oofs: Sequence[OutOfFold], ensembles: bool = True, n_bootstrap: int = 1000,
                   seed: int = 0) -> dict:
    """Rank models (and, with ``ensembles``, the mean-probability ensemble of each pair) by the AUC
    of their out-of-fold predictions on the cases all of them predict, and compare each with the
    best (DeLong, paired bootstrap CI of the difference). Returns ``ranking`` (best first),
    ``recommended`` and the number of shared cases."""
    if len(oofs) < 2:
        raise NNKDError("comparing needs at least two models")
    names = [o.name for o in oofs]
    if len(set(names)) != len(names):
        raise NNKDError(f"model names are not unique: {names}")
    first = oofs[0].predictions
    for o in oofs[1:]:
        if sorted(o.predictions.class_names) != sorted(first.class_names):
            raise NNKDError(f"{o.name} predicts classes {o.predictions.class_names}, {oofs[0].name} "
                            f"{first.class_names}: models of different tasks")
    shared = set(first.case_ids).intersection(*(o.predictions.case_ids for o in oofs[1:]))
    if not shared:
        raise NNKDError("the models share no out-of-fold case: " + ", ".join(names))
    candidates = {o.name: _restrict(o.predictions, shared, first.class_names) for o in oofs}
    if ensembles:
        for a, b in itertools.combinations(names, 2):
            candidates[f"ensemble({a} + {b})"] = average_predictions([candidates[a], candidates[b]],
                                                                     source=f"ensemble of {a} and {b}")
    base = candidates[names[0]]
    labels = base.labels_dict()
    for name, p in candidates.items():
        other = p.labels_dict()
        clash = [c for c in shared if other.get(c) != labels.get(c)]
        if clash:
            raise NNKDError(f"{name} and {names[0]} disagree on the true label of {len(clash)} case(s): "
                            f"{', '.join(sorted(clash)[:10])}")
    y = np.array([base.class_names.index(labels[c]) for c in base.case_ids])
    if len(np.unique(y)) < 2:
        raise NNKDError(f"the {len(y)} shared cases are all of one class: no AUC to compare")
    probs = {name: p.probs for name, p in candidates.items()}
    aucs = {name: auc_with_ci(pr, y, base.class_names, n_bootstrap, seed) for name, pr in probs.items()}
    order = sorted(probs, key=lambda n: -aucs[n]["value"])  # stable: ties keep the input order
    best = order[0]
    ranking = []
    for name in order:
        row = {"model": name, "auc": aucs[name]["value"], "auc_ci95": aucs[name]["ci95"],
               "ensemble": name not in names}
        if name != best:
            c = compare_arrays(probs[best], probs[name], y, base.class_names, n_bootstrap=n_bootstrap, seed=seed)
            row["vs_best"] = {"difference": c["difference"]["value"], "ci95": c["difference"]["ci95"],
                              "delong_p": c.get("delong", {}).get("p"),
                              "per_class_p": {k: v["p"] for k, v in c["per_class"].items()}}
        ranking.append(row)
    runner = dict(ranking[1]["vs_best"], model=ranking[1]["model"]) if len(ranking) > 1 else None
    return jsonable({
        "n_cases": len(y), "class_names": base.class_names, "models": names, "ensembles": ensembles,
        "excluded_cases": {o.name: len(o.predictions.case_ids) - len(shared) for o in oofs},
        "ranking": ranking, "recommended": best,
        "note": _note(best, ranking[0]["auc"], runner, len(y)),
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "stratified": True, "paired": True},
    })


def _note(best: str, auc: float, runner: Optional[dict], n: int) -> str:
    text = f"{best}: highest out-of-fold AUC ({auc:.3f}) on {n} shared cases"
    if runner is None:
        return text
    low, high = runner["ci95"]
    p = runner["delong_p"]
    text += (f"; ahead of {runner['model']} by {runner['difference']:.3f} [95% CI {low:.3f}, {high:.3f}]"
             + (f", DeLong p = {p:.3g}" if p is not None else ""))
    if low is not None and low > 0:
        return text
    return text + ": not distinguishable on these cases" + (
        "; the simpler of the two serves as well" if best.startswith("ensemble(") or
        runner["model"].startswith("ensemble(") else "")


def _restrict(pred: Predictions, cases: set, class_names: Sequence[str]) -> Predictions:
    """``pred`` on ``cases`` only, in sorted case order and ``class_names`` column order."""
    row = {c: i for i, c in enumerate(pred.case_ids)}
    ids = sorted(cases)
    idx = [row[c] for c in ids]
    cols = [pred.class_names.index(c) for c in class_names]
    return Predictions(ids, pred.probs[np.ix_(idx, cols)], list(class_names), [pred.labels[i] for i in idx],
                       source=pred.source)
