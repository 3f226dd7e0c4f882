"""`nnkd ensemble`: the mean class probabilities of several models' prediction CSVs (e.g. two
trainers or configurations, each predicted with `nnkd predict`)."""
from __future__ import annotations

import os


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ensemble", help="average the class probabilities of several models' classification.csv files",
        description="Average, case by case, the class probabilities of prediction CSVs of several models "
                    "(written by nnkd predict, or out-of-fold ones by nnkd crossval). Every file must predict "
                    "the same cases and classes; the result is a prediction CSV for nnkd evaluate / compare.")
    p.add_argument("predictions", nargs="+", metavar="PRED.csv", help="two or more prediction CSVs")
    p.add_argument("-o", "--output", required=True, metavar="OUT.csv", help="the ensemble's prediction CSV")
    p.set_defaults(func=run_ensemble)


def run_ensemble(args) -> int:
    from nnkd.errors import NNKDError
    from nnkd.evaluation.ensemble import average_predictions
    from nnkd.evaluation.predictions import read_prediction_csv, write_prediction_csv

    if os.path.abspath(args.output) in {os.path.abspath(p) for p in args.predictions}:
        raise NNKDError(f"-o {args.output} would overwrite one of the inputs")
    ens = average_predictions([read_prediction_csv(p) for p in args.predictions], source=args.output)
    write_prediction_csv(args.output, ens.case_ids, ens.probs, ens.class_names, ens.labels)
    print(f"written: {os.path.abspath(args.output)} ({len(ens.case_ids)} cases, mean of {len(args.predictions)} models)")
    return 0
