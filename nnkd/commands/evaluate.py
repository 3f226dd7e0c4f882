"""`nnkd evaluate` (metrics, plots, per-level robustness) and `nnkd compare` (DeLong + paired
bootstrap) for class-probability prediction CSVs.

One prediction file -> REPORT/metrics.json, roc.png, dca.png, calibration.png. Several files
(one per dose level or removed modality) -> the same report per file in REPORT/<level>/ plus
REPORT/levels.json, levels.csv and levels.png (AUC with CI per level). With --subsets, the levels are
the channel subsets in the files' `channels` column (nnkd predict --all-subsets or --channels):
REPORT/subsets.json, subsets.csv, subsets.png and a Markdown table. Everything is computed before the
first file is written, so a refused input leaves no report behind.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from nnkd.errors import NNKDError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="classification metrics with CIs, DCA, calibration and plots for prediction CSVs",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions", nargs="+", metavar="PRED.csv",
                   help="prediction CSV(s) (case_id,prob_<class>...,predicted,label); several = one per level")
    _add_labels_option(p)
    p.add_argument("-o", "--output", required=True, metavar="REPORT", help="report folder")
    p.add_argument("--names", nargs="+", metavar="NAME",
                   help="model name (one file) or level names (one per file), shown in the plot titles (default: "
                        "the file name, or its folder for a generic name such as classification.csv)")
    p.add_argument("--n-bins", type=int, default=10, help="calibration bins (default 10)")
    p.add_argument("--subsets", action="store_true",
                   help="robustness per channel subset: group the rows of the prediction file(s) by their 'channels' "
                        "column (nnkd predict --all-subsets) -> subsets.csv, subsets.png, Markdown table")
    p.add_argument("--masks", metavar="LABELS_FOLDER",
                   help="with --subsets: ground-truth masks (CASE<ending>, e.g. labelsTr) for the mean Dice per "
                        "subset of the segmentations next to each CSV")
    p.add_argument("--detection", action="store_true",
                   help="lesion detection: FROC of one detection CSV against the ground truth given by --labels")
    _add_common_options(p)
    p.set_defaults(func=run_evaluate)

    c = subparsers.add_parser(
        "compare", help="compare two models' AUCs on the same cases (DeLong test, paired bootstrap CI)")
    c.add_argument("a", metavar="A.csv", help="predictions of model A")
    c.add_argument("b", metavar="B.csv", help="predictions of model B")
    _add_labels_option(c)
    c.add_argument("-o", "--output", metavar="OUT.json", help="also write the comparison as JSON")
    c.add_argument("--names", nargs=2, metavar=("A", "B"),
                   help="model names (default: the file names, or their folders for a generic name such as "
                        "classification.csv; further parent folders while the names clash)")
    _add_common_options(c)
    c.set_defaults(func=run_compare)


def _add_labels_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", metavar="LABELS",
                   help="true labels: a CSV (case_id,label) or an nnU-Net dataset id/name with nnkd labels "
                        "(default: the label column of each prediction file)")


def _add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-bootstrap", type=int, default=1000, help="stratified bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--allow-missing", action="store_true",
                   help="evaluate the cases present in both predictions and labels instead of refusing")


def _labels_for(pred, labels_arg):
    """(class_names, {case: class}) from --labels or, without it, the file's own label column.

    The class order is always the prediction file's (the model's): a labels CSV only knows the
    classes its cases happen to have, in sorted order, which may put another class second (positive).
    """
    if labels_arg is not None:
        return pred.class_names, labels_arg[1]
    labels = pred.labels_dict()
    if not labels:
        raise NNKDError(f"{pred.source}: the label column is empty; give the true labels with --labels")
    return pred.class_names, labels


def _read_labels(spec: str | None):
    if spec is None:
        return None
    from nnkd.labels import read_labels_source

    return read_labels_source(spec)


#: file stems that name no model: a prediction folder's own files
GENERIC_STEMS = {"classification", "predictions", "prediction", "detections", "pred", "preds", "validation"}


def model_names(paths: list[str]) -> list[str]:
    """Distinct display names for prediction files: the file stem, or its folder when the stem is
    generic (``a/classification.csv`` -> ``a``); clashing names take in further parent folders
    (``x/preds/classification.csv`` -> ``x/preds``), and names still equal get ``A:``, ``B:`` ... ."""
    parts = [Path(os.path.abspath(p)).with_suffix("").parts[:0:-1] for p in paths]  # stem, folder, ... (no root)
    first = [1 if p[0].lower() in GENERIC_STEMS and len(p) > 1 else 0 for p in parts]
    count = [1] * len(paths)

    def names_now():
        return ["/".join(reversed(p[f:f + c])) for p, f, c in zip(parts, first, count)]

    names = names_now()
    while True:
        clash = [i for i, n in enumerate(names) if names.count(n) > 1 and first[i] + count[i] < len(parts[i])]
        if not clash:
            break
        for i in clash:
            count[i] += 1
        names = names_now()
    if len(set(names)) != len(names):
        names = [f"{chr(ord('A') + i)}:{n}" if i < 26 else f"{i}:{n}" for i, n in enumerate(names)]
    return names


def _level_names(paths: list[str], names: list[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(paths):
            raise NNKDError(f"--names gives {len(names)} name(s) for {len(paths)} prediction file(s)")
    else:
        names = [Path(p).stem for p in paths]
        if len(set(names)) != len(names):  # e.g. dose_1e4/predictions.csv, dose_5e2/predictions.csv
            names = [Path(p).parent.name for p in paths]
    if len(set(names)) != len(names):
        raise NNKDError(f"level names are not unique ({', '.join(names)}); give them with --names")
    for n in names:
        if not n or n in (".", "..") or "/" in n or "\\" in n:
            raise NNKDError(f"level name {n!r} cannot be a report sub-folder name; choose another with --names")
    return names


def run_evaluate(args) -> int:
    if args.n_bootstrap < 1:
        raise NNKDError(f"--n-bootstrap must be at least 1, got {args.n_bootstrap}")
    if args.n_bins < 1:
        raise NNKDError(f"--n-bins must be at least 1, got {args.n_bins}")
    if args.detection:
        return _run_detection(args)
    if args.subsets:
        return _run_subsets(args)
    if args.masks:
        raise NNKDError("--masks goes with --subsets")
    from nnkd.evaluation.classification import evaluate
    from nnkd.evaluation.levels import levels_table
    from nnkd.evaluation.predictions import align, read_prediction_csv
    from nnkd.evaluation.report import format_levels, format_metrics, write_levels_report, write_report

    names = _level_names(args.predictions, args.names)
    preds = [read_prediction_csv(p) for p in args.predictions]
    for pred in preds[1:]:
        if pred.class_names != preds[0].class_names:
            raise NNKDError(f"{pred.source} has classes {pred.class_names}, {preds[0].source} has "
                            f"{preds[0].class_names}: levels must come from the same model")
    labels_arg = _read_labels(args.labels)
    # every refusal (no labels, missing cases) comes before the first line of progress, listing all files
    truth, problems = [], []
    for pred in preds:
        try:
            class_names, labels = _labels_for(pred, labels_arg)
            align(pred, labels, class_names, args.allow_missing)
            truth.append((class_names, labels))
        except NNKDError as e:
            problems.append(str(e))
    if problems:
        raise NNKDError("\n".join(problems))
    titles = names if args.names is not None or len(preds) > 1 else model_names(args.predictions)
    results = {}
    for name, title, pred, (class_names, labels) in zip(names, titles, preds, truth):
        print(f"evaluating {pred.source} ({len(pred.case_ids)} cases, {args.n_bootstrap} bootstrap resamples)")
        results[name] = evaluate(pred, labels, class_names, allow_missing=args.allow_missing,
                                 n_bootstrap=args.n_bootstrap, seed=args.seed, n_bins=args.n_bins)
        results[name]["model"] = title  # plot titles

    if len(results) == 1:
        result = next(iter(results.values()))
        write_report(args.output, result)
        print(format_metrics(result))
        print(f"report: {os.path.abspath(args.output)} (metrics.json, roc.png, dca.png, calibration.png)")
        return 0
    table = levels_table(results)
    for name, result in results.items():
        write_report(os.path.join(args.output, name), result)
    write_levels_report(args.output, table)
    print(format_levels(table))
    print(f"report: {os.path.abspath(args.output)} (levels.json, levels.csv, levels.png; "
          f"one folder per level with metrics.json and plots)")
    return 0


def _run_subsets(args) -> int:
    """``--subsets``: one level per channel subset (:mod:`nnkd.evaluation.subsets`), the levels code throughout."""
    from nnkd.evaluation.classification import evaluate
    from nnkd.evaluation.levels import levels_table
    from nnkd.evaluation.predictions import align
    from nnkd.evaluation.subsets import add_auc_drop, markdown_table, read_subsets, subset_dice, write_subsets_report

    if args.names is not None:
        raise NNKDError("--subsets names each level by its channels; leave out --names")
    if args.masks and not os.path.isdir(args.masks):
        raise NNKDError(f"--masks {args.masks}: not a folder")
    preds = read_subsets(args.predictions)
    labels_arg = _read_labels(args.labels)
    truth, problems = {}, []
    for subset, pred in preds.items():
        try:
            class_names, labels = _labels_for(pred, labels_arg)
            align(pred, labels, class_names, args.allow_missing)
            truth[subset] = (class_names, labels)
        except NNKDError as e:
            problems.append(f"channels {subset}: {e}")
    if problems:
        raise NNKDError("\n".join(problems))
    dices = subset_dice(preds, args.masks, args.n_bootstrap, args.seed) if args.masks else None
    results = {}
    for subset, pred in preds.items():
        print(f"evaluating channels {subset} ({len(pred.case_ids)} cases, {args.n_bootstrap} bootstrap resamples)",
              flush=True)
        results[subset] = evaluate(pred, truth[subset][1], truth[subset][0], allow_missing=args.allow_missing,
                                   n_bootstrap=args.n_bootstrap, seed=args.seed, n_bins=args.n_bins)
    table = add_auc_drop(levels_table(results))
    for row in table["levels"] if dices else []:
        row.update(dices[row["level"]])
    write_subsets_report(args.output, table)
    print(markdown_table(table))
    print(f"report: {os.path.abspath(args.output)} (subsets.json, subsets.csv, subsets.png)")
    return 0


def _run_detection(args) -> int:
    if len(args.predictions) != 1:
        raise NNKDError(f"--detection evaluates one detection file, got {len(args.predictions)}")
    if args.labels is None:
        raise NNKDError("--detection needs the ground truth through --labels")
    from nnkd.evaluation.froc import froc_report

    summary = froc_report(args.predictions[0], args.labels, args.output, args.n_bootstrap, args.seed,
                          args.allow_missing)
    print(format_detection_summary(summary))
    print(f"report: {os.path.abspath(args.output)}")
    return 0


def format_detection_summary(summary: dict) -> str:
    """Scalar entries of a FROC report, ``<key>_ci95`` intervals beside their value, and the
    per-FP-rate sensitivities when the report has ``fp_rates`` / ``sensitivity`` lists."""
    def num(v, ci=None):
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        return text + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci is not None and None not in ci else "")

    lines = []
    for key, value in summary.items():
        if not key.endswith("_ci95") and (value is None or isinstance(value, (int, float, str))):
            lines.append(f"{key}: {num(value, summary.get(key + '_ci95'))}")
    rates, sens = summary.get("fp_rates"), summary.get("sensitivity")
    if isinstance(rates, list) and isinstance(sens, list) and len(rates) == len(sens):
        cis = summary.get("sensitivity_ci95") or [None] * len(sens)
        lines += [f"sensitivity at {r:g} FP/case: {num(v, ci)}" for r, v, ci in zip(rates, sens, cis)]
    return "\n".join(lines)


def run_compare(args) -> int:
    if args.n_bootstrap < 1:
        raise NNKDError(f"--n-bootstrap must be at least 1, got {args.n_bootstrap}")
    from nnkd.evaluation.comparison import compare
    from nnkd.evaluation.predictions import read_prediction_csv
    from nnkd.evaluation.report import format_comparison
    from nnkd.io import write_json

    a, b = read_prediction_csv(args.a), read_prediction_csv(args.b)
    names = args.names or model_names([args.a, args.b])
    if names[0] == names[1]:
        names = [f"A:{names[0]}", f"B:{names[1]}"]
    class_names, labels = _labels_for(a, _read_labels(args.labels))
    result = compare(a, b, labels, class_names, allow_missing=args.allow_missing, names=names,
                     n_bootstrap=args.n_bootstrap, seed=args.seed)
    print(format_comparison(result))
    if args.output:
        write_json(args.output, result)
        print(f"written: {os.path.abspath(args.output)}")
    return 0
