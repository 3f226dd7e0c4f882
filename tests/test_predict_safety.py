"""`nnkd predict` refuses bad model folders and bad inputs with clear messages, before writing anything."""
import json
import os
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from nnkd.cli import main
from nnkd.errors import NNKDError


class _RunsShell:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _model_folder(root, checkpoint_obj=None, raw_bytes=None):
    folder = root / "nnKDTrainerCls__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps({"nnkd": {"network": {}, "class_names": ["a", "b"]}}))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                                     "file_ending": ".nii.gz"}))
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    if raw_bytes is not None:
        ckpt.write_bytes(raw_bytes)
    else:
        torch.save(checkpoint_obj, ckpt)
    return folder, ckpt


def _inputs(root):
    folder = root / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for case in ("p1", "p2"):
        nib.save(nib.Nifti1Image(rng.normal(size=(8, 8, 8)).astype(np.float32), np.eye(4)),
                 str(folder / f"{case}_0000.nii.gz"))
    return folder


def _predict(capsys, *args):
    rc = main(["predict", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_code_in_a_model_checkpoint_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    model, ckpt = _model_folder(tmp_path, {"network_weights": {}, "x": _RunsShell(marker)})
    rc, err = _predict(capsys, "-i", _inputs(tmp_path), "-o", tmp_path / "out", "-m", model)
    assert rc == 2 and str(ckpt) in err and "posix.system" in err and "outside the allowlist" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind,reason", [("truncated", "truncated or corrupt"), ("empty", "empty file"),
                                         ("list", "holds a list"), ("keys", "missing entry 'trainer_name'")])
def test_bad_model_checkpoints_are_refused_by_name(tmp_path, capsys, kind, reason):
    good = tmp_path / "good.pth"
    torch.save({"network_weights": {"w": torch.ones(4000)}, "init_args": {}, "trainer_name": "t"}, good)
    raw = {"truncated": good.read_bytes()[:2000], "empty": b""}.get(kind)
    obj = {"list": [1, 2], "keys": {"network_weights": {}, "init_args": {}}}.get(kind)
    model, ckpt = _model_folder(tmp_path, obj, raw)
    rc, err = _predict(capsys, "-i", _inputs(tmp_path), "-o", tmp_path / "out", "-m", model)
    assert rc == 2 and str(ckpt) in err and reason in err, err
    assert "allowlist" not in err
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_and_a_folder_without_plans(tmp_path, capsys):
    out = tmp_path / "out.csv"
    out.write_text("keep")
    rc, err = _predict(capsys, "-i", _inputs(tmp_path), "-o", out, "-m", tmp_path)
    assert rc == 2 and f"-o {out}: an existing file, not a folder" in err and out.read_text() == "keep"
    rc, err = _predict(capsys, "-i", tmp_path / "in", "-o", tmp_path / "o", "-m", tmp_path)
    assert rc == 2 and "is not an nnU-Net model folder (no plans.json or dataset.json)" in err


def test_damaged_inputs_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    """Every damaged case is named at once; nnU-Net's reader would have read them as numbers."""
    import nnkd.inference
    from nnkd.commands.predict import predict_folder

    stub = SimpleNamespace(plans_manager=SimpleNamespace(plans={"nnkd": {"class_names": ["a", "b"]}}),
                           dataset_json={"file_ending": ".nii.gz", "channel_names": {"0": "CT"}})
    monkeypatch.setattr(nnkd.inference, "load_model_folder", lambda *a, **k: stub)
    inputs = _inputs(tmp_path)
    p1 = inputs / "p1_0000.nii.gz"
    p1.write_bytes(p1.read_bytes()[:500])
    nan = np.zeros((8, 8, 8), np.float32)
    nan[0, 0, :3] = [np.nan, np.inf, -np.inf]
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(inputs / "p2_0000.nii.gz"))
    with pytest.raises(NNKDError) as e:
        predict_folder(str(inputs), str(tmp_path / "out"), "model", progress=False)
    msg = str(e.value)
    assert "2 problem(s) in the input images; nothing was predicted" in msg
    assert "case p1: p1_0000.nii.gz: truncated or corrupt gzip stream" in msg
    assert "case p2: p2_0000.nii.gz: 3 of 512 voxels are NaN or infinite" in msg
    assert not (tmp_path / "out").exists()
