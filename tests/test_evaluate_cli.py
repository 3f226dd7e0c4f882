"""`nnkd evaluate` / `nnkd compare` end to end (subprocess for the real entry point, in-process
through nnkd.cli.main for the variants)."""
import json
import subprocess
import sys
import types

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from nnkd.cli import main
from nnkd.evaluation.predictions import write_prediction_csv

CLASSES = ["G1", "G2", "G3"]
N = 45


def _probs(seed, signal=1.5):
    rng = np.random.default_rng(seed)
    y = np.arange(N) % 3
    logits = rng.normal(0, 1, (N, 3))
    logits[np.arange(N), y] += signal
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


@pytest.fixture
def data(tmp_path):
    """pred_full.csv / pred_low.csv (no label column content), labels.csv for the same cases."""
    ids = [f"case_{i:03d}" for i in range(N)]
    for name, signal in (("pred_full", 2.0), ("pred_low", 0.5)):
        probs, y = _probs(1, signal)
        write_prediction_csv(tmp_path / f"{name}.csv", ids, probs, CLASSES)
    (tmp_path / "labels.csv").write_text("case_id,label\n" + "".join(f"{c},{CLASSES[k]}\n" for c, k in zip(ids, y)))
    return tmp_path, ids, y


def _cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "nnkd.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_evaluate_end_to_end_subprocess(data):
    tmp_path, ids, y = data
    proc = _cli(tmp_path, "evaluate", "pred_full.csv", "--labels", "labels.csv", "-o", "report",
                "--n-bootstrap", "200")
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "report"
    assert sorted(p.name for p in report.iterdir()) == ["calibration.png", "dca.png", "metrics.json", "roc.png"]
    metrics = json.loads((report / "metrics.json").read_text())
    probs, _ = _probs(1, 2.0)
    assert metrics["auc"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-6)
    assert metrics["bootstrap"]["n_resamples"] == 200
    assert "macro AUC" in proc.stdout and str(report) in proc.stdout


def test_evaluate_missing_case_fails_without_report(data):
    tmp_path, ids, y = data
    lines = (tmp_path / "labels.csv").read_text().splitlines()
    (tmp_path / "labels.csv").write_text("\n".join([lines[0]] + lines[1:6] + lines[7:] + ["ghost_case,G1"]) + "\n")
    proc = _cli(tmp_path, "evaluate", "pred_full.csv", "--labels", "labels.csv", "-o", "report")
    assert proc.returncode == 2
    assert proc.stderr.startswith("nnkd: error: ") and "pred_full.csv" in proc.stderr
    assert "case_005" in proc.stderr and "ghost_case" in proc.stderr and "--allow-missing" in proc.stderr
    assert not (tmp_path / "report").exists()
    assert main(["evaluate", str(tmp_path / "pred_full.csv"), "--labels", str(tmp_path / "labels.csv"), "-o",
                 str(tmp_path / "report"), "--allow-missing", "--n-bootstrap", "20"]) == 0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["n_cases"] == N - 1


def test_evaluate_levels(data, capsys):
    tmp_path, ids, y = data
    out = tmp_path / "levels"
    assert main(["evaluate", str(tmp_path / "pred_full.csv"), str(tmp_path / "pred_low.csv"), "--labels",
                 str(tmp_path / "labels.csv"), "-o", str(out), "--names", "1e6", "5e2", "--n-bootstrap", "50"]) == 0
    assert {"levels.json", "levels.csv", "levels.png", "1e6", "5e2"} <= {p.name for p in out.iterdir()}
    assert (out / "5e2" / "metrics.json").exists() and (out / "1e6" / "dca.png").exists()
    rows = json.loads((out / "levels.json").read_text())["levels"]
    assert [r["level"] for r in rows] == ["1e6", "5e2"] and rows[0]["auc"] > rows[1]["auc"]
    printed = capsys.readouterr().out
    assert "1e6" in printed and "5e2" in printed and "AUC [95% CI]" in printed


