"""Two optional parts of ``nnkd bench quality`` on the paired benchmark (``--subsets``, ``--seg-kd``).

**Robustness per channel subset** (``--subsets``): per seed, the multi-modal teacher trained with modality
dropout (``teacher``, plan ``cls_teacher``) predicts the test set once per channel subset it accepts
(``nnkd predict --all-subsets``: CT+FDG+ACE, CT+FDG, CT+ACE, CT), a teacher of the same trainer without
modality dropout (``teacher_nodrop``, plan ``cls_teacher_nodrop``) predicts with all channels (``nnkd
predict`` refuses it every subset: the table says so with the refusal's reason), and the dedicated CT-only
students the benchmark trained (no KD, REACT-KD) give the CT column. Each cell is the mean over seeds of the
macro AUC with a 95 % CI that resamples the test cases (stratified) and the seeds. What one model with
dropout loses against a dedicated model on the same subset: the dropout teacher on CT minus each CT student,
and on all channels minus the teacher without dropout, seed-pooled and paired
(:func:`nnkd.evaluation.comparison.compare_over_seeds`).

**Segmentation students** (``--seg-kd``): per seed, ``nnKDTrainerSegKDBaseline`` (plan ``seg_nokd``) and
``nnKDTrainerSegKD`` (plan ``seg_kd``, teacher = the benchmark's ``teacher`` of the same seed) train on the
CT students' share, predict the CT-only test images with ``nnkd predict``, and are scored by the Dice of
the tumour (label 2) and of the foreground (label > 0) against the test set's ``labelsTr``, on the cases
whose ground truth holds that structure. The teacher's row is its own segmentation with all channels (the
benchmark's predictions). The KD-minus-no-KD difference is averaged over seeds, with a 95 % CI that
resamples the cases (the same for every seed) and the seeds (:func:`dice_difference_over_seeds`).

These models are not in the benchmark's method list: ``nnkd bench quality`` trains them only when asked.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnkd.bench.catalogue import CT, KD, NOKD, TEACHER, Benchmark, Method
from nnkd.errors import NNKDError

PARTS = ("subsets", "seg_kd")
TEACHER_NODROP = Method("teacher_nodrop", "teacher CT+FDG+ACE, no modality dropout", "nnKDTrainerCls",
                        "cls_teacher_nodrop", TEACHER)
SEG_NOKD = Method("seg_nokd", "segmentation student CT, no KD", "nnKDTrainerSegKDBaseline", "seg_nokd", NOKD, CT)
SEG_KD = Method("seg_kd", "segmentation student CT, voxel-wise KD", "nnKDTrainerSegKD", "seg_kd", KD, CT)
DEDICATED_CT = ("nokd", "react")  # the benchmark's CT-only students that the CT column compares with
STRUCTURES = {"tumour": lambda a: a == 2, "foreground": lambda a: a > 0}  # paired3d: liver 1, tumour 2


# ------------------------------------------------------------------------------------------- statistics
def pooled_auc(preds: Sequence, labels: Dict[str, str], class_names: Sequence[str], n_bootstrap: int = 1000,
               seed: int = 0) -> Dict[str, Any]:
    """Mean over seeds of the macro one-vs-rest AUC (``preds``: one Predictions per seed, the same test cases),
    with a 95 % CI resampling the cases (stratified, the same for every seed) and the seeds."""
    import warnings

    from nnkd.evaluation.bootstrap import percentile_ci, seeds_and_cases
    from nnkd.evaluation.classification import ovr_auc
    from nnkd.evaluation.jsonable import jsonable
    from nnkd.evaluation.predictions import align_all

    arrays, y = align_all(preds, labels, class_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_seed = [float(np.nanmean(ovr_auc(pa, y))) for pa in arrays]
        samples = seeds_and_cases(y, [lambda idx, pa=pa: np.nanmean(ovr_auc(pa, y, idx), axis=1) for pa in arrays],
                                  n_bootstrap, seed)
        ci = percentile_ci(samples)
    return jsonable({"auc": float(np.mean(per_seed)), "ci95": [float(ci[0]), float(ci[1])], "per_seed": per_seed,
                     "n_seeds": len(arrays), "n_cases": len(y)})


def case_dice(seg_folder: str, masks: str, case_ids: Sequence[str]) -> Dict[str, np.ndarray]:
    """{structure: (N,) Dice per case} of the segmentations in ``seg_folder`` against ``masks`` (both
    ``CASE<ending>``); NaN where the ground truth lacks the structure. Refuses, listing every case, missing
    segmentations and shape mismatches."""
    import SimpleITK as sitk

    from nnkd.evaluation.subsets import _label_file, dice

    out = {k: np.full(len(case_ids), np.nan) for k in STRUCTURES}
    problems = []
    for i, case in enumerate(case_ids):
        seg, truth = _label_file(seg_folder, case), _label_file(masks, case)
        if seg is None or truth is None:
            problems.append(f"case {case}: {'no segmentation in ' + seg_folder if seg is None else 'no mask in ' + masks}")
            continue
        a, b = sitk.GetArrayFromImage(sitk.ReadImage(seg)), sitk.GetArrayFromImage(sitk.ReadImage(truth))
        if a.shape != b.shape:
            problems.append(f"case {case}: segmentation {seg} has shape {a.shape}, mask {truth} {b.shape}")
            continue
        for k, select in STRUCTURES.items():
            if select(b).any():
                out[k][i] = dice(select(a), select(b))
    if problems:
        raise NNKDError("\n".join([f"{len(problems)} problem(s) scoring the segmentations of {seg_folder}:",
                                   *problems]))
    return out


def dice_difference_over_seeds(pairs: Sequence[Tuple[np.ndarray, np.ndarray]], n_bootstrap: int = 1000,
                               seed: int = 0, level: float = 0.95) -> Dict[str, Any]:
    """Mean Dice of A minus B averaged over seeds: ``pairs`` holds one (A, B) pair of (N,) per-case Dice arrays
    per seed, on the same cases (NaN = the case lacks the structure: left out everywhere). The CI resamples the
    cases (the same for every seed) and the seeds (:func:`nnkd.evaluation.bootstrap.seeds_and_cases`)."""
    from nnkd.evaluation.bootstrap import percentile_ci, seeds_and_cases

    a_all = np.stack([np.asarray(a, float) for a, _ in pairs])
    b_all = np.stack([np.asarray(b, float) for _, b in pairs])
    if a_all.shape != b_all.shape:
        raise NNKDError(f"Dice arrays of different shapes: {a_all.shape} and {b_all.shape}")
    keep = np.isfinite(a_all).all(0) & np.isfinite(b_all).all(0)
    diffs = (a_all - b_all)[:, keep]  # (S, N)
    if not diffs.shape[1]:
        return {"difference": None, "ci95": [None, None], "per_seed": [None] * len(pairs), "n_cases": 0,
                "n_seeds": len(pairs)}
    per_seed = diffs.mean(1)
    samples = seeds_and_cases(np.zeros(diffs.shape[1]), [lambda idx, d=d: d[idx].mean(1) for d in diffs],
                              n_bootstrap, seed)
    ci = percentile_ci(samples, level)
    return {"difference": float(per_seed.mean()), "ci95": [float(ci[0]), float(ci[1])],
            "per_seed": [float(v) for v in per_seed], "n_cases": int(diffs.shape[1]), "n_seeds": len(pairs),
            "p_not_better": float(np.mean(samples <= 0)),
            "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "levels": "cases and seeds",
                          "ci": f"percentile {100 * level:.0f}%"}}


# ------------------------------------------------------------------------------------------- tables
def subsets_table(models: Dict[str, Dict[str, Any]], subsets: Sequence[str]) -> Dict[str, Any]:
    """The robustness table: ``models`` = {key: {"label", "cells": {subset: pooled_auc() result | {"refused":
    why} }}}; a subset a model has no cell for is one it was not built for. Returns {"subsets", "rows"} with
    one row per model, a cell per subset (``None`` = not applicable)."""
    rows = []
    for key, m in models.items():
        rows.append({"model": key, "label": m["label"], "cells": {s: m["cells"].get(s) for s in subsets}})
    return {"subsets": list(subsets), "rows": rows}


def levels_view(table: Dict[str, Any]) -> Dict[str, Any]:
    """The robustness table as a levels table (one level per model and subset with an AUC or a refusal), for
    :func:`nnkd.evaluation.subsets.write_subsets_report`'s CSV and plot."""
    levels = []
    for row in table["rows"]:
        for s, c in row["cells"].items():
            if c is None:
                continue
            refused = "refused" in c
            levels.append({"level": f"{row['model']}: {s}", "n_cases": None if refused else c["n_cases"],
                           "auc": None if refused else c["auc"], "auc_ci_low": None if refused else c["ci95"][0],
                           "auc_ci_high": None if refused else c["ci95"][1], "accuracy": None,
                           "balanced_accuracy": None, "macro_f1": None, "ece": None, "brier": None,
                           "n_seeds": None if refused else c["n_seeds"], "refused": c.get("reason")})
    return {"levels": levels, "note": "AUC: mean over seeds, 95 % CI resampling cases and seeds",
            "ci": "bootstrap over cases and seeds"}


