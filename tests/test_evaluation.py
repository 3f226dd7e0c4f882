"""Classification evaluation: prediction CSVs, metrics against sklearn / naive references,
decision curves by hand, DeLong against a hand-computed case and an O(m n) reference, bootstrap."""
import json
import math
import os

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from nnkd.errors import NNKDError
from nnkd.evaluation.bootstrap import bootstrap, percentile_ci, stratified_indices
from nnkd.evaluation.calibration import brier_score, reliability
from nnkd.evaluation.classification import evaluate, evaluate_arrays, ovr_auc, rank_auc
from nnkd.evaluation.comparison import compare
from nnkd.evaluation.decision_curve import decision_curve, net_benefit, treat_all
from nnkd.evaluation.delong import delong_covariance, delong_test
from nnkd.evaluation.levels import evaluate_levels
from nnkd.evaluation.predictions import Predictions, align, read_prediction_csv, write_prediction_csv

CLASSES = ["G1", "G2", "G3"]


def make_probs(n, k=3, signal=1.5, seed=0, decimals=None):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every class present
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    if decimals is not None:  # coarse probabilities create ties
        p = np.round(p, decimals)
        p[:, -1] = 1 - p[:, :-1].sum(1)
    return p, y


def make_pred(probs, y, names=CLASSES, prefix="c", source="mem.csv"):
    ids = [f"{prefix}{i:03d}" for i in range(len(y))]
    return Predictions(ids, probs, list(names), [None] * len(y), source=source), {c: names[k] for c, k in zip(ids, y)}


# --- prediction CSV ---------------------------------------------------------------------------

def test_prediction_csv_round_trip(tmp_path):
    probs, y = make_probs(20)
    path = tmp_path / "p.csv"
    labels = [CLASSES[k] for k in y]
    labels[3] = None
    write_prediction_csv(path, [f"case{i}" for i in range(20)], probs, CLASSES, labels)
    header = path.read_text().splitlines()[0]
    assert header == "case_id,prob_G1,prob_G2,prob_G3,predicted,label"
    pred = read_prediction_csv(path)
    assert pred.class_names == CLASSES and pred.case_ids[0] == "case0"
    np.testing.assert_allclose(pred.probs, probs, rtol=1e-7)
    assert pred.labels == labels
    assert path.read_text().splitlines()[1].split(",")[4] == CLASSES[probs[0].argmax()]
    # integer labels are class indices
    write_prediction_csv(path, ["a", "b"], probs[:2], CLASSES, [2, 0])
    assert read_prediction_csv(path).labels == ["G3", "G1"]


