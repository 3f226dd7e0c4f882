"""`nnkd labels import` / `nnkd labels show`: case-level class labels in a dataset's dataset.json."""
from __future__ import annotations

import argparse
import os
import sys

from nnkd import labels as L
from nnkd.dataset_folders import dataset_name, training_case_ids
from nnkd.errors import NNKDError

_IMPORT_DESCRIPTION = """\
Store one class label per training case in dataset.json (key "nnkd") of $nnUNet_raw/DATASET and,
when it exists, $nnUNet_preprocessed/DATASET.

FILE.csv needs a header naming the columns case_id and label (exactly these names; further columns
are ignored) and one row per training case. Class indices follow --classes when given, else the
distinct labels in natural-sort order (G2 before G10). The import is refused, with every offending
row or case listed and no file changed, for: a missing header or column, rows with a different
number of fields, blank ids or labels, a header naming case_id or label twice, duplicate case
ids, ids that are not training cases, training cases without a label, labels outside --classes,
a file with a single class, values with control or invisible characters, and values starting
with =, +, - or @ (spreadsheets run them as formulas; plain numbers such as -1 are fine).

Both dataset.json files are rewritten under a lock (DATASET/.nnkd_labels.lock in nnUNet_raw): a
second import of the same dataset waits for the first (up to 60 s, then it is refused), and
either both files get the new labels or neither does."""


def register(subparsers) -> None:
    p = subparsers.add_parser("labels", help="case-level class labels in dataset.json (import, show)")
    sub = p.add_subparsers(dest="labels_command", metavar="{import,show}", required=True)

    imp = sub.add_parser("import", help="import case labels from a case_id,label CSV",
                         description=_IMPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("dataset", metavar="DATASET", help="dataset id (e.g. 5) or name (Dataset005_Liver)")
    imp.add_argument("csv", metavar="FILE.csv", help="label file with columns case_id,label")
    imp.add_argument("--classes", nargs="+", metavar="CLASS",
                     help="class names in index order (default: the labels found, natural-sort order)")
    imp.set_defaults(func=run_import)

    show = sub.add_parser("show", help="cases per class and training cases without a label")
    show.add_argument("dataset", metavar="DATASET", help="dataset id or name")
    show.set_defaults(func=run_show)


def run_import(args) -> int:
    entry = L.import_labels(args.dataset, args.csv, args.classes,
                            on_wait=lambda line: print(line, file=sys.stderr, flush=True))
    name = dataset_name(args.dataset)
    summary = L.label_counts(entry["class_names"], entry["case_labels"])
    print(f"{name}: {len(entry['case_labels'])} cases labelled, classes (index order): "
          + ", ".join(f"{i}={c} ({summary.counts[c]})" for i, c in enumerate(entry["class_names"])))
    for path in L.dataset_json_paths(name):
        print(f"written: {path}")
    return 0


def run_show(args) -> int:
    name = dataset_name(args.dataset)
    print(format_summary(name))
    return 0


def format_summary(dataset_name: str) -> str:
    """The text `nnkd labels show` prints: source file, counts per class (with class index),
    training cases without a label, and whether the preprocessed copy disagrees."""
    raw_root, pre_root = os.environ.get("nnUNet_raw"), os.environ.get("nnUNet_preprocessed")
    raw = os.path.join(raw_root, dataset_name) if raw_root else None
    pre = os.path.join(pre_root, dataset_name, "dataset.json") if pre_root else None
    has_raw = raw is not None and os.path.isfile(os.path.join(raw, "dataset.json"))
    source = os.path.join(raw, "dataset.json") if has_raw else pre
    if source is None or not os.path.isfile(source):
        raise NNKDError(f"no dataset.json for {dataset_name} in nnUNet_raw={raw_root} or "
                        f"nnUNet_preprocessed={pre_root}")
    names, labels = L.stored_labels(L.load_json(source), source)
    case_ids = training_case_ids(raw) if has_raw else None
    summary = L.label_counts(names, labels, case_ids)
    total = len(case_ids) if case_ids is not None else len(labels)
    width = max(len(n) for n in names)
    lines = [f"{dataset_name}: {total} {'training' if has_raw else 'labelled'} cases, {len(names)} classes "
             f"(from {source})",
             *(f"  {i:>2}  {n:<{width}}  {summary.counts[n]:>5}" for i, n in enumerate(names))]
    if case_ids is None:
        lines.append("cases without a label: unknown (raw dataset not found)")
    else:
        lines.append(f"cases without a label: {len(summary.unlabelled)}"
                     + (": " + ", ".join(summary.unlabelled) if summary.unlabelled else ""))
        if summary.unknown:
            lines.append(f"labelled cases that are not training cases: {len(summary.unknown)}: "
                         + ", ".join(summary.unknown))
    if has_raw and pre is not None and os.path.isfile(pre):
        try:
            same = L.stored_labels(L.load_json(pre), pre) == (names, labels)
        except NNKDError:
            same = False
        if not same:
            lines.append(f"note: {pre} holds different (or no) labels: run `nnkd labels import` again "
                         f"or re-run nnUNetv2_plan_and_preprocess")
    return "\n".join(lines)
