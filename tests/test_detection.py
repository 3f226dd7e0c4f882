import argparse
import csv
import os
import pickle

import numpy as np
import pytest

from nnkd.commands import detect as detect_cmd
from nnkd.detection import Boxes, detect, read_box_csv, read_nnunet_probabilities, write_box_csv
from nnkd.errors import NNKDError


def _two_blobs():
    p = np.full((20, 20), 0.1)
    p[2:5, 3:7] = 0.7
    p[3, 4] = 0.9
    p[10:15, 12:14] = 0.6
    p[12, 13] = 0.8
    p[18, 18] = 0.95  # a one-voxel blob
    return p


def _weighted_centre(p, rows, cols):
    sub = p[rows, cols]
    yy, xx = np.mgrid[rows, cols]
    return [(sub * yy).sum() / sub.sum(), (sub * xx).sum() / sub.sum()]


def test_two_blobs_scores_boxes_centres_and_min_size():
    p = _two_blobs()
    det = detect(p, threshold=0.5, min_size=2)
    assert det.scores.tolist() == pytest.approx([0.9, 0.8])
    assert det.lo.tolist() == [[2, 3], [10, 12]] and det.hi.tolist() == [[4, 6], [14, 13]]
    np.testing.assert_allclose(det.centers[0], _weighted_centre(p, slice(2, 5), slice(3, 7)))
    np.testing.assert_allclose(det.centers[1], _weighted_centre(p, slice(10, 15), slice(12, 14)))
    all_det = detect(p, threshold=0.5)
    assert all_det.scores.tolist() == pytest.approx([0.95, 0.9, 0.8])
    assert all_det.lo[0].tolist() == all_det.hi[0].tolist() == all_det.centers[0].tolist() == [18, 18]


def test_softmax_channel_threshold_strict_and_full_connectivity():
    p = np.zeros((6, 6))
    p[1, 1] = p[2, 2] = 0.8  # diagonal neighbours: one component
    p[4, 4] = 0.5  # not > 0.5
    softmax = np.stack([1 - p, p])
    det = detect(softmax, lesion_channel=1)
    assert len(det) == 1 and det.lo.tolist() == [[1, 1]] and det.hi.tolist() == [[2, 2]]
    assert len(detect(p, threshold=0.9)) == 0


def test_3d_blob():
    p = np.zeros((5, 6, 7))
    p[1:3, 2:5, 3:4] = 0.6
    p[2, 3, 3] = 0.7
    det = detect(p)
    assert det.ndim == 3 and det.scores.tolist() == pytest.approx([0.7])
    assert det.lo.tolist() == [[1, 2, 3]] and det.hi.tolist() == [[2, 4, 3]]


def test_box_csv_roundtrip_with_empty_case(tmp_path):
    cases = {"a": detect(_two_blobs()), "b": Boxes.empty(2)}
    path = tmp_path / "d.csv"
    write_box_csv(str(path), cases)
    back = read_box_csv(str(path), scored=True)
    assert list(back) == ["a", "b"] and len(back["b"]) == 0
    np.testing.assert_allclose(back["a"].centers, cases["a"].centers, rtol=1e-7)
    np.testing.assert_allclose(back["a"].scores, cases["a"].scores)


def _write_nnunet_prediction(folder, case, probabilities):
    """What nnU-Net 2.8.1's export_prediction_from_logits writes with save_probabilities=True."""
    np.savez_compressed(os.path.join(folder, case + ".npz"), probabilities=probabilities.astype(np.float32))
    with open(os.path.join(folder, case + ".pkl"), "wb") as f:
        pickle.dump({"spacing": [999, 1, 1], "shape_before_cropping": probabilities.shape[1:]}, f)


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="nnkd")
    detect_cmd.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_end_to_end_on_nnunet_npz(tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    p = _two_blobs()
    _write_nnunet_prediction(str(pred), "case_001", np.stack([1 - p, p])[:, None])  # 2D: (C, 1, H, W)
    _write_nnunet_prediction(str(pred), "case_000", np.stack([np.ones((1, 20, 20)), np.zeros((1, 20, 20))]))
    out = tmp_path / "det.csv"
    assert _run_cli(["detect", "-i", str(pred), "-o", str(out), "--min-size", "2"]) == 0
    assert "2 detection(s) for 2 case(s)" in capsys.readouterr().out
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["case_id", "score", "center_0", "center_1", "box_lo_0", "box_lo_1", "box_hi_0", "box_hi_1"]
    assert rows[1] == ["case_000"] + [""] * 7
    assert [r[0] for r in rows[2:]] == ["case_001", "case_001"]
    assert float(rows[2][1]) == pytest.approx(0.9) and rows[2][4:] == ["2", "3", "4", "6"]


def test_cli_folder_without_npz_is_a_clear_error(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "case.nii.gz").write_bytes(b"")
    out = tmp_path / "det.csv"
    with pytest.raises(NNKDError, match="--save_probabilities"):
        _run_cli(["detect", "-i", str(tmp_path / "pred"), "-o", str(out)])
    assert not out.exists()


def test_bad_npz_and_channel_errors_name_the_file_and_leave_no_csv(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    _write_nnunet_prediction(str(pred), "good", np.zeros((2, 4, 4, 4)))
    np.savez_compressed(pred / "bad.npz", softmax=np.zeros((2, 4, 4)))
    out = tmp_path / "det.csv"
    with pytest.raises(NNKDError, match=r"bad\.npz.*'probabilities'"):
        _run_cli(["detect", "-i", str(pred), "-o", str(out)])
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".det")]
    with pytest.raises(NNKDError, match=r"good\.npz.*channel 5"):
        read_nnunet_probabilities(str(pred / "good.npz"), 5)


def test_read_box_csv_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("case_id,score,center_0,center_1,box_lo_0,box_lo_1,box_hi_0,box_hi_1\n"
                    "a,0.9,1,1,0,0,2,x\n")
    with pytest.raises(NNKDError, match=r"d\.csv, line 2 \(case a\): box_hi_1 = 'x'"):
        read_box_csv(str(path), scored=True)
    path.write_text("case_id,center_0,box_lo_0\n")
    with pytest.raises(NNKDError, match="header"):
        read_box_csv(str(path), scored=False)