@pytest.mark.parametrize("body, expected", [
    ("case_id,prob_a\nx,1\n", "missing column(s) at least two prob_<class> columns"),
    ("id,prob_a,prob_b\nx,0.5,0.5\n", "missing column(s) case_id"),
    ("case_id,prob_a,prob_b\nx,0.5,zero\n", "line 2 (case x): prob_b = 'zero' is not a number"),
    ("case_id,prob_a,prob_b\nx,0.5,0.5\ny,0.2,0.8\nx,0.1,0.9\n", "line 4: duplicate case id 'x' (first on line 2)"),
    ("case_id,prob_a,prob_b\nx,0.5,0.5\ny,0.6,0.6\n", "line 3 (case y): probabilities sum to 1.2"),
    ("case_id,prob_a,prob_b\nx,1.5,-0.5\n", "prob_a = 1.5 is not a probability"),
    ("case_id,prob_a,prob_b,label\nx,0.5,0.5,c\n", "label 'c' is not one of the classes"),
    ("case_id,prob_a,prob_b\nx,0.5\n", "line 2: 2 fields, header has 3"),
    ("case_id,prob_a,prob_b\n", "no prediction rows"),
])
def test_prediction_csv_errors_name_file_and_row(tmp_path, body, expected):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(NNKDError) as e:
        read_prediction_csv(path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_align_reorders_classes_and_reports_missing_cases():
    probs, y = make_probs(10)
    pred, labels = make_pred(probs[:, ::-1].copy(), y, names=CLASSES[::-1])
    labels = {c: CLASSES[k] for c, k in zip(pred.case_ids, y)}
    ids, p, yy = align(pred, labels, CLASSES)
    np.testing.assert_array_equal(p, probs)
    np.testing.assert_array_equal(yy, y)
    del labels["c004"]
    labels["extra_case"] = "G1"
    with pytest.raises(NNKDError, match=r"mem.csv: 1 predicted case\(s\) have no label: c004; "
                                        r"1 labelled case\(s\) have no prediction: extra_case"):
        align(pred, labels, CLASSES)
    ids, p, yy = align(pred, labels, CLASSES, allow_missing=True)
    assert "c004" not in ids and len(ids) == 9
    with pytest.raises(NNKDError, match="differ from the label classes"):
        align(pred, labels, ["G1", "G2", "X"])


# --- point metrics against sklearn / naive references -----------------------------------------

@pytest.mark.parametrize("k", [2, 3, 4])
def test_auc_matches_sklearn_with_ties(k):
    probs, y = make_probs(90, k=k, decimals=1)
    if k == 2:
        expected = roc_auc_score(y, probs[:, 1])
    else:
        expected = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    result = evaluate_arrays(probs, y, CLASSES[:k] if k <= 3 else ["a", "b", "c", "d"], n_bootstrap=20)
    assert result["auc"]["value"] == pytest.approx(expected, abs=1e-12)
    for i, (name, v) in enumerate(result["auc"]["per_class"].items()):
        cls = 1 if k == 2 else i
        assert v["value"] == pytest.approx(roc_auc_score(y == cls, probs[:, cls]), abs=1e-12)


def test_rank_auc_vectorised_rows_match_sklearn():
    probs, y = make_probs(40, decimals=1)
    idx = stratified_indices(y, 5, np.random.default_rng(3))
    rows = ovr_auc(probs, y, idx)  # (5, 3)
    for r in range(5):
        for k in range(3):
            assert rows[r, k] == pytest.approx(roc_auc_score(y[idx[r]] == k, probs[idx[r], k]), abs=1e-12)
    assert np.isnan(rank_auc(np.array([0.1, 0.2]), np.array([True, True])))


def test_accuracy_f1_confusion_against_naive_counts():
    probs, y = make_probs(70, signal=1.0, seed=4)
    r = evaluate_arrays(probs, y, CLASSES, n_bootstrap=10)
    pred = probs.argmax(1)
    cm = np.zeros((3, 3), int)
    for t, p in zip(y, pred):
        cm[t, p] += 1
    recall = cm.diagonal() / cm.sum(1)
    precision = cm.diagonal() / cm.sum(0)
    f1 = 2 * precision * recall / (precision + recall)
    assert r["confusion_matrix"] == cm.tolist()
    assert r["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert r["balanced_accuracy"] == pytest.approx(recall.mean())
    assert r["macro_f1"] == pytest.approx(f1.mean())
    assert r["per_class"]["G2"]["recall"] == pytest.approx(recall[1])
    json.dumps(r, allow_nan=False)  # strict JSON


def test_ece_and_brier_against_naive_loop():
    probs, y = make_probs(200, signal=0.8, seed=5)
    probs[0] = [1.0, 0.0, 0.0]          # confidence exactly 1 -> last bin
    probs[1] = [0.4, 0.3, 0.3]          # confidence on an inner edge -> bin (0.3, 0.4]
    r = reliability(probs, y, n_bins=10)
    conf, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, 11)
    ece, counts = 0.0, []
    for b in range(10):
        inside = (conf > edges[b]) & (conf <= edges[b + 1]) if b else (conf <= edges[1])
        counts.append(inside.sum())
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    assert r["count"].tolist() == counts
    assert r["ece"] == pytest.approx(ece, abs=1e-12)
    assert brier_score(probs, y) == pytest.approx(np.mean([sum((p - (k == t)) ** 2 for k, p in enumerate(row))
                                                           for row, t in zip(probs, y)]))
    perfect = np.eye(3)[y]
    assert reliability(perfect, y)["ece"] == 0.0 and brier_score(perfect, y) == 0.0


# --- decision curves ----------------------------------------------------------------------------

def test_net_benefit_hand_computed():
    scores = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.5])
    outcome = np.array([1, 1, 1, 0, 0, 0], bool)
    t = np.array([0.25, 0.5])
    # t=0.25: treat 0.9, 0.8, 0.3, 0.6, 0.5 -> TP 3, FP 2: 3/6 - 2/6 * (1/3) = 7/18
    # t=0.5 : treat 0.9, 0.8, 0.6, 0.5 (score == t is treated) -> TP 2, FP 2: 2/6 - 2/6 * 1 = 0
    np.testing.assert_allclose(net_benefit(scores, outcome, t), [7 / 18, 0.0], atol=1e-12)
    # treat all, prevalence 1/2: 1/2 - 1/2 * t/(1-t)
    np.testing.assert_allclose(treat_all(outcome, t), [0.5 - 0.5 / 3, 0.0], atol=1e-12)


