"""`nnkd crossval` and `nnkd ensemble`: out-of-fold pooling of nnU-Net's folds, per-fold statistics,
model ranking with DeLong, and refusals that name missing folds and write nothing."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from nnkd.cli import main
from nnkd.errors import NNKDError
from nnkd.evaluation.crossval import compare_models, crossval_report, gather
from nnkd.evaluation.delong import delong_test
from nnkd.evaluation.predictions import read_prediction_csv, write_prediction_csv

DATASET = "Dataset061_Cv"
N = 60
RNG = np.random.default_rng(3)
Y = RNG.integers(0, 2, N)
Y[:2] = [0, 1]
CASES = [f"case_{i:03d}" for i in range(N)]
SCORES = {  # P(class "high"): a good model, a weak one
    "nnKDTrainerGood": 1 / (1 + np.exp(-(2.5 * (Y - 0.5) + RNG.normal(0, 1, N)))),
    "nnKDTrainerWeak": 1 / (1 + np.exp(-(0.4 * (Y - 0.5) + RNG.normal(0, 1, N)))),
}
FOLD = np.arange(N) % 5


@pytest.fixture
def results(tmp_path, monkeypatch):
    """nnUNet_* roots with DATASET and, per trainer, five folds of validation classification.csv."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / key).mkdir()
        monkeypatch.setenv(key, str(tmp_path / key))
    (tmp_path / "nnUNet_raw" / DATASET).mkdir()
    root = tmp_path / "nnUNet_results" / DATASET
    for trainer, p in SCORES.items():
        for k in range(5):
            sel = FOLD == k
            write_prediction_csv(root / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{k}" / "validation" /
                                 "classification.csv", [c for c, s in zip(CASES, sel) if s],
                                 np.stack([1 - p[sel], p[sel]], 1), ["low", "high"], list(Y[sel]))
    return root


