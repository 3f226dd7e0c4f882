"""The one checkpoint loader: nothing it reads runs code, and every bad file is refused with its reason."""
import os

import numpy as np
import pytest
import torch

from nnkd.checkpoints import TRAINER_KEYS, load_checkpoint, nonfinite_tensors
from nnkd.errors import NNKDError


class _RunsShell:
    """Unpickling this calls os.system: it would create ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _good(path):
    torch.save({"network_weights": {"w": torch.ones(1000)}, "current_epoch": 3,
                "init_args": {"device": torch.device("cpu")}, "_best_ema": np.float64(0.5),
                "logging": {"x": [np.float32(1.0)]}, "dtype": np.dtype("float32"),
                "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01}]}}, path)
    return str(path)


def _refused(path, *fragments, **kw):
    before = sorted(os.listdir(os.path.dirname(path)))
    with pytest.raises(NNKDError) as e:
        load_checkpoint(str(path), **kw)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "refused to load" in msg, msg
    for f in fragments:
        assert f in msg, msg
    assert sorted(os.listdir(os.path.dirname(path))) == before  # nothing written
    return msg


def test_nnunet_style_checkpoint_loads(tmp_path):
    out = load_checkpoint(_good(tmp_path / "c.pth"), TRAINER_KEYS)
    assert torch.equal(out["network_weights"]["w"], torch.ones(1000)) and out["_best_ema"] == 0.5


def test_code_in_the_pickle_never_runs_and_the_global_is_named(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.zeros(2)}, "evil": _RunsShell(marker)}, ckpt)
    _refused(ckpt, "posix.system", "outside the allowlist")
    assert not marker.exists()


def test_empty_garbage_and_truncated_files(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _refused(empty, "empty file")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    assert "allowlist" not in _refused(garbage, "not a PyTorch checkpoint")
    good = _good(tmp_path / "good.pth")
    data = open(good, "rb").read()
    for n, cut in enumerate((len(data) // 2, len(data) - 10, 600)):
        trunc = tmp_path / f"trunc{n}.pth"
        trunc.write_bytes(data[:cut])
        assert "allowlist" not in _refused(trunc, "truncated or corrupt")


def test_flipped_bytes_fail_the_crc_check(tmp_path):
    data = bytearray(open(_good(tmp_path / "good.pth"), "rb").read())
    data[len(data) // 2] ^= 0xFF
    flipped = tmp_path / "flipped.pth"
    flipped.write_bytes(bytes(data))
    _refused(flipped, "corrupt")


def test_not_a_dict_missing_keys_and_nonfinite_weights(tmp_path):
    lst = tmp_path / "list.pth"
    torch.save([torch.ones(2)], lst)
    _refused(lst, "holds a list")
    partial = tmp_path / "partial.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}}, partial)
    _refused(partial, "missing entry 'optimizer_state'", "missing entry 'current_epoch'", required=TRAINER_KEYS)
    nan = tmp_path / "nan.pth"
    torch.save({"network_weights": {"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}}, nan)
    _refused(nan, "non-finite network weights in 1 tensor(s): b")
    assert load_checkpoint(str(nan), finite=False)["network_weights"]["a"].sum() == 2


def test_nonfinite_tensors_names_nested_entries():
    tree = {"state": {0: {"momentum_buffer": torch.tensor([np.inf])}, 1: {"m": torch.ones(1)}},
            "param_groups": [{"lr": float("nan")}, {"lr": 0.1}], "steps": torch.tensor([1])}
    assert nonfinite_tensors(tree) == ["state.0.momentum_buffer", "param_groups[0].lr"]