def test_decision_curve_per_class_and_macro():
    probs, y = make_probs(50, seed=6)
    t = np.array([0.1, 0.3, 0.7])
    d = decision_curve(probs, y, CLASSES, thresholds=t)
    for k, name in enumerate(CLASSES):
        naive = [((probs[:, k] >= s) & (y == k)).sum() / 50 - ((probs[:, k] >= s) & (y != k)).sum() / 50 * s / (1 - s)
                 for s in t]
        np.testing.assert_allclose(d["per_class"][name]["model"], naive, atol=1e-12)
    np.testing.assert_allclose(d["macro"]["model"], np.mean([d["per_class"][c]["model"] for c in CLASSES], 0))
    np.testing.assert_allclose(d["macro"]["treat_all"],
                               np.mean([d["per_class"][c]["treat_all"] for c in CLASSES], 0))
    with pytest.raises(ValueError):
        decision_curve(probs, y, CLASSES, thresholds=np.array([0.0, 0.5]))


# --- DeLong ---------------------------------------------------------------------------------------

def naive_delong(positive, scores):
    """O(m n) structural components with the pairwise kernel psi(x, y) = [x > y] + [x == y] / 2."""
    x, yn = scores[:, positive], scores[:, ~positive]
    psi = (x[:, :, None] > yn[:, None, :]) + 0.5 * (x[:, :, None] == yn[:, None, :])  # (M, m, n)
    v10, v01 = psi.mean(2), psi.mean(1)
    m, n = x.shape[1], yn.shape[1]
    return psi.mean((1, 2)), np.cov(v10) / m + np.cov(v01) / n


def test_delong_hand_computed_example():
    # positives then negatives. A: X = (.9, .6), Y = (.7, .2, .1); B: X = (.8, .3), Y = (.5, .4, .1)
    # V10_A = (1, 2/3), V01_A = (1/2, 1, 1) -> AUC_A = 5/6;  V10_B = (1, 1/3), V01_B = (1/2, 1/2, 1) -> 2/3
    # S10 = [[1/18, 1/9], [1/9, 2/9]], S01 = [[1/12, 1/24], [1/24, 1/12]]
    # Var(diff) = (1/18 + 2/9 - 2/9) / 2 + (1/12 + 1/12 - 1/12) / 3 = 1/18; z = (1/6) / sqrt(1/18) = 1/sqrt(2)
    positive = np.array([1, 1, 0, 0, 0], bool)
    a = np.array([0.9, 0.6, 0.7, 0.2, 0.1])
    b = np.array([0.8, 0.3, 0.5, 0.4, 0.1])
    r = delong_test(positive, a, b)
    assert (r.auc_a, r.auc_b) == (pytest.approx(5 / 6), pytest.approx(2 / 3))
    assert r.se == pytest.approx(math.sqrt(1 / 18))
    assert r.z == pytest.approx(1 / math.sqrt(2))
    assert r.p == pytest.approx(2 * norm.sf(1 / math.sqrt(2)))
    assert r.p == pytest.approx(0.4795, abs=1e-4)
    _, cov = delong_covariance(np.stack([a, b]), positive)
    np.testing.assert_allclose(cov, [[1 / 18 / 2 + 1 / 12 / 3, 1 / 9 / 2 + 1 / 24 / 3],
                                     [1 / 9 / 2 + 1 / 24 / 3, 2 / 9 / 2 + 1 / 12 / 3]])


def test_delong_matches_naive_reference_with_ties():
    rng = np.random.default_rng(7)
    positive = rng.random(120) < 0.4
    a = np.round(rng.normal(positive * 1.0, 1.0), 1)  # rounding creates ties within and across classes
    b = np.round(0.5 * a + rng.normal(positive * 0.5, 1.0), 1)
    auc, cov = delong_covariance(np.stack([a, b]), positive)
    auc_ref, cov_ref = naive_delong(positive, np.stack([a, b]))
    np.testing.assert_allclose(auc, auc_ref, atol=1e-12)
    np.testing.assert_allclose(cov, cov_ref, atol=1e-14)
    assert auc[0] == pytest.approx(roc_auc_score(positive, a))
    r, swapped = delong_test(positive, a, b), delong_test(positive, b, a)
    assert swapped.z == pytest.approx(-r.z) and swapped.p == pytest.approx(r.p)
    same = delong_test(positive, a, a)
    assert same.difference == 0 and same.p == 1.0


