"""Class-probability prediction CSVs: the one format `nnkd predict`, training validation and
`nnkd evaluate` share.

Header: ``case_id,prob_<class 1>,...,prob_<class K>,predicted,label``. ``predicted`` is the
arg-max class name (informational: metrics recompute it from the probabilities), ``label`` is
the true class name or empty. ``predicted`` and ``label`` may be absent in files from other tools.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from nnkd.errors import NNKDError
from nnkd.io import read_csv_rows, write_text

PROB_PREFIX = "prob_"
SUM_TOLERANCE = 1e-3  # written probabilities carry ~8 significant digits; softmax sums are exact up to that


@dataclass
class Predictions:
    """N cases x K classes. ``probs[i]`` sums to 1; ``labels[i]`` is a class name or None."""

    case_ids: list[str]
    probs: np.ndarray  # (N, K) float64
    class_names: list[str]
    labels: list[str | None]
    source: str = "<memory>"  # file the predictions came from, used in error messages

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels_dict(self) -> dict[str, str]:
        """{case_id: label} for the rows that carry a label."""
        return {c: lab for c, lab in zip(self.case_ids, self.labels) if lab is not None}


def write_prediction_csv(path: str | os.PathLike, case_ids: Sequence[str], probs, class_names: Sequence[str],
                         labels: Sequence[str | int | None] | None = None,
                         channels: Sequence[str] | None = None) -> None:
    """Write ``probs`` (N, K) for ``case_ids`` atomically; ``labels`` are class names, class indices or None.
    ``channels``: per case, the input channels used (``CT+FDG``), written as a last column ``channels``."""
    probs = np.asarray(probs, dtype=np.float64)
    class_names = [str(c) for c in class_names]
    n = len(case_ids)
    if probs.ndim != 2 or probs.shape != (n, len(class_names)):
        raise ValueError(f"probs must be (N={n}, K={len(class_names)}), got {probs.shape}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} cases")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if channels is not None and len(channels) != n:
        raise ValueError(f"channels has {len(channels)} entries for {n} cases")
    writer.writerow(["case_id", *(PROB_PREFIX + c for c in class_names), "predicted", "label",
                     *(["channels"] if channels is not None else [])])
    predicted = probs.argmax(axis=1) if n else []
    for i, case in enumerate(case_ids):
        label = None if labels is None else labels[i]
        if isinstance(label, (int, np.integer)):
            label = class_names[int(label)]
        writer.writerow([case, *(format(p, ".8g") for p in probs[i]), class_names[predicted[i]],
                         "" if label is None else label, *([channels[i]] if channels is not None else [])])
    write_text(path, buf.getvalue())


CASES_CSV = "cases.csv"


def write_cases_csv(path: str | os.PathLike, case_ids: Sequence[str], channels: Sequence[str]) -> None:
    """``nnkd predict``'s per-case record for a model without classification head (``num_classes`` 0):
    ``case_id,channels`` (``CT+FDG``: the channels each case was predicted with), written atomically.

    Named ``cases.csv``, not ``classification.csv``: such a model predicts no class, and every reader of
    ``classification.csv`` (``nnkd evaluate``, ``compare``, ``ensemble``) expects class probabilities;
    :func:`read_prediction_csv` refuses this file by name instead of reporting missing columns."""
    if len(channels) != len(case_ids):
        raise ValueError(f"channels has {len(channels)} entries for {len(case_ids)} cases")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "channels"])
    writer.writerows(zip(case_ids, channels))
    write_text(path, buf.getvalue())


def read_prediction_csv(path: str | os.PathLike) -> Predictions:
    """Read and validate a prediction CSV; every problem raises NNKDError naming the file and row."""
    path = os.fspath(path)
    rows = read_csv_rows(path, "prediction file", "case_id,prob_<class>...,predicted,label")
    header = [h.strip() for h in rows[0]]
    prob_cols = [i for i, h in enumerate(header) if h.startswith(PROB_PREFIX)]
    missing = [c for c in ("case_id",) if c not in header]
    if header == ["case_id", "channels"]:
        raise NNKDError(f"{path}: a per-case channel record (nnkd predict with a model without classification "
                        f"head), no class probabilities to evaluate")
    if missing or len(prob_cols) < 2:
        need = missing + ([] if len(prob_cols) >= 2 else ["at least two prob_<class> columns"])
        raise NNKDError(f"{path}: missing column(s) {', '.join(need)} in header {','.join(header)}")
    class_names = [header[i][len(PROB_PREFIX):] for i in prob_cols]
    if len(set(class_names)) != len(class_names):
        raise NNKDError(f"{path}: duplicate class columns in header {','.join(header)}")
    id_col = header.index("case_id")
    label_col = header.index("label") if "label" in header else None

    case_ids, labels, probs, seen = [], [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}, line {line}"
        if len(row) != len(header):
            raise NNKDError(f"{where}: {len(row)} fields, header has {len(header)}")
        case = row[id_col].strip()
        if not case:
            raise NNKDError(f"{where}: empty case_id")
        if case in seen:
            raise NNKDError(f"{where}: duplicate case id {case!r} (first on line {seen[case]})")
        seen[case] = line
        values = []
        for i in prob_cols:
            try:
                v = float(row[i])
            except ValueError:
                raise NNKDError(f"{where} (case {case}): {header[i]} = {row[i]!r} is not a number") from None
            if not (0.0 <= v <= 1.0):  # also rejects nan
                raise NNKDError(f"{where} (case {case}): {header[i]} = {row[i]} is not a probability in [0, 1]")
            values.append(v)
        if abs(math.fsum(values) - 1.0) > SUM_TOLERANCE:
            raise NNKDError(f"{where} (case {case}): probabilities sum to {math.fsum(values):.6g}, not 1")
        label = row[label_col].strip() if label_col is not None else ""
        if label and label not in class_names:
            raise NNKDError(f"{where} (case {case}): label {label!r} is not one of the classes {class_names}")
        case_ids.append(case)
        labels.append(label or None)
        probs.append(values)
    if not case_ids:
        raise NNKDError(f"{path}: no prediction rows")
    return Predictions(case_ids, np.asarray(probs, dtype=np.float64), class_names, labels, source=path)


def align(pred: Predictions, labels: Mapping[str, str], class_names: Sequence[str],
          allow_missing: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Match predictions to true labels case by case.

    Returns ``(case_ids, probs (N, K) in ``class_names`` order, y (N,) int class index)``, cases in
    the prediction file's order. Raises NNKDError when class sets differ, a label is not a class, or
    (unless ``allow_missing``, which keeps only the common cases) cases are missing on either side.
    """
    class_names = list(class_names)
    if set(pred.class_names) != set(class_names) or len(pred.class_names) != len(class_names):
        raise NNKDError(f"{pred.source}: prediction classes {pred.class_names} differ from the label classes "
                        f"{class_names}")
    bad = sorted({lab for lab in labels.values() if lab not in class_names})
    if bad:
        raise NNKDError(f"{pred.source}: the labels name class(es) {bad} that the predictions do not have "
                        f"(classes: {class_names})")
    no_label = [c for c in pred.case_ids if c not in labels]
    no_pred = sorted(set(labels) - set(pred.case_ids))
    if (no_label or no_pred) and not allow_missing:
        parts = []
        if no_label:
            parts.append(f"{len(no_label)} predicted case(s) have no label: {_preview(no_label)}")
        if no_pred:
            parts.append(f"{len(no_pred)} labelled case(s) have no prediction: {_preview(no_pred)}")
        raise NNKDError(f"{pred.source}: " + "; ".join(parts) + " (use --allow-missing to evaluate the common cases)")
    keep = [i for i, c in enumerate(pred.case_ids) if c in labels]
    if not keep:
        raise NNKDError(f"{pred.source}: no case has both a prediction and a label")
    order = [pred.class_names.index(c) for c in class_names]
    index = {c: k for k, c in enumerate(class_names)}
    case_ids = [pred.case_ids[i] for i in keep]
    y = np.array([index[labels[c]] for c in case_ids], dtype=np.int64)
    return case_ids, pred.probs[np.ix_(keep, order)], y


def align_all(preds: Sequence[Predictions], labels: Mapping[str, str],
              class_names: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`align` for several prediction sets of the same cases (e.g. one per training seed): their
    (N, K) probabilities, rows in the first set's case order, and y (N,). Raises NNKDError naming the
    first set that covers other cases."""
    ids, arrays, y = None, [], None
    for p in preds:
        ids_p, probs, y_p = align(p, labels, class_names)
        if ids is not None and set(ids_p) != set(ids):
            raise NNKDError(f"{p.source} does not predict the same cases as {preds[0].source}")
        ids = ids if ids is not None else ids_p
        row = {c: i for i, c in enumerate(ids_p)}
        take = [row[c] for c in ids]
        arrays.append(probs[take])
        y = y_p[take]
    return arrays, y


def _preview(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