def _ci_cell(value: Optional[float], ci: Sequence[Optional[float]], signed: bool = False) -> str:
    if value is None:
        return "n/a"
    lo, hi = ("n/a" if v is None else f"{v:.3f}" for v in ci)
    mark = "*" if signed and None not in ci and (ci[0] > 0 or ci[1] < 0) else ""
    return f"{value:{'+' if signed else ''}.3f} [{lo}, {hi}]{mark}"


def subsets_markdown(part: Dict[str, Any]) -> str:
    """The robustness table and the dropout-vs-dedicated differences as Markdown."""
    table = part["table"]
    lines = ["| model | " + " | ".join(table["subsets"]) + " |", "|---|" + "---|" * len(table["subsets"])]
    for row in table["rows"]:
        cells = []
        for s in table["subsets"]:
            c = row["cells"][s]
            cells.append("— (not built for it)" if c is None else
                         f"refused by nnkd predict ({c['reason']})" if c.get("refused") else
                         "accepted, not predicted" if "refused" in c else
                         _ci_cell(c["auc"], c["ci95"]) + f" ({c['n_seeds']})"
                         + (f"; Dice {c['dice']:.3f}" if c.get("dice") is not None else ""))
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", "| channels | dropout teacher minus | seeds pooled: Δ AUC [95% CI] | per seed |", "|---|---|---|---|"]
    for d in part["losses"]:
        lines.append(f"| {d['subset']} | {d['label']} | {_ci_cell(d['difference'], d['ci95'], True)} | "
                     + ", ".join("n/a" if v is None else f"{v:+.3f}" for v in d["per_seed"]) + " |")
    return "\n".join(lines)


