"""`nnkd evaluate --subsets`: AUC with CI per channel subset, against an independent computation."""
import csv

import numpy as np
from sklearn.metrics import roc_auc_score

from nnkd.cli import main
from nnkd.evaluation.predictions import write_prediction_csv


def _predictions(rng, n, signal):
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n))))
    return y, np.stack([1 - p, p], axis=1)


def test_subsets_report_matches_sklearn_per_subset(tmp_path, capsys):
    rng = np.random.default_rng(0)
    cases = [f"c{i:02d}" for i in range(40)]
    data = {"CT+FDG": _predictions(rng, 40, 2.0), "CT": _predictions(rng, 40, 0.7), "FDG": _predictions(rng, 40, 1.2)}
    names = ["benign", "malignant"]
    # one file of one subset, one file holding two subsets (its first 20 cases with CT+FDG, the rest FDG)
    write_prediction_csv(tmp_path / "a.csv", cases, data["CT"][1], names, [names[v] for v in data["CT"][0]],
                         ["CT"] * 40)
    write_prediction_csv(tmp_path / "b.csv", cases, data["CT+FDG"][1], names,
                         [names[v] for v in data["CT+FDG"][0]], ["CT+FDG"] * 20 + ["FDG"] * 20)
    out = tmp_path / "report"
    assert main(["evaluate", "--subsets", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "-o", str(out),
                 "--n-bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "subsets.csv")))
    assert [r["channels"] for r in rows] == ["CT+FDG", "CT", "FDG"]  # most channels first
    expected = {"CT+FDG": (data["CT+FDG"][0][:20], data["CT+FDG"][1][:20, 1]),
                "CT": (data["CT"][0], data["CT"][1][:, 1]),
                "FDG": (data["CT+FDG"][0][20:], data["CT+FDG"][1][20:, 1])}
    for r in rows:
        y, score = expected[r["channels"]]
        auc = roc_auc_score(y, score)
        assert int(r["n_cases"]) == len(y) and abs(float(r["auc"]) - auc) < 1e-9
        assert float(r["auc_ci_low"]) <= float(r["auc"]) <= float(r["auc_ci_high"])
        assert abs(float(r["auc_drop"]) - (roc_auc_score(*expected["CT+FDG"]) - auc)) < 1e-9
    assert (out / "subsets.png").stat().st_size > 0 and (out / "subsets.json").exists()
    assert "| channels | n | AUC [95% CI] |" in printed and f"| CT | 40 | {float(rows[1]['auc']):.3f} [" in printed


def test_subsets_without_a_channels_column_are_refused_and_nothing_is_written(tmp_path, capsys):
    names = ["benign", "malignant"]
    write_prediction_csv(tmp_path / "a.csv", ["x", "y"], [[0.2, 0.8], [0.6, 0.4]], names, names)
    write_prediction_csv(tmp_path / "b.csv", ["x", "x2"], [[0.2, 0.8], [0.6, 0.4]], names, names, ["CT", ""])
    rc = main(["evaluate", "--subsets", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path / 'a.csv'}: no 'channels' column" in err
    assert f"{tmp_path / 'b.csv'} (case x2): empty 'channels'" in err
    assert not (tmp_path / "r").exists()


def test_dice_per_subset_against_an_independent_computation(tmp_path, capsys):
    import nibabel as nib

    rng = np.random.default_rng(3)
    names = ["benign", "malignant"]
    masks = tmp_path / "labelsTr"
    masks.mkdir()
    truth = {}
    for i in range(6):
        t = np.zeros((8, 8, 8), np.uint8)
        t[2:6, 2:6, 2 + i % 3:6] = 1
        truth[f"c{i}"] = t
        nib.save(nib.Nifti1Image(t, np.eye(4)), str(masks / f"c{i}.nii.gz"))
    expected = {}
    for subset, noise in (("CT+FDG", 0.05), ("CT", 0.3)):
        folder = tmp_path / subset
        folder.mkdir()
        values = []
        for case, t in truth.items():
            seg = np.where(rng.random(t.shape) < noise, 1 - t, t).astype(np.uint8)
            nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / f"{case}.nii.gz"))
            values.append(2 * np.sum(seg * t) / (np.sum(seg) + np.sum(t)))
        expected[subset] = np.mean(values)
        write_prediction_csv(folder / "classification.csv", list(truth), [[0.7, 0.3], [0.4, 0.6]] * 3, names,
                             names * 3, [subset] * 6)
    out = tmp_path / "report"
    assert main(["evaluate", "--subsets", str(tmp_path / "CT" / "classification.csv"),
                 str(tmp_path / "CT+FDG" / "classification.csv"), "--masks", str(masks), "-o", str(out),
                 "--n-bootstrap", "50"]) == 0
    rows = {r["channels"]: r for r in csv.DictReader(open(out / "subsets.csv"))}
    for subset, value in expected.items():
        assert abs(float(rows[subset]["dice"]) - value) < 1e-9 and rows[subset]["n_dice"] == "6"
        assert float(rows[subset]["dice_ci_low"]) <= value <= float(rows[subset]["dice_ci_high"])
    assert expected["CT+FDG"] > expected["CT"] and "Dice [95% CI]" in capsys.readouterr().out
