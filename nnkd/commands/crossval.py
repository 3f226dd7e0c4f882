"""`nnkd crossval`: out-of-fold classification results of nnU-Net's k-fold cross-validation, and the
choice between trainers or configurations (the classification counterpart of
nnUNetv2_find_best_configuration)."""
from __future__ import annotations

import argparse
import itertools
import os

from nnkd.errors import NNKDError

_DESCRIPTION = """\
Pool fold_k/validation/classification.csv of every fold of a model (written by nnkd's trainers at
the end of training) into one out-of-fold prediction set, each training case predicted by the fold
that did not train on it, and report it: AUC with a stratified-bootstrap 95 % CI, per-fold AUC
(mean +- sd), accuracy, decision curve, calibration (metrics.json, roc.png, dca.png,
calibration.png), plus classification.csv (the out-of-fold predictions, readable by nnkd evaluate
and nnkd compare) and crossval.json (per-fold table).

With several trainers (-tr), configurations (-c) or plans (-p), every combination is gathered and
they are ranked, with the mean-probability ensemble of each pair unless --no-ensembles, by their
out-of-fold AUC on the cases all of them predict; each is compared with the best (DeLong test,
paired bootstrap CI of the difference) in comparison.json, and one is recommended.

Missing folds are refused, naming each missing file, unless --allow-missing (then they are skipped
and listed). Nothing is written when anything is refused."""


def register(subparsers) -> None:
    p = subparsers.add_parser("crossval", help="out-of-fold classification report over nnU-Net's folds; "
                                               "pick the best trainer/configuration",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET", help="dataset id (e.g. 501) or name (Dataset501_X)")
    p.add_argument("-c", "--configurations", nargs="+", required=True, metavar="CONFIG", dest="configurations",
                   help="configuration(s), e.g. 3d_fullres 2d")
    p.add_argument("-tr", "--trainers", nargs="+", required=True, metavar="TRAINER", dest="trainers",
                   help="trainer class name(s), e.g. nnKDTrainerREACT nnKDTrainerClsBaseline")
    p.add_argument("-p", "--plans", nargs="+", default=["nnUNetPlans"], metavar="PLANS", dest="plans",
                   help="plans identifier(s) (default: nnUNetPlans)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], metavar="FOLD", dest="folds",
                   help="folds to pool (default: 0 1 2 3 4)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip folds without a validation classification file (listed) instead of refusing")
    p.add_argument("--no-ensembles", action="store_true", help="do not rank the ensembles of model pairs")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="report folder (default: $nnUNet_results/DATASET/nnkd_crossval); one sub-folder per model")
    p.add_argument("--n-bootstrap", type=int, default=1000, metavar="N",
                   help="stratified bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, metavar="SEED", help="bootstrap seed (default 0)")
    p.set_defaults(func=run_crossval)


def run_crossval(args) -> int:
    from nnkd.evaluation.crossval import compare_models, crossval_report, gather, model_folder
    from nnkd.evaluation.predictions import write_prediction_csv
    from nnkd.evaluation.report import format_crossval, format_metrics, format_ranking, write_report
    from nnkd.io import write_json
    from nnkd.dataset_folders import dataset_name

    if args.n_bootstrap < 1:
        raise NNKDError(f"--n-bootstrap must be at least 1, got {args.n_bootstrap}")
    if len(set(args.folds)) != len(args.folds):
        raise NNKDError(f"-f names a fold twice: {args.folds}")
    root = os.environ.get("nnUNet_results")
    if not root:
        raise NNKDError("nnUNet_results is not set: export nnUNet_results=/path/to/nnUNet_results")
    name = dataset_name(args.dataset)
    folders = [model_folder(root, name, tr, pl, c)
               for tr, pl, c in itertools.product(args.trainers, args.plans, args.configurations)]
    oofs, problems = [], []
    for folder in folders:  # every model's refusal at once
        try:
            oofs.append(gather(folder, args.folds, args.allow_missing))
        except NNKDError as e:
            problems.append(str(e))
    if problems:
        raise NNKDError("nothing was written:\n" + "\n".join(problems))
    reports = [crossval_report(o, args.n_bootstrap, args.seed) for o in oofs]
    comparison = (compare_models(oofs, not args.no_ensembles, args.n_bootstrap, args.seed)
                  if len(oofs) > 1 else None)

    out = args.output or os.path.join(root, name, "nnkd_crossval")
    for o, report in zip(oofs, reports):
        folder = os.path.join(out, o.name)
        pred = o.predictions
        write_prediction_csv(os.path.join(folder, "classification.csv"), pred.case_ids, pred.probs,
                             pred.class_names, pred.labels)
        write_report(folder, report["pooled"])
        write_json(os.path.join(folder, "crossval.json"), {k: v for k, v in report.items() if k != "pooled"})
        for path in o.missing:
            print(f"skipped (--allow-missing): {path} does not exist")
        print(f"\n{o.name}: {report['n_cases']} out-of-fold cases from folds {', '.join(map(str, o.folds))}")
        print(format_metrics(report["pooled"]))
        print(format_crossval(report))
        print(f"report: {os.path.abspath(folder)}")
    if comparison is not None:
        write_json(os.path.join(out, "comparison.json"), comparison)
        print("\n" + format_ranking(comparison))
        print(f"recommended for classification: {comparison['note']}")
        print(f"comparison: {os.path.abspath(os.path.join(out, 'comparison.json'))}")
    return 0