def _tree(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


def test_out_of_fold_report_matches_an_independent_computation(results):
    oof = gather(str(results / "nnKDTrainerGood__nnUNetPlans__3d_fullres"))
    assert oof.folds == [0, 1, 2, 3, 4] and not oof.missing and len(oof.predictions.case_ids) == N
    report = crossval_report(oof, n_bootstrap=200)
    p, order = SCORES["nnKDTrainerGood"], [CASES.index(c) for c in oof.predictions.case_ids]
    assert report["auc"]["value"] == pytest.approx(roc_auc_score(Y, p))
    low, high = report["auc"]["ci95"]
    assert low < report["auc"]["value"] < high
    fold_aucs = [roc_auc_score(Y[FOLD == k], p[FOLD == k]) for k in range(5)]
    assert [r["auc"] for r in report["per_fold"]] == pytest.approx(fold_aucs)
    assert report["fold_auc"]["mean"] == pytest.approx(np.mean(fold_aucs))
    assert report["fold_auc"]["sd"] == pytest.approx(np.std(fold_aucs, ddof=1))
    assert [oof.fold_of[c] for c in oof.predictions.case_ids] == list(FOLD[order])
    assert report["pooled"]["decision_curve"] and sum(report["pooled"]["calibration"]["count"]) == N


def test_missing_folds_are_named_and_nothing_is_written(results, capsys):
    folder = results / "nnKDTrainerGood__nnUNetPlans__3d_fullres"
    for k in (1, 3):
        os.remove(folder / f"fold_{k}" / "validation" / "classification.csv")
    before = _tree(results)
    rc = main(["crossval", "61", "-c", "3d_fullres", "-tr", "nnKDTrainerGood", "nnKDTrainerMissing"])
    err = capsys.readouterr().err
    assert rc == 2 and _tree(results) == before
    assert "nnKDTrainerGood__nnUNetPlans__3d_fullres: 2 of 5 fold(s) have no validation classification file" in err
    for k in (1, 3):
        assert str(folder / f"fold_{k}" / "validation" / "classification.csv") in err
    assert "--allow-missing" in err
    assert f"model folder not found: {results / 'nnKDTrainerMissing__nnUNetPlans__3d_fullres'}" in err  # both at once

    oof = gather(str(folder), allow_missing=True)
    assert oof.folds == [0, 2, 4] and len(oof.missing) == 2
    assert sorted(oof.predictions.case_ids) == [c for c, k in zip(CASES, FOLD) if k in (0, 2, 4)]
    rc = main(["crossval", DATASET, "-c", "3d_fullres", "-tr", "nnKDTrainerGood", "--allow-missing",
               "--n-bootstrap", "50"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("skipped (--allow-missing)") == 2


def test_a_case_in_two_folds_is_refused(results):
    folder = results / "nnKDTrainerGood__nnUNetPlans__3d_fullres"
    csv = folder / "fold_0" / "validation" / "classification.csv"
    dup = csv.read_text().splitlines()[1].replace("case_000", "case_001")  # case_001 is in fold 1
    csv.write_text(csv.read_text() + dup + "\n")
    with pytest.raises(NNKDError, match="case case_001 is a validation case of fold_0 and fold_1"):
        gather(str(folder))


def test_models_are_ranked_and_the_best_recommended(results, capsys):
    out = results.parent.parent / "cv"
    rc = main(["crossval", DATASET, "-c", "3d_fullres", "-tr", "nnKDTrainerWeak", "nnKDTrainerGood",
               "-o", str(out), "--n-bootstrap", "200"])
    printed = capsys.readouterr().out
    assert rc == 0
    comparison = json.loads((out / "comparison.json").read_text())
    good, weak = "nnKDTrainerGood__nnUNetPlans__3d_fullres", "nnKDTrainerWeak__nnUNetPlans__3d_fullres"
    ranked = [r["model"] for r in comparison["ranking"]]
    assert set(ranked) == {good, weak, f"ensemble({weak} + {good})"}
    aucs = {r["model"]: r["auc"] for r in comparison["ranking"]}
    assert aucs[good] == pytest.approx(roc_auc_score(Y, SCORES["nnKDTrainerGood"]))
    assert aucs[f"ensemble({weak} + {good})"] == pytest.approx(
        roc_auc_score(Y, (SCORES["nnKDTrainerGood"] + SCORES["nnKDTrainerWeak"]) / 2))
    best = comparison["recommended"]
    assert best == max(aucs, key=aucs.get) and ranked[0] == best
    row = next(r for r in comparison["ranking"] if r["model"] == weak)
    best_scores = (SCORES["nnKDTrainerGood"] if best == good
                   else (SCORES["nnKDTrainerGood"] + SCORES["nnKDTrainerWeak"]) / 2)
    expected = delong_test(Y == 1, best_scores, SCORES["nnKDTrainerWeak"])
    assert row["vs_best"]["difference"] == pytest.approx(expected.difference)
    assert row["vs_best"]["delong_p"] == pytest.approx(expected.p)
    assert "recommended for classification: " + best in printed
    for model in (good, weak):
        assert {"classification.csv", "metrics.json", "crossval.json", "roc.png", "dca.png",
                "calibration.png"} <= set(os.listdir(out / model))
    pooled = read_prediction_csv(out / good / "classification.csv")  # readable by nnkd evaluate / compare
    assert len(pooled.case_ids) == N


def test_comparison_without_ensembles_and_on_shared_cases_only(results):
    folder = results / "nnKDTrainerWeak__nnUNetPlans__3d_fullres"
    os.remove(folder / "fold_4" / "validation" / "classification.csv")
    oofs = [gather(str(results / "nnKDTrainerGood__nnUNetPlans__3d_fullres")), gather(str(folder), allow_missing=True)]
    comparison = compare_models(oofs, ensembles=False, n_bootstrap=100)
    shared = FOLD != 4
    assert comparison["n_cases"] == shared.sum() and len(comparison["ranking"]) == 2
    assert comparison["excluded_cases"]["nnKDTrainerGood__nnUNetPlans__3d_fullres"] == N - shared.sum()
    assert comparison["ranking"][0]["auc"] == pytest.approx(roc_auc_score(Y[shared], SCORES["nnKDTrainerGood"][shared]))


def test_ensemble_command_averages_and_refuses_mismatches(results, tmp_path, capsys):
    a = results / "nnKDTrainerGood__nnUNetPlans__3d_fullres" / "fold_0" / "validation" / "classification.csv"
    b = results / "nnKDTrainerWeak__nnUNetPlans__3d_fullres" / "fold_0" / "validation" / "classification.csv"
    out = tmp_path / "ens.csv"
    assert main(["ensemble", str(a), str(b), "-o", str(out)]) == 0
    ens, pa, pb = (read_prediction_csv(p) for p in (out, a, b))
    assert np.allclose(ens.probs, (pa.probs + pb.probs) / 2) and ens.labels == pa.labels
    other = results / "nnKDTrainerWeak__nnUNetPlans__3d_fullres" / "fold_1" / "validation" / "classification.csv"
    bad = tmp_path / "bad.csv"
    assert main(["ensemble", str(a), str(other), "-o", str(bad)]) == 2
    assert "predict different cases" in capsys.readouterr().err and not bad.exists()
