"""Damaged images are found before nnU-Net reads them: `nnkd check` on a raw dataset and the per-case check."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnkd.cli import main
from nnkd.image_check import check_case, check_image, check_raw_dataset


def _nii(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _dataset(root, n_cases=3):
    folder = root / "Dataset123_Check"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n_cases):
        for c in range(2):
            _nii(folder / "imagesTr" / f"case{i}_{c:04d}.nii.gz", rng.normal(size=(8, 8, 8)))
        _nii(folder / "labelsTr" / f"case{i}.nii.gz", (rng.random((8, 8, 8)) > 0.7).astype(np.float32))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return folder


def _snapshot(folder):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs}


def test_truncated_gzip_is_found_although_simpleitk_reads_it_zero_filled(tmp_path):
    path = _nii(tmp_path / "a_0000.nii.gz", np.random.default_rng(1).normal(size=(16, 16, 16)))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:500])
    assert sitk.GetArrayFromImage(sitk.ReadImage(path)).shape == (16, 16, 16)  # the silent failure
    info, problems = check_image(path)
    assert info is None and problems == [problems[0]] and "a_0000.nii.gz: truncated or corrupt gzip" in problems[0]


def test_nan_and_inf_voxels_are_counted(tmp_path):
    data = np.ones((4, 4, 4))
    data[0, 0, 0], data[1, 1, 1] = np.nan, -np.inf
    path = _nii(tmp_path / "n_0000.nii.gz", data)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(path))).all()  # ITK returns them as numbers
    assert check_image(path)[1] == ["n_0000.nii.gz: 2 of 64 voxels are NaN or infinite"]
    mha = str(tmp_path / "m_0000.mha")
    sitk.WriteImage(sitk.GetImageFromArray(data.astype(np.float32)), mha)
    assert check_image(mha)[1] == ["m_0000.mha: 2 of 64 voxels are NaN or infinite"]


def test_uncompressed_truncated_garbage_and_empty_files(tmp_path):
    nii = _nii(tmp_path / "u.nii", np.ones((16, 16, 16)))
    open(nii, "r+b").truncate(1000)
    assert "u.nii: unreadable" in check_image(nii)[1][0]
    garbage = tmp_path / "g.nii.gz"
    garbage.write_bytes(b"\x00" * 300)
    assert "g.nii.gz: truncated or corrupt gzip" in check_image(str(garbage))[1][0]
    empty = tmp_path / "e.nii.gz"
    empty.write_bytes(b"")
    assert check_image(str(empty))[1] == ["e.nii.gz: empty file"]


def test_case_shape_geometry_and_label_values(tmp_path):
    a = _nii(tmp_path / "c_0000.nii.gz", np.zeros((8, 8, 8)))
    b = _nii(tmp_path / "c_0001.nii.gz", np.zeros((8, 8, 6)))
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    c = _nii(tmp_path / "c_0002.nii.gz", np.zeros((8, 8, 8)), shifted)
    lab = np.zeros((8, 8, 8))
    lab[0, 0, 0] = 3
    label = _nii(tmp_path / "c.nii.gz", lab)
    assert check_case("c", [a, b, c], label, [0, 1]) == [
        "case c: c.nii.gz: label value(s) [3] not in dataset.json labels [0, 1]",
        "case c: c_0001.nii.gz: shape (8, 8, 6) differs from c_0000.nii.gz (8, 8, 8)",
        "case c: c_0002.nii.gz: geometry (spacing, origin or direction) differs from c_0000.nii.gz",
    ]
    assert check_case("c", [a], label, [0, 1, 3]) == []


def test_raw_dataset_lists_every_problem_at_once(tmp_path):
    folder = _dataset(tmp_path)
    assert check_raw_dataset(str(folder)) == (3, [])
    img = folder / "imagesTr"
    data = open(img / "case0_0001.nii.gz", "rb").read()
    open(img / "case0_0001.nii.gz", "wb").write(data[:500])
    nan = np.zeros((8, 8, 8))
    nan[2, 2, 2] = np.nan
    _nii(img / "case1_0000.nii.gz", nan)
    os.remove(img / "case2_0001.nii.gz")
    _nii(folder / "labelsTr" / "orphan.nii.gz", np.zeros((8, 8, 8)))
    before = _snapshot(folder)
    n, problems = check_raw_dataset(str(folder))
    assert n == 3 and problems[:2] == ["labelsTr/orphan.nii.gz: label without images in imagesTr",
                                       "case case2: missing channel file(s) imagesTr/case2_0001.nii.gz"]
    assert any(p.startswith("case case0: case0_0001.nii.gz: truncated or corrupt gzip") for p in problems)
    assert "case case1: case1_0000.nii.gz: 1 of 512 voxels are NaN or infinite" in problems
    assert len(problems) == 4, problems
    assert _snapshot(folder) == before


def test_check_command_by_name_and_id(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    folder = _dataset(raw, 2)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    assert main(["check", "Dataset123_Check", "--quiet"]) == 0
    assert "2 case(s) checked, no problems found" in capsys.readouterr().out
    open(folder / "imagesTr" / "case1_0000.nii.gz", "r+b").truncate(400)
    assert main(["check", "123"]) == 2
    err = capsys.readouterr().err
    assert "1 problem(s) in 2 case(s)" in err and "case case1: case1_0000.nii.gz: truncated or corrupt" in err
    assert "checking case 2: case1" in err  # progress as it happens
    assert "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["check"])