# --- bootstrap ------------------------------------------------------------------------------------

def test_stratified_bootstrap_keeps_class_counts_and_is_seeded():
    y = np.array([0] * 7 + [1] * 3 + [2] * 5)
    idx = stratified_indices(y, 50, np.random.default_rng(0))
    assert idx.shape == (50, 15)
    assert all(np.bincount(y[row], minlength=3).tolist() == [7, 3, 5] for row in idx)
    stat = lambda i: y[i].astype(float).std(axis=1) + i.mean(axis=1)  # noqa: E731
    np.testing.assert_array_equal(bootstrap(y, stat, 30, seed=1), bootstrap(y, stat, 30, seed=1))
    assert not np.array_equal(bootstrap(y, stat, 30, seed=1), bootstrap(y, stat, 30, seed=2))


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (60, 600):
        probs, y = make_probs(n, signal=1.0, seed=8)
        auc = evaluate_arrays(probs, y, CLASSES, n_bootstrap=400, seed=0)["auc"]
        low, high = auc["ci95"]
        assert low < auc["value"] < high
        for v in auc["per_class"].values():
            assert v["ci95"][0] < v["value"] < v["ci95"][1]
        widths.append(high - low)
    assert widths[1] < 0.6 * widths[0]  # ~ 1/sqrt(10) expected
    np.testing.assert_allclose(percentile_ci(np.arange(101.0)[:, None]), [[2.5], [97.5]])


# --- evaluate / compare / levels --------------------------------------------------------------------

def test_evaluate_from_predictions_is_strict_json_and_complete():
    probs, y = make_probs(60, seed=9)
    pred, labels = make_pred(probs, y)
    r = evaluate(pred, labels, CLASSES, n_bootstrap=50)
    json.dumps(r, allow_nan=False)
    assert r["n_cases"] == 60 and r["task"] == "multiclass" and r["source"] == "mem.csv"
    assert set(r["roc"]) == {"G1", "G2", "G3", "macro"}
    assert len(r["decision_curve"]["thresholds"]) == 99 and set(r["decision_curve"]["per_class"]) == set(CLASSES)
    binary = evaluate(*make_pred(*make_probs(40, k=2, seed=9), names=["neg", "pos"]), n_bootstrap=50)
    assert binary["positive_class"] == "pos" and list(binary["auc"]["per_class"]) == ["pos"]
    with pytest.raises(NNKDError, match="at least two classes"):
        evaluate(pred, {c: "G1" for c in pred.case_ids}, CLASSES, n_bootstrap=5)


