"""Teacher inputs: channels matched by name (explicit channel_map for anything else), the optional
sha256 pin, and clear refusals for broken model folders; nothing is written by any refusal."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

from nnkd.errors import NNKDError
from nnkd.plan import validate_plan
from nnkd.teachers import check_pin, load_nnunet_teacher, load_teachers, match_channels

STUDENT = {"0": "CT", "1": "FDG", "2": "ACE"}


def _spec(**teacher):
    return validate_plan({"teachers": [{"model_folder": "m", **teacher}]})["teachers"][0]


@pytest.mark.parametrize("teacher, given, expected", [
    (["CT", "FDG", "ACE"], None, [0, 1, 2]),          # by the teacher's own names
    (["FDG", "CT"], None, [1, 0]),                     # a teacher on a subset, in its own order
    (["CT", "FDG", "ACE"], ["CT", "FDG", "ACE"], [0, 1, 2]),
    (["CT", "FDG", "ACE"], [0, 1, 2], [0, 1, 2]),      # indices name the same channels
])
def test_channels_that_match_by_name(teacher, given, expected):
    assert match_channels(0, _spec(channels=given), teacher, STUDENT) == expected


def test_a_teacher_of_other_modalities_is_refused():
    with pytest.raises(NNKDError) as e:
        match_channels(0, _spec(channels=["CT", "FDG", "ACE"]), ["CT", "MRI", "XRAY"], STUDENT)
    msg = str(e.value)
    assert "teachers[0].channels feeds the teacher ['CT', 'FDG', 'ACE'], but its input channels are " \
           "['CT', 'MRI', 'XRAY'] (its dataset.json): other channels" in msg
    assert '"channel_map": {"CT": "CT", "MRI": "FDG", "XRAY": "ACE"}' in msg
    with pytest.raises(NNKDError, match="channel 'MRI' does not exist"):  # without 'channels': by name
        match_channels(0, _spec(), ["CT", "MRI", "XRAY"], STUDENT)


@pytest.mark.parametrize("given", [["ACE", "FDG", "CT"], [2, 1, 0]])
def test_a_permutation_is_refused(given):
    with pytest.raises(NNKDError, match=r"feeds the teacher \['ACE', 'FDG', 'CT'\].*the same channels in another order"):
        match_channels(0, _spec(channels=given), ["CT", "FDG", "ACE"], STUDENT)


def test_an_explicit_channel_map_feeds_what_it_says():
    spec = _spec(channel_map={"XRAY": "ACE", "CT": 0, "MRI": "FDG"})
    assert match_channels(0, spec, ["CT", "MRI", "XRAY"], STUDENT) == [0, 1, 2]
    swapped = _spec(channel_map={"CT": "ACE", "FDG": "FDG", "ACE": "CT"})  # a deliberate swap is allowed
    assert match_channels(0, swapped, ["CT", "FDG", "ACE"], STUDENT) == [2, 1, 0]
    with pytest.raises(NNKDError) as e:
        match_channels(0, _spec(channel_map={"CT": "CT", "PET": "FDG"}), ["CT", "MRI"], STUDENT)
    assert "teachers[0].channel_map: the teacher's input channels are ['CT', 'MRI']; not among them: ['PET']; " \
           "not mapped: ['MRI']" in str(e.value)
    with pytest.raises(NNKDError, match="channel_map: channel 'PET' does not exist"):
        match_channels(0, _spec(channel_map={"CT": "PET"}), ["CT"], STUDENT)


def test_every_refused_teacher_is_listed_once(monkeypatch):
    import nnkd.hooks

    def fake_loader(spec, device):
        names = {"a": ["CT", "MRI", "XRAY"], "b": ["ACE", "FDG", "CT"], "c": ["CT"]}[spec["name"]]
        return torch.nn.Identity(), {"model_folder": f"/models/{spec['name']}", "sha256": "0" * 64,
                                     "channel_names": {str(k): n for k, n in enumerate(names)},
                                     "class_names": ["G1", "G2"], "spatial_dims": 3}

    monkeypatch.setattr(nnkd.hooks, "lookup", lambda kind, name: fake_loader)
    plan = validate_plan({"teachers": [{"name": "a", "model_folder": "x", "channels": ["CT", "FDG", "ACE"]},
                                       {"name": "b", "model_folder": "x", "channels": ["CT", "FDG", "ACE"]},
                                       {"name": "c", "model_folder": "x", "sha256": "1" * 64}]})
    with pytest.raises(NNKDError) as e:
        load_teachers(plan["teachers"], STUDENT, ["G1", "G2"], 3, torch.device("cpu"))
    msg = str(e.value)
    assert msg.startswith("3 teachers are refused:")
    assert "teacher 'a' (/models/a): teachers[0].channels feeds" in msg and "other channels" in msg
    assert "teacher 'b' (/models/b): teachers[1].channels feeds" in msg and "another order" in msg
    assert f"teacher 'c' (/models/c): the plan pins sha256 {'1' * 64}, the loader reports {'0' * 64}" in msg
    plan["teachers"][2]["sha256"] = "0" * 64
    assert load_teachers(plan["teachers"][2:], STUDENT, ["G1", "G2"], 3, torch.device("cpu"))[0].channels == [0]


# ---------------------------------------------------------------------------------------------
# model folders


def _model_folder(tmp_path, plans='{"nnkd": {"network": {}, "class_names": ["G1", "G2"]}}',
                  dataset='{"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1}}'):
    folder = tmp_path / "Dataset501_X" / "nnKDTrainerCls__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint, but bytes to hash")
    for name, text in (("plans.json", plans), ("dataset.json", dataset)):
        if text is not None:
            (folder / name).write_text(text)
    return folder


def _tree(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def _refused(folder, **spec) -> str:
    before = _tree(folder)
    with pytest.raises(NNKDError) as e:
        load_nnunet_teacher({"name": "t", "model_folder": str(folder), "fold": 0,
                             "checkpoint": "checkpoint_final.pth", **spec}, torch.device("cpu"))
    assert _tree(folder) == before
    return str(e.value)


@pytest.mark.parametrize("missing", ["plans.json", "dataset.json"])
def test_a_model_folder_without_its_json_is_refused(tmp_path, missing):
    folder = _model_folder(tmp_path, **{missing.split(".")[0]: None})
    assert _refused(folder) == (f"teacher 't': {folder} has no {missing} (an nnU-Net model folder holds "
                                f"plans.json, dataset.json and fold_k/)")


def test_invalid_or_ambiguous_json_names_the_file(tmp_path):
    folder = _model_folder(tmp_path, plans='{"nnkd": {"network": ')
    assert _refused(folder).startswith(f"teacher 't': {folder / 'plans.json'}: not valid JSON: ")
    folder = _model_folder(tmp_path / "b", dataset='{"channel_names": {"0": "CT"}, "channel_names": {"0": "MRI"}}')
    assert _refused(folder) == (f"teacher 't': {folder / 'dataset.json'}: field 'channel_names': key given more "
                                f"than once (JSON would keep only the last)")
    folder = _model_folder(tmp_path / "c", dataset='{"labels": {}}')
    assert _refused(folder) == f"teacher 't': {folder / 'dataset.json'} has no 'channel_names'"


def test_a_pinned_hash_that_differs_refuses_before_loading(tmp_path):
    folder = _model_folder(tmp_path)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    actual = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    msg = _refused(folder, sha256="ab" * 32)
    assert msg == (f"teacher 't': checkpoint {ckpt} has sha256 {actual}, but the plan pins {'ab' * 32} (field "
                   f"'sha256'): the file changed or is another one; refusing to train with it")
    # the right pin (in any case) passes: the refusal that follows is about the file's content, not its hash
    assert check_pin({"name": "t", "sha256": actual.upper()}, str(ckpt)) == actual
    assert check_pin({"name": "t", "sha256": None}, str(ckpt)) == actual
    with pytest.raises(Exception) as e:
        load_nnunet_teacher({"name": "t", "model_folder": str(folder), "fold": 0, "checkpoint": "checkpoint_final.pth",
                             "sha256": actual}, torch.device("cpu"))
    assert "pins" not in str(e.value)


def test_a_flipped_byte_changes_the_hash(tmp_path):
    folder = _model_folder(tmp_path)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    pinned = check_pin({"name": "t"}, str(ckpt))
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    assert "the file changed" in _refused(folder, sha256=pinned)
