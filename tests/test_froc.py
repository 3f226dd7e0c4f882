import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnkd.detection import Boxes, write_box_csv
from nnkd.errors import NNKDError
from nnkd.evaluation.froc import Matched, froc_report, interp_rows, match_all, weighted_curves

FAR = (50.0, 50.0)  # a point far from every lesion


def _gt_csv(path):
    # case A: lesions A1 (box 8..12) and A2 (box 28..32); case B: lesion B1 (box 19..21); case C: none
    path.write_text("case_id,center_0,center_1,box_lo_0,box_lo_1,box_hi_0,box_hi_1\n"
                    "A,10,10,8,8,12,12\nA,30,30,28,28,32,32\nB,20,20,19,19,21,21\nC\n")
    return str(path)


def _det(rows):
    scores = np.array([s for s, _ in rows], dtype=float)
    centers = np.array([c for _, c in rows], dtype=float).reshape(-1, 2)
    return Boxes(centers, centers.copy(), centers.copy(), scores)


def _hand_made(tmp_path):
    dets = {
        "A": _det([(0.95, (10, 10)), (0.85, (11, 11)),  # A1 hit, then an extra hit on A1 (ignored)
                   (0.5, FAR), (0.5, (30, 30))]),  # a FP and the A2 hit tied at 0.5
        "B": _det([(0.75, FAR), (0.70, (20, 20)), (0.30, FAR)]),
        "C": _det([(0.90, FAR), (0.80, FAR), (0.65, FAR), (0.60, FAR), (0.5, FAR), (0.40, FAR)]),
    }
    pred = tmp_path / "det.csv"
    write_box_csv(str(pred), dets)
    return str(pred), _gt_csv(tmp_path / "gt.csv")


def test_hand_made_froc(tmp_path):
    pred, gt = _hand_made(tmp_path)
    # 3 cases (C negative), 3 lesions. Operating points (FP/case, sensitivity), highest threshold first:
    # 0.95 (0, 1/3)  0.90 (1/3, 1/3)  0.80 (2/3, 1/3)  0.75 (1, 1/3)  0.70 (1, 2/3)  0.65 (4/3, 2/3)
    # 0.60 (5/3, 2/3)  0.50 (7/3, 1)  [two FPs and A2 tie]  0.40 (8/3, 1)  0.30 (3, 1)
    # 1 FP/case: two points at x = 1; interpolation takes the later one: 2/3.
    # 2 FP/case: between (5/3, 2/3) and (7/3, 1): 2/3 + 1/2 * 1/3 = 5/6.  3 and 4 FP/case: 1.
    expected = [2 / 3, 5 / 6, 1.0, 1.0]
    report = froc_report(pred, gt, str(tmp_path / "out"), n_bootstrap=200, seed=0)
    assert report["sensitivity"] == pytest.approx(expected)
    assert report["mean_sensitivity"] == pytest.approx(sum(expected) / 4)
    assert report["sensitivity_at_2fp"] == pytest.approx(5 / 6)
    assert (report["n_cases"], report["n_positive_cases"], report["n_lesions"], report["n_detections"]) == (3, 2, 3, 13)
    assert report["curve"]["fp_per_case"] == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 1, 4 / 3, 5 / 3, 7 / 3, 8 / 3, 3])
    third = 1 / 3
    assert report["curve"]["sensitivity"] == pytest.approx([0, third, third, third, third, 2 * third, 2 * third,
                                                            2 * third, 1, 1, 1])
    assert report["curve"]["threshold"][:3] == [None, 0.95, 0.9]
    lo, hi = report["mean_sensitivity_ci95"]
    assert 0 <= lo <= report["mean_sensitivity"] <= hi <= 1
    saved = json.loads((tmp_path / "out" / "froc.json").read_text())
    assert saved["sensitivity"] == pytest.approx(expected)
    assert (tmp_path / "out" / "froc.png").stat().st_size > 0
    again = froc_report(pred, gt, str(tmp_path / "out2"), n_bootstrap=200, seed=0)
    assert again["mean_sensitivity_ci95"] == report["mean_sensitivity_ci95"]


def test_negative_cases_count_in_the_fp_rate(tmp_path):
    pred, gt = _hand_made(tmp_path)
    with open(gt, "a") as f:
        f.write("D\n")
    with open(pred, "a") as f:
        f.write("D,,,,,,,\n")
    report = froc_report(pred, gt, str(tmp_path / "out"), n_bootstrap=20)
    assert report["curve"]["fp_per_case"][-1] == pytest.approx(9 / 4)


def _monai_sensitivity(m, rates):
    """MONAI's (CAMELYON) FROC as the independent reference."""
    from monai.metrics import compute_froc_curve_data, compute_froc_score

    # MONAI skips its lowest threshold (it expects a 0 for each missed lesion): a -inf sentinel keeps every score
    tp = np.concatenate([m.lesion_scores, [-np.inf]])
    fps, sens = compute_froc_curve_data(m.fp_scores, tp, len(m.lesion_scores), m.n_cases)
    return np.array([compute_froc_score(fps, sens, (r,)) for r in rates])


def _random_matched(rng, n_cases=12):
    n_fp, n_les = 40, 15
    fp = rng.choice([0.2, 0.4, 0.5, 0.7, 0.9], n_fp) + rng.choice([0, 0.05], n_fp)  # many ties
    les = np.where(rng.random(n_les) < 0.2, -np.inf, rng.choice([0.3, 0.5, 0.7, 0.95], n_les))
    return Matched([f"c{i}" for i in range(n_cases)], fp, rng.integers(0, n_cases, n_fp), les,
                   rng.integers(0, n_cases, n_les), n_fp + n_les)