def seg_table(dice: Dict[str, Dict[str, Dict[str, float]]], labels: Dict[str, str],
              differences: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """``dice`` = {model key: {seed: {structure: mean Dice}}} -> rows with mean ± sd over seeds per structure;
    ``differences`` = {structure: :func:`dice_difference_over_seeds` result} (KD minus no KD)."""
    from nnkd.bench.quality import mean_sd

    rows = []
    for key, per_seed in dice.items():
        row = {"model": key, "label": labels[key], "per_seed": per_seed}
        for k in STRUCTURES:
            mean, sd = mean_sd([v[k] for v in per_seed.values() if v.get(k) is not None])
            row[k] = {"mean": mean, "sd": sd, "n": sum(v.get(k) is not None for v in per_seed.values())}
        rows.append(row)
    return {"structures": list(STRUCTURES), "rows": rows, "kd_minus_nokd": differences}


def seg_markdown(table: Dict[str, Any]) -> str:
    def ms(c):
        if c["mean"] is None:
            return "n/a"
        return f"{c['mean']:.3f} ± {'n/a' if c['sd'] is None else format(c['sd'], '.3f')} ({c['n']})"

    s = table["structures"]
    lines = ["| model | " + " | ".join(f"{k} Dice: mean ± sd (n seeds)" for k in s) + " |", "|---|" + "---|" * len(s)]
    lines += [f"| {r['label']} | " + " | ".join(ms(r[k]) for k in s) + " |" for r in table["rows"]]
    diff = table["kd_minus_nokd"]
    if diff:
        lines.append("| KD minus no KD, seeds pooled: Δ [95% CI] | "
                     + " | ".join(_ci_cell(diff[k]["difference"], diff[k]["ci95"], True) if k in diff else "n/a"
                                  for k in s) + " |")
    return "\n".join(lines)


def markdown_sections(b: Dict[str, Any]) -> str:
    """The report sections of the parts that ran (for quality.md)."""
    out = []
    if b.get("subsets"):
        out += ["### Robustness per channel subset (`--subsets`)", "",
                "Macro AUC on the test set, mean over seeds [95 % CI resampling the test cases and the seeds] (n seeds). "
                "The teacher with modality dropout predicts with each subset it accepts (`nnkd predict "
                "--all-subsets`; Dice: its mean foreground Dice over seeds, `nnkd evaluate --subsets --masks`); the "
                "teacher without dropout is refused every subset; the CT students are the dedicated CT-only models. "
                "Second table: the dropout teacher minus the dedicated model of that "
                "subset, paired on the same cases (`*`: the CI excludes 0).", "", subsets_markdown(b["subsets"]), ""]
    if b.get("seg_kd"):
        out += ["### Segmentation students distilled voxel by voxel (`--seg-kd`)", "",
                "Dice against the test set's labelsTr on the cases holding the structure (tumour = label 2, "
                "foreground = label > 0), the students with CT only, the teacher with CT+FDG+ACE; KD minus no KD: "
                "the mean over seeds of the paired difference with a 95 % CI resampling the cases and the seeds.",
                "", seg_markdown(b["seg_kd"]["table"]), ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- running
def model_contract(folder: str):
    """The :class:`nnkd.subsets.ChannelContract` ``nnkd predict`` applies to a trained model folder (fold 0)."""
    from nnkd.checkpoints import PREDICT_KEYS, load_checkpoint
    from nnkd.labels import load_json
    from nnkd.subsets import channel_contract

    ck = load_checkpoint(os.path.join(folder, "fold_0", "checkpoint_final.pth"), PREDICT_KEYS)
    plan = ck["nnkd"].get("plan") if isinstance(ck.get("nnkd"), dict) else None
    return channel_contract(folder, load_json(os.path.join(folder, "dataset.json"))["channel_names"], [plan])


def refusal_cell(contract, subset: str) -> Dict[str, Any]:
    """{"refused": nnkd predict's refusal lines, "reason": why, in short} of a model's ChannelContract for the
    channel subset named ``subset`` (``CT+FDG``); empty ``refused`` when the model accepts it."""
    present = [contract.channel_names.index(c) for c in subset.split("+")]
    missing = [c for c in range(len(contract.channel_names)) if c not in present and c not in contract.droppable]
    return {"refused": contract.problems(present),
            "reason": "; ".join(sorted({contract.reasons[c] for c in missing})) or "accepted"}


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(values) else None


def _labels(test_raw: str):
    from nnkd.labels import load_json, stored_labels

    path = os.path.join(test_raw, "dataset.json")
    return stored_labels(load_json(path), path)


def run_subsets(q, bench: Benchmark, b: Dict[str, Any]) -> Dict[str, Any]:
    """``--subsets`` on a finished benchmark result ``b`` of :class:`nnkd.bench.quality.QualityRun` ``q``."""
    from nnkd.evaluation.comparison import compare_over_seeds
    from nnkd.evaluation.predictions import read_prediction_csv
    from nnkd.evaluation.subsets import read_subsets, write_subsets_report
    from nnkd.io import write_text
    from nnkd.pipeline import nnkd_cmd

    s, ids, seeds = q.schedule(bench), b["datasets"], q.seeds
    test_raw = q.ws.dataset_folder("nnUNet_raw", ids["test_student"])
    class_names, labels = _labels(test_raw)
    # the teacher without dropout: trained, predicted and evaluated on all channels like the benchmark's teacher
    nodrop = q._parallel([(seed, TEACHER_NODROP) for seed in seeds],
                         lambda seed, m: q.run_model(bench, m, seed, s, ids, {}))
    per_seed: Dict[str, Dict[str, Any]] = {}  # subset -> seed -> Predictions of the dropout teacher
    seed_dice: Dict[str, List[Optional[float]]] = {}  # subset -> the teacher's mean foreground Dice per seed
    for seed in seeds:
        rec = b["runs"]["teacher"][str(seed)]
        out = q.ws.path("runs", bench.key, f"seed{seed}", "teacher", "subsets")
        label = f"{bench.key} seed {seed}: teacher, every channel subset"
        if not os.path.isfile(os.path.join(out, "done")) or \
                os.path.getmtime(os.path.join(out, "done")) < os.path.getmtime(rec["predictions"]):
            q.ws.run(nnkd_cmd("predict", "-i", rec["test_images"], "-o", out, "-m", rec["model_folder"], "-f", "0",
                              "-device", q.ws.device, "--all-subsets", "--disable_tta"),  # as every benchmark model
                     log=out + ".log", label=label)
            write_text(os.path.join(out, "done"), "")
        csvs = sorted(os.path.join(out, d, "classification.csv") for d in os.listdir(out)
                      if os.path.isfile(os.path.join(out, d, "classification.csv")))
        report = out + "_report"
        if not os.path.isfile(os.path.join(report, "subsets.json")) or \
                os.path.getmtime(os.path.join(report, "subsets.json")) < os.path.getmtime(os.path.join(out, "done")):
            q.ws.run(nnkd_cmd("evaluate", "--subsets", *csvs, "--labels", str(ids["test_student"]), "--masks",
                              os.path.join(test_raw, "labelsTr"), "-o", report), log=report + ".log", label=label)
        with open(os.path.join(report, "subsets.json")) as f:
            for row in json.load(f)["levels"]:
                seed_dice.setdefault(row["level"], []).append(row.get("dice"))
        for subset, pred in read_subsets(csvs).items():
            per_seed.setdefault(subset, {})[str(seed)] = pred
    teacher_contract = model_contract(b["runs"]["teacher"][str(seeds[0])]["model_folder"])
    order = [teacher_contract.name(x) for x in teacher_contract.allowed_subsets()]  # nnkd predict's order
    subsets = sorted(per_seed, key=lambda x: order.index(x) if x in order else len(order))
    full = subsets[0]
    models: Dict[str, Dict[str, Any]] = {
        "teacher": {"label": bench.method("teacher").label + " (modality dropout)",
                    "cells": {sub: dict(pooled_auc([per_seed[sub][str(x)] for x in seeds], labels, class_names,
                                                   q.n_bootstrap), dice=_mean(seed_dice.get(sub, [])))
                              for sub in subsets}}}
    nodrop_preds = [read_prediction_csv(r["predictions"]) for r in nodrop]
    contract = model_contract(nodrop[0]["model_folder"])
    cells = {full: pooled_auc(nodrop_preds, labels, class_names, q.n_bootstrap)}
    for sub in subsets[1:]:
        cells[sub] = refusal_cell(contract, sub)
    models["teacher_nodrop"] = {"label": TEACHER_NODROP.label, "cells": cells}
    ct = "+".join(contract.channel_names[c] for c in CT)
    dedicated = [k for k in DEDICATED_CT if k in b["runs"] and len(b["runs"][k]) == len(seeds)]
    student_preds = {k: [read_prediction_csv(b["runs"][k][str(x)]["predictions"]) for x in seeds] for k in dedicated}
    for k in dedicated:
        models[k] = {"label": bench.method(k).label,
                     "cells": {ct: pooled_auc(student_preds[k], labels, class_names, q.n_bootstrap)}}
    losses = []
    pairs_of = {full: [("teacher_nodrop", nodrop_preds)]} | ({ct: [(k, student_preds[k]) for k in dedicated]}
                                                             if ct in per_seed else {})
    for sub, dedicated_models in pairs_of.items():
        for k, preds in dedicated_models:
            r = compare_over_seeds([(per_seed[sub][str(x)], p) for x, p in zip(seeds, preds)], labels, class_names,
                                   n_bootstrap=q.n_bootstrap)
            losses.append({"subset": sub, "dedicated": k, "label": models[k]["label"], **r})
    table = subsets_table(models, subsets)
    report_dir = os.path.join(q.out, "subsets")
    try:
        paths = write_subsets_report(report_dir, levels_view(table))
    except ValueError as e:  # a percentile CI that excludes its point: the plot refuses it, json and csv are written
        q.log(f"[{bench.key}] subsets.png not drawn: {e}")
        paths = [os.path.join(report_dir, "subsets" + e) for e in (".json", ".csv")]
    part = {"table": table, "losses": losses, "files": paths, "teacher_nodrop_runs": dict(zip(map(str, seeds), nodrop)),
            "per_seed_reports": {str(x): q.ws.path("runs", bench.key, f"seed{x}", "teacher", "subsets_report")
                                 for x in seeds}}
    write_text(os.path.join(report_dir, "subsets.md"), subsets_markdown(part) + "\n")
    q.log(f"[{bench.key}] robustness per subset:\n" + subsets_markdown(part))
    return part


def run_seg_kd(q, bench: Benchmark, b: Dict[str, Any]) -> Dict[str, Any]:
    """``--seg-kd`` on a finished benchmark result ``b`` of :class:`nnkd.bench.quality.QualityRun` ``q``."""
    from nnkd.bench.quality import method_plan
    from nnkd.evaluation.jsonable import jsonable
    from nnkd.evaluation.predictions import CASES_CSV
    from nnkd.io import write_json
    from nnkd.pipeline import is_trained, model_folder, nnkd_cmd, train

    s, ids, seeds, ws = q.schedule(bench), b["datasets"], q.seeds, q.ws
    masks = os.path.join(ws.dataset_folder("nnUNet_raw", ids["test_student"]), "labelsTr")
    case_ids = sorted(n.split(".")[0] for n in os.listdir(masks) if not n.startswith("."))

    def run(seed: int, m: Method) -> str:
        run_dir = ws.path("runs", bench.key, f"seed{seed}", m.key)
        folder = model_folder(ws, ids["student"], m.trainer, bench.config, os.path.join(run_dir, "nnUNet_results"))
        label = f"{bench.key} seed {seed}: {m.label}"
        pred = os.path.join(run_dir, "predictions")
        if not is_trained(folder):
            if os.path.isdir(pred):
                import shutil

                shutil.rmtree(pred)
            teachers = {"teacher": b["runs"]["teacher"][str(seed)]["model_folder"]}
            train(ws, ids["student"], bench.config, m.trainer, method_plan(bench, m, seed, s, teachers, ids["teacher"]),
                  label, os.path.join(run_dir, "nnUNet_results"), log=os.path.join(run_dir, "train.log"))
        if not os.path.isfile(os.path.join(pred, CASES_CSV)):
            ws.run(nnkd_cmd("predict", "-i", q.test_images(bench, m, ids), "-o", pred, "-m", folder, "-f", "0",
                            "-device", ws.device), log=os.path.join(run_dir, "predict.log"), label=label)
        return pred

    students = [(seed, m) for seed in seeds for m in (SEG_NOKD, SEG_KD)]
    folders = dict(zip(students, q._parallel(students, run)))
    per_case: Dict[str, Dict[str, Dict[str, np.ndarray]]] = {}
    for seed in seeds:
        teacher_pred = os.path.dirname(b["runs"]["teacher"][str(seed)]["predictions"])
        per_case.setdefault("teacher", {})[str(seed)] = case_dice(teacher_pred, masks, case_ids)
        for m in (SEG_NOKD, SEG_KD):
            per_case.setdefault(m.key, {})[str(seed)] = case_dice(folders[(seed, m)], masks, case_ids)
    means = {k: {x: {st: (float(np.nanmean(v)) if np.isfinite(v).any() else None) for st, v in d.items()}
                 for x, d in v.items()} for k, v in per_case.items()}
    differences = {st: dice_difference_over_seeds([(per_case[SEG_KD.key][str(x)][st], per_case[SEG_NOKD.key][str(x)][st])
                                                   for x in seeds], q.n_bootstrap) for st in STRUCTURES}
    labels = {"teacher": bench.method("teacher").label + " (own channels)", SEG_NOKD.key: SEG_NOKD.label,
              SEG_KD.key: SEG_KD.label}
    table = jsonable(seg_table(means, labels, differences))
    path = os.path.join(q.out, "seg_kd.json")
    write_json(path, jsonable({"table": table, "case_ids": case_ids,
                      "per_case": {k: {x: {st: [None if not np.isfinite(c) else float(c) for c in arr]
                                           for st, arr in d.items()} for x, d in v.items()}
                                   for k, v in per_case.items()}}))
    q.log(f"[{bench.key}] segmentation students:\n" + seg_markdown(table))
    return {"table": table, "file": path}


def run_parts(q, bench: Benchmark, b: Dict[str, Any], parts: Sequence[str]) -> Dict[str, Any]:
    """The requested ``parts`` (of :data:`PARTS`) on a finished paired benchmark result; {part: result}."""
    from nnkd.evaluation.jsonable import jsonable

    if bench.key != "paired3d":
        raise NNKDError(f"--subsets / --seg-kd run on the paired3d benchmark only, not {bench.key}")
    if b.get("skipped"):
        return {}
    out = {}
    if "subsets" in parts:
        out["subsets"] = run_subsets(q, bench, b)
    if "seg_kd" in parts:
        out["seg_kd"] = run_seg_kd(q, bench, b)
    return jsonable(out)  # plain JSON types, NaN as None (quality.json)