def test_evaluate_uses_label_column_without_labels_option(tmp_path):
    probs, y = _probs(2)
    ids = [f"c{i}" for i in range(N)]
    write_prediction_csv(tmp_path / "val.csv", ids, probs, CLASSES, labels=y.tolist())
    assert main(["evaluate", str(tmp_path / "val.csv"), "-o", str(tmp_path / "r"), "--n-bootstrap", "20"]) == 0
    auc = json.loads((tmp_path / "r" / "metrics.json").read_text())["auc"]["value"]
    assert auc == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-6)


@pytest.mark.parametrize("argv_tail, message", [
    (["--names", "only_one"], "--names gives 1 name(s) for 2 prediction file(s)"),
    ([], "the label column is empty; give the true labels with --labels"),
    (["--n-bootstrap", "0"], "--n-bootstrap must be at least 1"),
])
def test_evaluate_user_errors(data, capsys, argv_tail, message):
    tmp_path, _, _ = data
    argv = ["evaluate", str(tmp_path / "pred_full.csv"), str(tmp_path / "pred_low.csv"), "-o", str(tmp_path / "r")]
    assert main(argv + argv_tail) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_compare_writes_json_and_prints_table(data, capsys):
    tmp_path, _, _ = data
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "pred_full.csv"), str(tmp_path / "pred_low.csv"), "--labels",
                 str(tmp_path / "labels.csv"), "-o", str(out), "--n-bootstrap", "100"]) == 0
    result = json.loads(out.read_text())
    assert result["names"] == ["pred_full", "pred_low"] and result["auc_a"] > result["auc_b"]
    assert set(result["per_class"]) == set(CLASSES)
    printed = capsys.readouterr().out
    assert "DeLong p" in printed and "macro" in printed


def test_detection_delegates_to_froc(data, monkeypatch, capsys):
    tmp_path, _, _ = data
    calls = []

    def froc_report(pred_csv, ground_truth, out_dir, n_bootstrap, seed, allow_missing):
        calls.append((pred_csv, ground_truth, out_dir, n_bootstrap, seed, allow_missing))
        return {"mean_sensitivity": 0.8125, "mean_sensitivity_ci95": [0.7, 0.9], "n_lesions": 12,
                "fp_rates": [1.0, 2.0], "sensitivity": [0.75, 0.875], "sensitivity_ci95": [[0.5, 1.0], [0.6, 1.0]],
                "curve": {"fp_per_case": [0.0, 1.0]}}

    monkeypatch.setitem(sys.modules, "nnkd.evaluation.froc", types.SimpleNamespace(froc_report=froc_report))
    assert main(["evaluate", "det.csv", "--detection", "--labels", "gt", "-o", "out", "--n-bootstrap", "7",
                 "--seed", "3", "--allow-missing"]) == 0
    assert calls == [("det.csv", "gt", "out", 7, 3, True)]
    printed = capsys.readouterr().out
    assert "mean_sensitivity: 0.8125 [0.7000, 0.9000]" in printed and "n_lesions: 12" in printed
    assert "sensitivity at 2 FP/case: 0.8750 [0.6000, 1.0000]" in printed and "curve" not in printed
    assert main(["evaluate", "a.csv", "b.csv", "--detection", "--labels", "gt", "-o", "out"]) == 2