def test_weighted_curves_match_monai_on_unit_and_duplicated_cases():
    rng = np.random.default_rng(0)
    rates = np.array([0.5, 1, 2, 3, 4, 7.5])
    for _ in range(5):
        m = _random_matched(rng)
        ref = _monai_sensitivity(m, rates)
        got = interp_rows(rates, *weighted_curves(m, np.ones((1, m.n_cases)))[:2])[0]
        np.testing.assert_allclose(got, ref)
        # integer weights == MONAI on the data set with each case repeated that many times
        counts = rng.multinomial(m.n_cases, np.full(m.n_cases, 1 / m.n_cases))
        rep = np.repeat(np.arange(m.n_cases), counts)
        new_id = {old: [k for k, o in enumerate(rep) if o == old] for old in range(m.n_cases)}
        fp_s, fp_c, les_s, les_c = [], [], [], []
        for s, c in zip(m.fp_scores, m.fp_case):
            fp_s += [s] * counts[c]
            fp_c += new_id[c]
        for s, c in zip(m.lesion_scores, m.lesion_case):
            les_s += [s] * counts[c]
            les_c += new_id[c]
        dup = Matched(list(rep), np.array(fp_s), np.array(fp_c), np.array(les_s), np.array(les_c), 0)
        if not len(dup.lesion_scores):
            continue
        ref = _monai_sensitivity(dup, rates)
        got = interp_rows(rates, *weighted_curves(m, counts[None].astype(float))[:2])[0]
        np.testing.assert_allclose(got, ref)


def _label_folder(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    lab = np.zeros((24, 24), np.uint8)
    for i in range(10, 17):  # a diagonal line: box 10..16, centre 13, half diagonal 7 * sqrt(2) / 2 = 4.95
        lab[i, i] = 1
    sitk.WriteImage(sitk.GetImageFromArray(lab), str(folder / "P.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((24, 24), np.uint8)), str(folder / "N.nii.gz"))
    return str(folder)


def test_hit_criterion_edge_cases_with_label_images(tmp_path):
    gt = _label_folder(tmp_path)
    dets = {"P": _det([(0.9, (10, 16)),  # outside the mask, 4.24 from the centre: hit
                       (0.8, (17.4, 13)),  # outside the mask, 4.4 from the centre: extra hit, not a FP
                       (0.7, (18.0, 13)),  # 5.0 > 4.95 from the centre: FP
                       (0.6, (16, 16))]),  # inside the mask: extra hit
            "N": _det([])}
    m = match_all(dets, gt)
    assert m.lesion_scores.tolist() == [0.9]
    assert m.fp_scores.tolist() == [0.7]
    dets["P"] = _det([(0.6, (18.0, 13))])
    m = match_all(dets, gt)
    assert m.lesion_scores.tolist() == [-np.inf] and m.fp_scores.tolist() == [0.6]


def test_inside_box_counts_even_beyond_half_diagonal_for_csv_ground_truth(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("case_id,center_0,center_1,box_lo_0,box_lo_1,box_hi_0,box_hi_1\nA,10,10,10,10,20,20\n")
    m = match_all({"A": _det([(0.9, (19, 19)), (0.8, (21, 21))])}, str(gt))
    # (19, 19): 12.7 from the given centre (> 7.78) but inside the box: hit; (21, 21): outside both: FP
    assert m.lesion_scores.tolist() == [0.9] and m.fp_scores.tolist() == [0.8]


def test_png_label_folder_via_nnunet_reader(tmp_path):
    from skimage.io import imsave

    folder = tmp_path / "png"
    folder.mkdir()
    lab = np.zeros((16, 16), np.uint8)
    lab[3:6, 4:8] = 1
    imsave(str(folder / "X.png"), lab, check_contrast=False)
    m = match_all({"X": _det([(0.7, (4, 5))])}, str(folder))
    assert m.lesion_scores.tolist() == [0.7] and m.n_cases == 1


def test_case_mismatches_are_clear_errors_and_write_nothing(tmp_path):
    pred, gt = _hand_made(tmp_path)
    gt_missing = tmp_path / "gt2.csv"
    gt_missing.write_text(open(gt).read().replace("C\n", ""))
    out = tmp_path / "out"
    with pytest.raises(NNKDError, match=r"1 case\(s\) have no ground truth.*: C"):
        froc_report(pred, str(gt_missing), str(out))
    gt_extra = tmp_path / "gt3.csv"
    gt_extra.write_text(open(gt).read() + "E\n")
    with pytest.raises(NNKDError, match=r"no row for 1 ground-truth case\(s\): E"):
        froc_report(pred, str(gt_extra), str(out))
    assert not out.exists() or not os.listdir(out)
    with pytest.raises(NNKDError, match="neither a box CSV nor a folder"):
        froc_report(pred, str(tmp_path / "missing"), str(out))


def test_unreadable_label_image_names_the_file(tmp_path):
    gt = _label_folder(tmp_path)
    with open(os.path.join(gt, "Q.nii.gz"), "wb") as f:
        f.write(b"not an image")
    with pytest.raises(NNKDError, match=r"Q\.nii\.gz"):
        match_all({"P": _det([]), "N": _det([]), "Q": _det([])}, gt)


def test_allow_missing_evaluates_only_the_cases_with_rows(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("case_id,center_0,center_1,box_lo_0,box_lo_1,box_hi_0,box_hi_1\n"
                  "A,10,10,8,8,12,12\nB,20,20,18,18,22,22\n")
    dets = {"A": _det([(0.9, (10, 10))])}
    with pytest.raises(NNKDError, match="no row for 1 ground-truth case"):
        match_all(dets, str(gt))
    m = match_all(dets, str(gt), allow_missing=True)
    assert m.n_cases == 1 and len(m.lesion_scores) == 1