def test_validation_summary_of_a_single_class_split_has_null_auc(tmp_path):
    from nnkd.evaluation.report import write_classification_summary

    probs = np.array([[0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    path = str(tmp_path / "classification.csv")
    write_prediction_csv(path, ["a", "b", "c"], probs, ["neg", "pos"], ["pos"] * 3)
    summary = write_classification_summary(path, str(tmp_path / "summary.json"), n_bootstrap=5)
    assert summary["auc"] is None and "at least two classes" in summary["note"]
    assert summary["accuracy"] == pytest.approx(2 / 3) and summary["cases"] == 3
    stored = json.load(open(tmp_path / "summary.json"))
    assert stored["auc"]["value"] is None and stored["class_counts"] == {"neg": 0, "pos": 3}


def test_compare_binary_and_multiclass():
    probs, y = make_probs(80, k=2, seed=10)
    a, labels = make_pred(probs, y, names=["neg", "pos"])
    noisy = np.clip(probs[:, 1] + np.random.default_rng(1).normal(0, 0.3, 80), 0, 1)
    b = Predictions(a.case_ids[::-1], np.stack([1 - noisy, noisy], 1)[::-1], ["neg", "pos"], [None] * 80)
    r = compare(a, b, labels, n_bootstrap=300, seed=0)
    ref = delong_test(y == 1, probs[:, 1], noisy)
    assert r["delong"]["p"] == pytest.approx(ref.p) and r["difference"]["value"] == pytest.approx(ref.difference)
    low, high = r["difference"]["ci95"]
    assert low < r["difference"]["value"] < high
    json.dumps(r, allow_nan=False)

    p3, y3 = make_probs(90, seed=11)
    a3, labels3 = make_pred(p3, y3)
    itself = compare(a3, a3, labels3, n_bootstrap=50)
    assert itself["difference"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert all(c["p"] == 1.0 for c in itself["per_class"].values())
    b3, _ = make_pred(make_probs(90, signal=0.5, seed=12)[0], y3)
    r3 = compare(a3, b3, labels3, n_bootstrap=100)
    ea, eb = evaluate(a3, labels3, n_bootstrap=5), evaluate(b3, labels3, n_bootstrap=5)
    assert r3["difference"]["value"] == pytest.approx(ea["auc"]["value"] - eb["auc"]["value"])
    with pytest.raises(NNKDError, match="must predict the same cases"):
        compare(a3, make_pred(p3[:50], y3[:50])[0], labels3, allow_missing=True, n_bootstrap=5)


def test_evaluate_levels_rows_follow_input_and_share_resamples():
    probs, y = make_probs(60, seed=13)
    full, labels = make_pred(probs, y)
    low, _ = make_pred(make_probs(60, signal=0.3, seed=14)[0], y)
    table = evaluate_levels({"1e6": full, "1e3": low, "again": full}, labels, n_bootstrap=100, seed=3)
    assert [r["level"] for r in table["levels"]] == ["1e6", "1e3", "again"]
    r0, r1, r2 = table["levels"]
    assert r0["auc"] == pytest.approx(evaluate(full, labels, n_bootstrap=5)["auc"]["value"])
    assert (r0["auc_ci_low"], r0["auc_ci_high"]) == (r2["auc_ci_low"], r2["auc_ci_high"])
    assert r1["auc"] < r0["auc"] and {"auc_G1", "auc_G2", "auc_G3"} <= set(r0)


def test_report_files_and_plots(tmp_path):
    from nnkd.evaluation.report import format_metrics, write_levels_report, write_report

    probs, y = make_probs(40, seed=15)
    pred, labels = make_pred(probs, y)
    result = evaluate(pred, labels, n_bootstrap=20)
    written = write_report(str(tmp_path / "rep"), result)
    assert sorted(os.path.basename(p) for p in written) == ["calibration.png", "dca.png", "metrics.json", "roc.png"]
    for p in written[1:]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.load(open(written[0]))["auc"] == result["auc"]
    paths = write_levels_report(str(tmp_path / "lv"), evaluate_levels({"a": pred, "b": pred}, labels, n_bootstrap=20))
    assert open(paths[1]).read().splitlines()[0].startswith("level,n_cases,auc,auc_ci_low,auc_ci_high")
    assert "macro AUC" in format_metrics(result)
    assert not [f for f in os.listdir(tmp_path / "rep") if f.startswith(".")]  # no temporary leftovers


def test_class_absent_from_labels_gives_null_auc_not_a_crash():
    probs, y = make_probs(60, seed=16)
    y[y == 2] = 0  # no G3 case
    pred, labels = make_pred(probs, y)
    r = evaluate(pred, labels, n_bootstrap=30)
    json.dumps(r, allow_nan=False)
    assert r["auc"]["per_class"]["G3"] == {"value": None, "ci95": [None, None]}
    expected = np.mean([roc_auc_score(y == k, probs[:, k]) for k in (0, 1)])
    assert r["auc"]["value"] == pytest.approx(expected) and r["class_counts"]["G3"] == 0
    assert set(r["roc"]) == {"G1", "G2", "macro"}


def test_macro_auc_matches_sklearn_and_is_nan_for_one_class():

    from nnkd.evaluation.classification import macro_auc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), 40)
    expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(3)])
    assert macro_auc(probs, y) == pytest.approx(expected, abs=1e-12)
    two = rng.dirichlet(np.ones(2), 40)
    yb = (rng.random(40) < 0.4).astype(int)
    assert macro_auc(two, yb) == pytest.approx(roc_auc_score(yb, two[:, 1]), abs=1e-12)
    y_missing = np.where(y == 2, 0, y)  # class 2 absent: mean over the two present classes
    expected = np.mean([roc_auc_score(y_missing == c, probs[:, c]) for c in (0, 1)])
    assert macro_auc(probs, y_missing) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(macro_auc(probs, np.zeros(40, int)))
