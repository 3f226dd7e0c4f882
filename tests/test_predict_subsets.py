"""`nnkd predict` with a subset of a modality-dropout model's channels: the fill equals the training
transform's, channels the model never lost are refused, classification.csv records the channels."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from test_nets import toy_plans

from nnkd.cli import main
from nnkd.errors import NNKDError
from nnkd.inference import ClassProbabilityCollector
from nnkd.subsets import channel_contract, fill_channels
from nnkd.transforms.modality_dropout import ModalityDropout

CHANNELS = {"0": "CT", "1": "FDG", "2": "MR"}
DROPOUT = {"p": 0.5, "keep": ["CT"], "droppable": None, "fill": -1.25}


@pytest.mark.parametrize("missing", [[1], [2], [1, 2]])
def test_fill_is_the_training_transforms_fill(missing):
    """The network input of a case without ``missing`` equals ModalityDropout(p=1) on the same normalised sample."""
    x = torch.randn(2, 3, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    contract = channel_contract("M", CHANNELS, [{"modality_dropout": DROPOUT}])
    assert contract.droppable == {1, 2} and contract.fill == -1.25
    present = [c for c in range(3) if c not in missing]
    training = ModalityDropout(p=1.0, keep=present, fill=DROPOUT["fill"])
    expected = torch.stack([training(image=x[i].clone())["image"] for i in range(2)])
    seen = []

    class Net(torch.nn.Module):
        def forward(self, inp, return_all=False):
            seen.append(inp)
            return type("Out", (), {"logits": torch.zeros(inp.shape[0], 2), "seg": inp})()

    collector = ClassProbabilityCollector(Net())
    collector.fill_missing(missing, contract.fill)
    collector(x)
    assert torch.equal(seen[0], expected) and torch.equal(fill_channels(x, missing, contract.fill), expected)
    assert torch.equal(seen[0][:, present], x[:, present]) and bool((seen[0][:, missing] == -1.25).all())
    collector.fill_missing(())
    collector(x)
    assert torch.equal(seen[1], x)


def test_contract_refusals_name_model_and_every_channel():
    folds = [{"modality_dropout": dict(DROPOUT, droppable=["FDG"])}, {"modality_dropout": DROPOUT}]
    contract = channel_contract("/models/M", CHANNELS, folds)
    assert contract.droppable == {1}
    assert [contract.name(s) for s in contract.allowed_subsets()] == ["CT+FDG+MR", "CT+MR"]
    problems = contract.problems([1])
    assert problems == ["the model /models/M was never trained without channel 'CT' (_0000): it is in "
                        "modality_dropout.keep",
                        "the model /models/M was never trained without channel 'MR' (_0002): it is not in "
                        "modality_dropout.droppable"]
    none = channel_contract("/models/N", CHANNELS, [{"modality_dropout": None}])
    assert none.fill is None and none.allowed_subsets() == [(0, 1, 2)]
    assert "it was trained without modality_dropout" in none.problems([0, 1])[0]
    free = channel_contract("/models/F", CHANNELS, [{"modality_dropout": dict(DROPOUT, keep=[])}])
    assert len(free.allowed_subsets()) == 7 and free.problems([]) == \
        ["the model /models/F needs at least one channel; none is present"]


# ------------------------------------------------------------------------------------ a tiny model folder
def _model(root, dropout, name="nnKDTrainerCls__nnUNetPlans__3d_fullres"):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnkd.nets.network import build_network

    folder = root / name
    (folder / "fold_0").mkdir(parents=True)
    plans = toy_plans(3, nnkd_network={"num_classes": 2, "head_hidden": 8})
    cfg = plans["configurations"]["3d_fullres"]
    cfg["normalization_schemes"] = ["ZScoreNormalization"] * 2
    plans["nnkd"]["class_names"] = ["benign", "malignant"]
    plans["foreground_intensity_properties_per_channel"] = {
        str(c): {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -5.0, "max": 5.0, "percentile_00_5": -3.0,
                 "percentile_99_5": 3.0} for c in range(2)}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "FDG"},
                                                     "labels": {"background": 0, "lesion": 1},
                                                     "file_ending": ".nii.gz", "numTraining": 0}))
    pm = PlansManager(plans)
    torch.manual_seed(0)
    net = build_network(pm, pm.get_configuration("3d_fullres"), 2, 2, enable_deep_supervision=False)
    torch.save({"network_weights": net.state_dict(), "init_args": {"configuration": "3d_fullres"},
                "trainer_name": "nnKDTrainerCls", "inference_allowed_mirroring_axes": (0, 1, 2),
                "nnkd": {"plan": {"modality_dropout": dropout}}}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def _images(root, cases):
    """``cases``: {case: channels present}; 16^3 volumes with different values per case and channel."""
    folder = root / "in"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for case, channels in cases.items():
        for c in range(2):
            image = (rng.normal(size=(16, 16, 16)) * (1 + 3 * c) + 10 * c).astype(np.float32)
            if c in channels:
                nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / f"{case}_{c:04d}.nii.gz"))
    return folder


def _rows(csv):
    lines = open(csv).read().splitlines()
    return lines[0], {r.split(",")[0]: r.split(",") for r in lines[1:]}


def _spy_inputs(monkeypatch):
    """Every network input (after the fill) of the predictions in this test, in call order."""
    import nnkd.inference

    seen = []
    original = nnkd.inference.ClassProbabilityCollector.forward

    def forward(self, x):
        seen.append(self.network_input(x).clone())
        return original(self, x)

    monkeypatch.setattr(nnkd.inference.ClassProbabilityCollector, "forward", forward)
    return seen


def test_a_dropout_model_predicts_cases_with_absent_channels(tmp_path, monkeypatch):
    from nnkd.commands.predict import predict_folder

    model = _model(tmp_path, DROPOUT)
    inputs = _images(tmp_path, {"p1": [0, 1], "p2": [0]})
    seen = _spy_inputs(monkeypatch)
    csv = predict_folder(str(inputs), str(tmp_path / "auto"), str(model), progress=False)
    header, rows = _rows(csv)
    assert header == "case_id,prob_benign,prob_malignant,predicted,label,channels"
    assert rows["p1"][-1] == "CT+FDG" and rows["p2"][-1] == "CT"
    assert sorted(f for f in os.listdir(tmp_path / "auto") if f.endswith(".nii.gz")) == ["p1.nii.gz", "p2.nii.gz"]
    n1 = len(seen) // 2  # same number of windows and mirrors per case
    assert all(bool((s[:, 1] == -1.25).all()) for s in seen[n1:])  # p2: FDG is the training fill everywhere
    assert not any(bool((s[:, 1] == -1.25).all()) for s in seen[:n1])

    # --channels CT: p1's FDG file is ignored, its CT normalised as with both channels
    auto = list(seen)
    seen.clear()
    csv = predict_folder(str(inputs), str(tmp_path / "ct"), str(model), progress=False, channels=["CT"])
    _, ct_rows = _rows(csv)
    assert ct_rows["p1"][-1] == "CT" and ct_rows["p2"] == rows["p2"]
    assert all(bool((s[:, 1] == -1.25).all()) for s in seen)
    assert all(torch.equal(a[:, 0], b[:, 0]) for a, b in zip(auto[:n1], seen[:n1]))
    with pytest.raises(NNKDError, match=r"case p2: missing channel file\(s\) p2_0001.nii.gz; --channels names CT\+FDG"):
        predict_folder(str(inputs), str(tmp_path / "both"), str(model), progress=False, channels=["0", "1"])
    assert not (tmp_path / "both").exists()


def test_channels_a_model_never_lost_are_refused_and_nothing_is_written(tmp_path, capsys):
    inputs = _images(tmp_path, {"p1": [0], "p2": [1], "p3": [0, 1]})
    plain = _model(tmp_path / "a", None)
    rc = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(plain)])
    err = capsys.readouterr().err
    assert rc == 2 and "2 case(s) cannot be predicted" in err
    assert f"case p1: missing channel file(s) p1_0001.nii.gz; the model {plain} was never trained without " \
           f"channel 'FDG' (_0001): it was trained without modality_dropout" in err
    assert f"case p2: missing channel file(s) p2_0000.nii.gz; the model {plain} was never trained without " \
           f"channel 'CT' (_0000)" in err
    dropout = _model(tmp_path / "b", DROPOUT)
    rc = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(dropout)])
    err = capsys.readouterr().err
    assert rc == 2 and "case p2:" in err and "'CT' (_0000): it is in modality_dropout.keep" in err and "p1" not in err
    rc = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(dropout), "--channels", "FDG"])
    err = capsys.readouterr().err
    assert rc == 2 and f"the model {dropout} was never trained without channel 'CT'" in err
    assert not (tmp_path / "out").exists()


def test_all_subsets_writes_one_folder_per_allowed_subset(tmp_path, capsys):
    model = _model(tmp_path, DROPOUT)
    inputs = _images(tmp_path, {"p1": [0, 1], "p2": [0, 1]})
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), "--all-subsets"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["CT", "CT+FDG"]
    for subset in ("CT", "CT+FDG"):
        _, rows = _rows(tmp_path / "out" / subset / "classification.csv")
        assert {r[-1] for r in rows.values()} == {subset}
    assert "nnkd evaluate --subsets" in capsys.readouterr().out


def test_disable_tta_runs_one_forward_per_window(tmp_path, monkeypatch, capsys):
    """--disable_tta: no mirrors (1 forward per window instead of 8 in 3D), probabilities still valid."""
    model = _model(tmp_path, DROPOUT)
    inputs = _images(tmp_path, {"p1": [0, 1]})
    seen = _spy_inputs(monkeypatch)
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "tta"), "-m", str(model), "-f", "0"]) == 0
    with_tta = len(seen)
    seen.clear()
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "no_tta"), "-m", str(model), "-f", "0",
                 "--disable_tta"]) == 0
    assert with_tta == 8 * len(seen) and len(seen) >= 1  # mirroring axes (0, 1, 2): 2^3 forwards per window
    _, rows = _rows(tmp_path / "no_tta" / "classification.csv")
    assert float(rows["p1"][1]) + float(rows["p1"][2]) == pytest.approx(1, abs=1e-6)
