import hashlib
import os

import numpy as np
import pytest
import torch

from nnkd.errors import NNKDError
from nnkd.teachers import safe_load_checkpoint, sha256


class _CreatesFile:
    """Unpickling this runs code: it would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned.txt"
    ckpt = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.zeros(2)}, "evil": _CreatesFile(str(marker))}, ckpt)
    with pytest.raises(NNKDError) as e:
        safe_load_checkpoint(str(ckpt))
    assert str(ckpt) in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


def test_nnunet_style_checkpoint_loads(tmp_path):
    ckpt = tmp_path / "c.pth"
    obj = {"network_weights": {"w": torch.ones(3)}, "current_epoch": 3, "init_args": {"device": torch.device("cpu")},
           "_best_ema": np.float64(0.5), "logging": {"x": [np.float32(1.0)]}, "dtype": np.dtype("float32")}
    torch.save(obj, ckpt)
    out = safe_load_checkpoint(str(ckpt))
    assert torch.equal(out["network_weights"]["w"], torch.ones(3)) and out["_best_ema"] == 0.5
    assert sha256(str(ckpt)) == hashlib.sha256(ckpt.read_bytes()).hexdigest()  # of the file's bytes


def test_missing_teacher_folder_fold_and_checkpoint(tmp_path):
    from nnkd.teachers import load_nnunet_teacher

    spec = {"name": "t", "model_folder": str(tmp_path / "none"), "fold": 0, "checkpoint": "checkpoint_final.pth"}
    with pytest.raises(NNKDError, match="teacher 't': model folder not found"):
        load_nnunet_teacher(spec, torch.device("cpu"))
    (tmp_path / "m" / "fold_1").mkdir(parents=True)
    spec["model_folder"] = str(tmp_path / "m")
    with pytest.raises(NNKDError, match="no fold_0 \\(present: fold_1\\)"):
        load_nnunet_teacher(spec, torch.device("cpu"))
    spec["fold"] = 1
    with pytest.raises(NNKDError, match="checkpoint_final.pth not found"):
        load_nnunet_teacher(spec, torch.device("cpu"))
    assert not os.listdir(tmp_path / "m" / "fold_1")
