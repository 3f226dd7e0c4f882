"""Writing evaluation reports (JSON, CSV, figures; every file atomically) and formatting the
short text tables the CLI prints."""
from __future__ import annotations

import csv
import io
import os

from nnkd.evaluation import plots
from nnkd.evaluation.levels import LEVEL_COLUMNS
from nnkd.io import save_figure, write_json, write_text

FIGURES = {"roc.png": plots.plot_roc, "dca.png": plots.plot_decision_curve,
           "calibration.png": plots.plot_calibration}


def write_report(out_dir: str, result: dict) -> list[str]:
    """``out_dir``/metrics.json + roc.png, dca.png, calibration.png; returns the written paths."""
    written = [os.path.join(out_dir, "metrics.json")]
    write_json(written[0], result)
    for name, draw in FIGURES.items():
        written.append(os.path.join(out_dir, name))
        save_figure(draw(result), written[-1])
    return written


def write_classification_summary(csv_path: str, out_json: str, **kwargs) -> dict:
    """Metrics of a prediction CSV whose ``label`` column is filled (training validation) -> ``out_json``.

    A single-class validation split (small folds) is not an error: AUC is null and ``note`` says why.

    Returns a one-line summary dict (cases, AUC with CI, accuracy, balanced accuracy).
    """
    from nnkd.evaluation.classification import evaluate
    from nnkd.evaluation.predictions import read_prediction_csv

    pred = read_prediction_csv(csv_path)
    result = evaluate(pred, pred.labels_dict(), single_class_ok=True, **kwargs)
    write_json(out_json, result)
    summary = {"cases": len(pred.case_ids), "auc": result["auc"]["value"], "auc_ci95": result["auc"]["ci95"],
               "accuracy": result["accuracy"], "balanced_accuracy": result["balanced_accuracy"]}
    return {**summary, "note": result["note"]} if "note" in result else summary


def write_levels_report(out_dir: str, table: dict, stem: str = "levels", level: str = "level") -> list[str]:
    """``out_dir``/<stem>.json, <stem>.csv and <stem>.png; returns the written paths. ``level``: what a
    level is (CSV header of the first column, plot axis)."""
    paths = [os.path.join(out_dir, stem + e) for e in (".json", ".csv", ".png")]
    write_json(paths[0], table)
    write_text(paths[1], levels_csv(table, level))
    save_figure(plots.plot_levels(table, level), paths[2])
    return paths


def levels_csv(table: dict, level: str = "level") -> str:
    columns = list(LEVEL_COLUMNS) + [k for k in table["levels"][0] if k not in LEVEL_COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[level if k == "level" else k for k in columns], lineterminator="\n")
    writer.writeheader()
    for row in table["levels"]:
        writer.writerow({level if k == "level" else k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(value, low, high) -> str:
    return f"{_f(value)} [{_f(low)}, {_f(high)}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_metrics(result: dict) -> str:
    """Compact text summary of an evaluate() result."""
    auc = result["auc"]
    label = "AUC" if result["task"] == "binary" else "macro AUC"
    rows = [[label, _ci(auc["value"], *auc["ci95"])]]
    if result["task"] == "multiclass":
        rows += [[f"  AUC {name}", _ci(v["value"], *v["ci95"])] for name, v in auc["per_class"].items()]
    rows += [["accuracy", _f(result["accuracy"])], ["balanced accuracy", _f(result["balanced_accuracy"])],
             ["macro F1", _f(result["macro_f1"])], ["ECE", _f(result["calibration"]["ece"])],
             ["Brier", _f(result["brier"])]]
    counts = ", ".join(f"{k} {v}" for k, v in result["class_counts"].items())
    return f"{result['n_cases']} cases ({counts})\n" + _table(["metric", "value [95% CI]"], rows)


def format_levels(table: dict) -> str:
    rows = [[r["level"], str(r["n_cases"]), _ci(r["auc"], r["auc_ci_low"], r["auc_ci_high"]), _f(r["accuracy"]),
             _f(r["balanced_accuracy"]), _f(r["macro_f1"]), _f(r["ece"])] for r in table["levels"]]
    return _table(["level", "n", "AUC [95% CI]", "acc", "bal.acc", "macro-F1", "ECE"], rows)


def format_comparison(result: dict) -> str:
    a, b = result.get("names", ["A", "B"])
    d = result["difference"]
    rows = []
    for name, c in result["per_class"].items():
        label = name if result["task"] == "multiclass" else f"{name} (positive)"
        p = "n/a" if c["p"] is None else f"{c['p']:.4g}"
        rows.append([label, _f(c["auc_a"]), _f(c["auc_b"]), _ci(c["difference"], *c["ci95"]), p])
    if result["task"] == "multiclass":
        rows.append(["macro", _f(result["auc_a"]), _f(result["auc_b"]), _ci(d["value"], *d["ci95"]), "-"])
    header = ["AUC", a, b, f"{a} - {b} [95% CI]", "DeLong p"]
    return f"{result['n_cases']} cases, paired stratified bootstrap CI\n" + _table(header, rows)


def format_crossval(report: dict) -> str:
    """Per-fold table of a :func:`nnkd.evaluation.crossval.crossval_report` and the fold AUC mean +- sd."""
    rows = [[f"fold_{r['fold']}", str(r["n_cases"]), _f(r["auc"]), _f(r["accuracy"]), _f(r["balanced_accuracy"])]
            for r in report["per_fold"]]
    m = report["fold_auc"]
    sd = "" if m["sd"] is None else f" +- {_f(m['sd'])}"
    return _table(["fold", "n", "AUC", "acc", "bal.acc"], rows) + \
        f"\nper-fold AUC: {_f(m['mean'])}{sd} (mean +- sd over {m['n_folds']} fold(s))"


def format_ranking(comparison: dict) -> str:
    """The ranking of :func:`nnkd.evaluation.crossval.compare_models` as a text table."""
    rows = []
    for i, r in enumerate(comparison["ranking"], 1):
        vs = r.get("vs_best")
        diff = "-" if vs is None else _ci(vs["difference"], *vs["ci95"])
        p = "-" if vs is None or vs["delong_p"] is None else f"{vs['delong_p']:.4g}"
        rows.append([str(i), r["model"], _ci(r["auc"], *r["auc_ci95"]), diff, p])
    return f"{comparison['n_cases']} shared out-of-fold cases\n" + _table(
        ["rank", "model", "AUC [95% CI]", "best - this [95% CI]", "DeLong p"], rows)
