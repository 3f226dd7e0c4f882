"""`nnkd predict` with a model without classification head (``num_classes`` 0, nnKDTrainerSegKD*): segmentations
for every case plus ``cases.csv`` (``case_id,channels``); channel subsets filled and refused exactly as for a
classification model."""
import json
import os

import numpy as np
import SimpleITK as sitk
import torch
from test_predict_subsets import DROPOUT, _images, _model

from nnkd.cli import main
from nnkd.inference import ClassProbabilityCollector
from nnkd.transforms.modality_dropout import ModalityDropout


def _headless(root, dropout):
    """The classification model of :func:`test_predict_subsets._model` (seed 0) without its head: the same U-Net
    weights, ``num_classes`` 0 and no class names, as nnKDTrainerSegKD writes them."""
    folder = _model(root, dropout, name="nnKDTrainerSegKD__nnUNetPlans__3d_fullres")
    plans = json.loads((folder / "plans.json").read_text())
    plans["nnkd"]["network"]["num_classes"] = 0
    plans["nnkd"]["class_names"] = []
    (folder / "plans.json").write_text(json.dumps(plans))
    path = folder / "fold_0" / "checkpoint_final.pth"
    ck = torch.load(path, weights_only=False)
    head = [k for k in ck["network_weights"] if k.startswith("head.")]
    assert head  # the classification model had a head to remove
    ck["network_weights"] = {k: v for k, v in ck["network_weights"].items() if k not in head}
    ck["trainer_name"] = "nnKDTrainerSegKD"
    torch.save(ck, path)
    return folder


def _spy(monkeypatch):
    """[(raw input, filled network input)] of every network call, in call order."""
    import nnkd.inference

    seen = []
    original = nnkd.inference.ClassProbabilityCollector.forward

    def forward(self, x):
        seen.append((x.clone(), self.network_input(x).clone()))
        return original(self, x)

    monkeypatch.setattr(nnkd.inference.ClassProbabilityCollector, "forward", forward)
    return seen


def _seg(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_collector_without_head_returns_segmentation_and_no_class_probabilities():
    class Net(torch.nn.Module):
        def forward(self, inp, return_all=False):
            return type("Out", (), {"logits": None, "seg": inp * 2})()

    collector = ClassProbabilityCollector(Net())
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(collector(x), x * 2)
    assert collector.mean().shape == (0,)


def test_a_headless_model_writes_segmentations_and_the_channels_of_every_case(tmp_path, monkeypatch):
    from nnkd.commands.predict import predict_folder

    inputs = _images(tmp_path, {"p1": [0, 1], "p2": [0], "p3": [0, 1]})
    cls = _model(tmp_path / "cls", DROPOUT)
    seg = _headless(tmp_path / "seg", DROPOUT)
    seen = _spy(monkeypatch)
    csv = predict_folder(str(inputs), str(tmp_path / "seg_out"), str(seg), progress=False)
    assert csv == str(tmp_path / "seg_out" / "cases.csv")
    assert open(csv).read() == "case_id,channels\np1,CT+FDG\np2,CT\np3,CT+FDG\n"
    assert sorted(os.listdir(tmp_path / "seg_out")) == ["cases.csv", "p1.nii.gz", "p2.nii.gz", "p3.nii.gz"]

    # the fill is the training transform's: ModalityDropout keeping the present channels, on the same input
    n = len(seen) // 3  # the same windows and mirrors per case
    for i, (x, filled) in enumerate(seen):
        present = [0] if n <= i < 2 * n else [0, 1]
        training = ModalityDropout(p=1.0, keep=present, fill=DROPOUT["fill"])
        assert torch.equal(filled, torch.stack([training(image=s.clone())["image"] for s in x]))
    assert all(bool((f[:, 1] == DROPOUT["fill"]).all()) for _, f in seen[n:2 * n])
    assert not any(bool((f[:, 1] == DROPOUT["fill"]).all()) for _, f in seen[:n])

    # the head changes no segmentation: the classification model with the same U-Net segments identically
    predict_folder(str(inputs), str(tmp_path / "cls_out"), str(cls), progress=False)
    for case in ("p1", "p2", "p3"):
        a, b = _seg(tmp_path / "seg_out" / f"{case}.nii.gz"), _seg(tmp_path / "cls_out" / f"{case}.nii.gz")
        assert a.shape == (16, 16, 16) and set(np.unique(a)) <= {0, 1} and np.array_equal(a, b)

    # --channels CT: p1's FDG file ignored, filled as in training; cases.csv says so
    csv = predict_folder(str(inputs), str(tmp_path / "ct"), str(seg), progress=False, channels=["CT"])
    assert open(csv).read() == "case_id,channels\np1,CT\np2,CT\np3,CT\n"
    assert np.array_equal(_seg(tmp_path / "ct" / "p2.nii.gz"), _seg(tmp_path / "seg_out" / "p2.nii.gz"))


def test_headless_refusals_are_the_classification_models_and_nothing_is_written(tmp_path, capsys):
    inputs = _images(tmp_path, {"p1": [0], "p2": [1], "p3": [0, 1]})
    runs = [(None, []), (DROPOUT, []), (DROPOUT, ["--channels", "FDG"]), (DROPOUT, ["--channels", "CT", "FDG"])]
    errs = []
    for i, (dropout, extra) in enumerate(runs):
        err = {}
        for kind, build in (("cls", _model), ("seg", _headless)):
            model = build(tmp_path / f"{kind}{i}", dropout)
            rc = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), *extra])
            err[kind] = capsys.readouterr().err.replace(str(model), "MODEL")
            assert rc == 2 and "Traceback" not in err[kind]
            assert not (tmp_path / "out").exists()
        assert err["seg"] == err["cls"], extra
        errs.append(err["seg"])
    assert "case p1: missing channel file(s) p1_0001.nii.gz; the model MODEL was never trained without channel " \
           "'FDG' (_0001): it was trained without modality_dropout" in errs[0]
    assert "case p2:" in errs[1] and "'CT' (_0000): it is in modality_dropout.keep" in errs[1] and "p1" not in errs[1]
    assert "the model MODEL was never trained without channel 'CT'" in errs[2]
    assert "case p1: missing channel file(s) p1_0001.nii.gz; --channels names CT+FDG" in errs[3]


def test_all_subsets_and_evaluate_on_a_headless_model(tmp_path, capsys):
    model = _headless(tmp_path, DROPOUT)
    inputs = _images(tmp_path, {"p1": [0, 1], "p2": [0, 1]})
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), "--all-subsets"]) == 0
    assert "nnkd evaluate" not in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out")) == ["CT", "CT+FDG"]
    for subset in ("CT", "CT+FDG"):
        assert sorted(os.listdir(tmp_path / "out" / subset)) == ["cases.csv", "p1.nii.gz", "p2.nii.gz"]
        assert open(tmp_path / "out" / subset / "cases.csv").read() == f"case_id,channels\np1,{subset}\np2,{subset}\n"
    # nnkd evaluate names the file for what it is, and writes no report
    csv = tmp_path / "out" / "CT" / "cases.csv"
    assert main(["evaluate", str(csv), "-o", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert f"{csv}: a per-case channel record (nnkd predict with a model without classification head)" in err
    assert "Traceback" not in err and not (tmp_path / "report").exists()