def test_class_order_comes_from_the_predictions(tmp_path):
    probs, y = _probs(3)
    binary = np.stack([probs[:, 0] + probs[:, 1], probs[:, 2]], 1)  # "hcc" = old G3, second column: positive
    ids = [f"c{i}" for i in range(N)]
    write_prediction_csv(tmp_path / "p.csv", ids, binary, ["no_hcc", "hcc"])
    (tmp_path / "l.csv").write_text("case_id,label\n" + "".join(f"{c},{'hcc' if k == 2 else 'no_hcc'}\n"
                                                                for c, k in zip(ids, y)))
    assert main(["evaluate", str(tmp_path / "p.csv"), "--labels", str(tmp_path / "l.csv"), "-o",
                 str(tmp_path / "r"), "--n-bootstrap", "20"]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["positive_class"] == "hcc" and metrics["class_names"] == ["no_hcc", "hcc"]
    assert metrics["auc"]["value"] == pytest.approx(roc_auc_score(y == 2, binary[:, 1]))


def test_evaluate_refuses_before_any_progress_line(data, capsys):
    """No labels anywhere: the refusal names every file, and no 'evaluating ...' line comes first."""
    tmp_path, _, _ = data
    argv = ["evaluate", str(tmp_path / "pred_full.csv"), str(tmp_path / "pred_low.csv"), "-o", str(tmp_path / "r")]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "evaluating" not in out and out == ""
    assert "pred_full.csv: the label column is empty" in err and "pred_low.csv: the label column is empty" in err
    assert not (tmp_path / "r").exists()


def test_evaluate_missing_cases_refused_before_progress(data, capsys):
    tmp_path, ids, y = data
    (tmp_path / "few.csv").write_text("case_id,label\n" + "".join(f"{c},{CLASSES[k]}\n" for c, k in
                                                                  zip(ids[:10], y[:10])))
    assert main(["evaluate", str(tmp_path / "pred_full.csv"), "--labels", str(tmp_path / "few.csv"),
                 "-o", str(tmp_path / "r")]) == 2
    assert "evaluating" not in capsys.readouterr().out and not (tmp_path / "r").exists()


def test_compare_names_columns_by_folder(tmp_path, capsys):
    probs, y = _probs(3)
    ids = [f"c{i}" for i in range(N)]
    for folder in ("react", "nokd"):
        (tmp_path / folder).mkdir()
        write_prediction_csv(tmp_path / folder / "classification.csv", ids, probs, CLASSES, labels=y.tolist())
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "react" / "classification.csv"),
                 str(tmp_path / "nokd" / "classification.csv"), "-o", str(out), "--n-bootstrap", "20"]) == 0
    assert json.loads(out.read_text())["names"] == ["react", "nokd"]
    printed = capsys.readouterr().out
    assert "react" in printed and "nokd" in printed and "classification" not in printed.split("written")[0]


@pytest.mark.parametrize("paths, expected", [
    (["a/classification.csv", "b/classification.csv"], ["a", "b"]),
    (["x/preds/classification.csv", "y/preds/classification.csv"], ["x/preds", "y/preds"]),
    (["run/dose_1e6.csv", "run/dose_1e4.csv"], ["dose_1e6", "dose_1e4"]),
    (["a/m.csv", "b/m.csv"], ["a/m", "b/m"]),
])
def test_model_names_are_distinct(paths, expected):
    from nnkd.commands.evaluate import model_names

    assert model_names(paths) == expected


def test_identical_files_get_prefixed_names():
    from nnkd.commands.evaluate import model_names

    names = model_names(["/classification.csv", "/classification.csv"])
    assert len(set(names)) == 2 and names[0].startswith("A:")


def test_evaluate_names_the_model_in_metrics_and_titles(tmp_path, monkeypatch):
    from nnkd.evaluation import plots

    probs, y = _probs(4)
    ids = [f"c{i}" for i in range(N)]
    (tmp_path / "studentX").mkdir()
    write_prediction_csv(tmp_path / "studentX" / "classification.csv", ids, probs, CLASSES, labels=y.tolist())
    titles = []
    real = plots.plot_roc
    monkeypatch.setattr(plots, "plot_roc", lambda r: titles.append(real(r).axes[0].get_title()) or real(r))
    from nnkd.evaluation import report
    monkeypatch.setitem(report.FIGURES, "roc.png", plots.plot_roc)
    assert main(["evaluate", str(tmp_path / "studentX" / "classification.csv"), "-o", str(tmp_path / "r"),
                 "--n-bootstrap", "20"]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["model"] == "studentX"
    assert titles and titles[0].startswith("studentX: ROC")
