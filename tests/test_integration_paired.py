"""End to end through nnU-Net's and nnkd's CLIs on a tiny synthetic paired PET/CT dataset.

One module-scoped workspace: preprocess once, train a multi-modal teacher, a CT-only student, a
dose-aware teacher and a REACT-KD student (one short epoch each), then predict and evaluate.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import nnkd_cli, run_cli, workspace
from nnkd.checkpoints import TRAINER_KEYS, load_checkpoint, nonfinite_tensors
from nnkd.pipeline import tool
from nnkd.synthetic.plan_and_preprocess import COMMAND as PLAN_AND_PREPROCESS  # planning sized for tiny datasets

pytestmark = pytest.mark.integration
DS = 11
TRAIN = {"nnUNet_n_proc_DA": "0"}
SCHEDULE = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    env = workspace(root)
    nnkd_cli("synth", "paired3d", "--id", DS, "--cases", 10, "--size", 16, 32, 32, env=env)
    run_cli([*PLAN_AND_PREPROCESS, "-d", str(DS), "-c", "3d_fullres", "-np", "1",
             "-npfp", "1", "--verify_dataset_integrity"], env=env)
    name = [d for d in os.listdir(env["nnUNet_raw"]) if d.startswith(f"Dataset{DS:03d}")][0]
    return {"root": root, "env": env, "name": name}


def write_plan(ws, name, plan):
    path = ws["root"] / f"{name}.json"
    path.write_text(json.dumps(dict({"name": name, "seed": 0, "schedule": SCHEDULE}, **plan)))
    return str(path)


def train(ws, trainer, plan_path, *extra, check=True):
    env = dict(ws["env"], **TRAIN, NNKD_PLAN=plan_path or "")
    if not plan_path:
        env.pop("NNKD_PLAN")
    return run_cli([tool("nnUNetv2_train"), str(DS), "3d_fullres", "0", "-tr", trainer, "-device", "cpu", *extra],
                   env=env, check=check)


def model_folder(ws, trainer):
    return os.path.join(ws["env"]["nnUNet_results"], ws["name"], f"{trainer}__nnUNetPlans__3d_fullres")


def images(ws, channels, tag):
    """Copy the raw images of a few cases, keeping (and renumbering) only ``channels``."""
    src = os.path.join(ws["env"]["nnUNet_raw"], ws["name"], "imagesTr")
    dst = ws["root"] / tag
    if not dst.exists():
        dst.mkdir()
        for f in sorted(os.listdir(src))[: 3 * 3]:  # three cases x three channels
            case, rest = f.rsplit("_", 1)
            ch = int(rest[:4])
            if ch in channels:
                shutil.copyfile(os.path.join(src, f), dst / f"{case}_{channels.index(ch):04d}{rest[4:]}")
    return str(dst)


@pytest.fixture(scope="module")
def teacher(ws):
    plan = write_plan(ws, "teacher", {"modality_dropout": {"p": 0.3, "keep": ["CT"]},
                                      "classification": {"select_best_by": "auc"}})
    train(ws, "nnKDTrainerCls", plan)
    return model_folder(ws, "nnKDTrainerCls")


@pytest.fixture(scope="module")
def student(ws):
    train(ws, "nnKDTrainerClsBaseline", write_plan(ws, "student", {"student": {"channels": ["CT"]}}))
    return model_folder(ws, "nnKDTrainerClsBaseline")


def test_teacher_fold_folder(teacher):
    fold = os.path.join(teacher, "fold_0")
    for f in ("checkpoint_final.pth", "nnkd_plan.json", "progress.png", "validation/classification.csv",
              "validation/classification_summary.json", "validation/summary.json"):
        assert os.path.isfile(os.path.join(fold, f)), f
    assert json.load(open(os.path.join(fold, "nnkd_plan.json")))["modality_dropout"]["keep"] == ["CT"]
    ck = load_checkpoint(os.path.join(fold, "checkpoint_final.pth"), TRAINER_KEYS)  # nnU-Net's own checkpoint reads
    assert ck["nnkd"]["plan"]["name"] == "teacher" and ck["trainer_name"] == "nnKDTrainerCls"
    assert len(ck["logging"]["cls/val_auc"]) == 1 and len(ck["logging"]["cls/train_loss"]) == 1
    plans = json.load(open(os.path.join(teacher, "plans.json")))
    assert plans["nnkd"]["class_names"] == ["G1", "G2", "G3"] and plans["nnkd"]["network"]["num_classes"] == 3
    header = open(os.path.join(fold, "validation", "classification.csv")).readline().strip()
    assert header == "case_id,prob_G1,prob_G2,prob_G3,predicted,label"


def test_student_deploys_with_ct_only(ws, student, tmp_path):
    ds = json.load(open(os.path.join(student, "dataset.json")))
    assert ds["channel_names"] == {"0": "CT"}
    plans = json.load(open(os.path.join(student, "plans.json")))
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization"]
    ct = images(ws, [0], "ct_only")
    run_cli([tool("nnUNetv2_predict"), "-i", ct, "-o", str(tmp_path / "seg"), "-d", str(DS), "-c", "3d_fullres",
             "-tr", "nnKDTrainerClsBaseline", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"], env=ws["env"])
    assert len([f for f in os.listdir(tmp_path / "seg") if f.endswith(".nii.gz")]) == 3
    nnkd_cli("predict", "-i", ct, "-o", tmp_path / "pred", "-m", student, "-f", 0, "--save-attention",
             env=ws["env"])
    rows = open(tmp_path / "pred" / "classification.csv").read().splitlines()
    assert rows[0] == "case_id,prob_G1,prob_G2,prob_G3,predicted,label,channels" and len(rows) == 4
    import SimpleITK as sitk

    image = sitk.ReadImage(os.path.join(ct, sorted(os.listdir(ct))[0]))
    att = sitk.ReadImage(str(tmp_path / "pred" / "attention" / f"{sorted(os.listdir(ct))[0][:-12]}_attention.nii.gz"))
    assert att.GetSize() == image.GetSize() and att.GetSpacing() == image.GetSpacing()
    values = sitk.GetArrayFromImage(att)
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0
    nnkd_cli("evaluate", tmp_path / "pred" / "classification.csv", "--labels", DS, "-o", tmp_path / "report",
             "--allow-missing", "--n-bootstrap", 200, env=ws["env"])
    for f in ("metrics.json", "roc.png", "dca.png", "calibration.png"):
        assert (tmp_path / "report" / f).is_file()


def test_predict_refuses_bad_inputs(ws, student, teacher, tmp_path):
    no_fdg = tmp_path / "no_fdg"
    shutil.copytree(images(ws, [0, 1, 2], "all_channels"), no_fdg)
    os.remove(no_fdg / "liver_000_0001.nii.gz")
    # the teacher trained with modality dropout (keep CT) predicts without FDG, filled as in training ...
    nnkd_cli("predict", "-i", no_fdg, "-o", tmp_path / "o0", "-m", teacher, env=ws["env"])
    rows = dict(r.rsplit(",", 1) for r in open(tmp_path / "o0" / "classification.csv").read().splitlines()[1:])
    assert [rows[k] for k in sorted(rows)] == ["CT+ACE", "CT+FDG+ACE", "CT+FDG+ACE"]
    # ... but never without CT, which it always kept
    os.remove(no_fdg / "liver_000_0000.nii.gz")
    p = nnkd_cli("predict", "-i", no_fdg, "-o", tmp_path / "o1", "-m", teacher, env=ws["env"], check=False)
    assert p.returncode == 2 and "case liver_000: missing channel file(s) liver_000_0000.nii.gz, " \
        "liver_000_0001.nii.gz" in p.stderr
    assert f"the model {teacher} was never trained without channel 'CT' (_0000): it is in modality_dropout.keep" \
        in p.stderr and not (tmp_path / "o1").exists()
    all_channels = images(ws, [0, 1, 2], "all_channels")
    p = nnkd_cli("predict", "-i", all_channels, "-o", tmp_path / "o", "-m", student, env=ws["env"], check=False)
    assert p.returncode == 2 and "wrong channel count" in p.stderr and "liver_000" in p.stderr
    broken = tmp_path / "broken"
    shutil.copytree(images(ws, [0], "ct_only"), broken)
    first = sorted(os.listdir(broken))[0]
    (broken / first).write_bytes(b"not an image")
    second = sorted(os.listdir(broken))[1]
    (broken / second).write_bytes((broken / second).read_bytes()[:500])  # read zero-filled by SimpleITK
    p = nnkd_cli("predict", "-i", broken, "-o", tmp_path / "o2", "-m", student, env=ws["env"], check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"case {first.rsplit('_', 1)[0]}: {first}: truncated or corrupt gzip stream" in p.stderr
    assert f"case {second.rsplit('_', 1)[0]}: {second}: truncated or corrupt gzip stream" in p.stderr
    assert not (tmp_path / "o2").exists()
    # a truncated model checkpoint: a clear refusal naming it
    model = tmp_path / "model"
    shutil.copytree(student, model)
    ckpt = model / "fold_0" / "checkpoint_final.pth"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    p = nnkd_cli("predict", "-i", images(ws, [0], "ct_only"), "-o", tmp_path / "o3", "-m", model, env=ws["env"],
                 check=False)
    assert p.returncode == 2 and f"{ckpt}: refused to load: the file is truncated or corrupt" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "o3").exists()


def test_continue_uses_the_runs_plan(ws, student):
    other = write_plan(ws, "other", {"student": {"channels": ["CT"]}, "seed": 1})
    p = train(ws, "nnKDTrainerClsBaseline", other, "--c", check=False)
    assert p.returncode != 0 and "cannot change when continuing: name, seed." in (p.stdout + p.stderr)
    p = train(ws, "nnKDTrainerClsBaseline", None, "--c")
    assert "from " + os.path.join(student, "fold_0", "nnkd_plan.json") in p.stdout


def test_teacher_reading_missing_channel_is_refused(ws, teacher):
    plan = write_plan(ws, "bad_teacher", {"student": {"channels": ["CT"]}, "teachers": [
        {"name": "pet", "model_folder": teacher, "channels": ["PET", "FDG", "ACE"]}]})
    p = train(ws, "nnKDTrainerREACT", plan, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "teachers[0].channels: channel 'PET' does not exist" in out
    assert "Epoch 0" not in out


def test_react_student_dual_teachers(ws, teacher, tmp_path):
    # the validation cut short as the benchmarks do: no segmentation pass, no test-time mirroring
    dose_plan = write_plan(ws, "dose", {"student": {"channels": ["CT"]}, "augmentation": [
        {"name": "lowdose_noise", "params": {"p": 1.0, "channels": [0]}}],
        "validation": {"segmentation": False, "mirroring": False}})
    train(ws, "nnKDTrainerDoseTeacher", dose_plan)
    dose_teacher = model_folder(ws, "nnKDTrainerDoseTeacher")
    val = os.path.join(dose_teacher, "fold_0", "validation")
    assert os.path.isfile(os.path.join(val, "classification_summary.json"))
    assert not os.path.exists(os.path.join(val, "summary.json"))  # nnU-Net's segmentation validation skipped
    ck = load_checkpoint(os.path.join(dose_teacher, "fold_0", "checkpoint_final.pth"), TRAINER_KEYS)
    assert ck["inference_allowed_mirroring_axes"] is not None  # what predictions use is nnU-Net's, unchanged
    plan = write_plan(ws, "react", {"student": {"channels": ["CT"]}, "teachers": [
        {"name": "structure_function", "model_folder": teacher},
        {"name": "dose_aware", "model_folder": dose_teacher, "channels": ["CT"]}]})
    train(ws, "nnKDTrainerREACT", plan)
    react = model_folder(ws, "nnKDTrainerREACT")
    ck = load_checkpoint(os.path.join(react, "fold_0", "checkpoint_final.pth"), TRAINER_KEYS)
    logged = ck["logging"]
    for key in ("kd/logit_kd", "kd/region_graph/node", "kd/region_graph/edge", "kd/region_graph/gw"):
        assert len(logged[key]) == 1, key
    assert [t["name"] for t in ck["nnkd"]["teachers"]] == ["structure_function", "dose_aware"]
    assert all(len(t["sha256"]) == 64 for t in ck["nnkd"]["teachers"])
    assert "loss_bank" in ck["nnkd"] and any("proj" in k or "weight" in k for k in ck["nnkd"]["loss_bank"])
    # dose robustness: the CT-only student on two simulated dose levels, one table
    nnkd_cli("simulate-dose", DS, "--dose", "1e5", "1e3", "--id", 60, "--channel", 0, "--workers", 1,
             env=ws["env"])
    csvs = []
    for did in (60, 61):
        raw = [d for d in os.listdir(ws["env"]["nnUNet_raw"]) if d.startswith(f"Dataset{did:03d}")][0]
        src = os.path.join(ws["env"]["nnUNet_raw"], raw, "imagesTr")
        ct = tmp_path / f"ct_{did}"
        ct.mkdir()
        for f in sorted(os.listdir(src)):
            if f.endswith("_0000.nii.gz"):
                shutil.copyfile(os.path.join(src, f), ct / f)
        nnkd_cli("predict", "-i", ct, "-o", tmp_path / f"p{did}", "-m", react, "-f", 0, env=ws["env"])
        csvs.append(tmp_path / f"p{did}" / "classification.csv")
    nnkd_cli("evaluate", *csvs, "--names", "I0=1e5", "I0=1e3", "--labels", DS, "-o", tmp_path / "levels",
             "--n-bootstrap", 200, env=ws["env"])
    table = json.load(open(tmp_path / "levels" / "levels.json"))
    assert [row["level"] for row in table["levels"]] == ["I0=1e5", "I0=1e3"]
    assert (tmp_path / "levels" / "levels.png").is_file()


def test_segmentation_student_distilled_voxel_by_voxel(ws, teacher, tmp_path):
    """nnKDTrainerSegKD through nnU-Net's CLI: seg_kd + FitNet from the CT+PET teacher, no head, CT-only predict."""
    plan = write_plan(ws, "segkd", {"trainers": ["nnKDTrainerSegKD"], "student": {"channels": ["CT"]},
                                    "teachers": [{"name": "petct", "model_folder": teacher}],
                                    "losses": [{"name": "seg_kd"}, {"name": "fitnet", "params": {"stage": -1}}]})
    train(ws, "nnKDTrainerSegKD", plan)
    folder = model_folder(ws, "nnKDTrainerSegKD")
    ck = load_checkpoint(os.path.join(folder, "fold_0", "checkpoint_final.pth"), TRAINER_KEYS)
    assert not any(k.startswith("head.") for k in ck["network_weights"])
    assert len(ck["logging"]["kd/seg_kd"]) == 1 and len(ck["logging"]["kd/fitnet"]) == 1
    assert np.isfinite(ck["logging"]["kd/seg_kd"][0]) and ck["logging"]["kd/seg_kd"][0] > 0
    assert "cls/val_auc" not in ck["logging"]
    assert json.load(open(os.path.join(folder, "plans.json")))["nnkd"]["network"]["num_classes"] == 0
    assert os.path.isfile(os.path.join(folder, "fold_0", "validation", "summary.json"))  # nnU-Net's Dice
    assert not os.path.exists(os.path.join(folder, "fold_0", "validation", "classification.csv"))
    run_cli([tool("nnUNetv2_predict"), "-i", images(ws, [0], "ct_only"), "-o", str(tmp_path / "seg"), "-d", str(DS),
             "-c", "3d_fullres", "-tr", "nnKDTrainerSegKD", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"],
            env=ws["env"])
    assert len([f for f in os.listdir(tmp_path / "seg") if f.endswith(".nii.gz")]) == 3
    # nnkd predict on the head-less model folder: nnU-Net's segmentations, and cases.csv, not classification.csv
    import SimpleITK as sitk

    nnkd_cli("predict", "-i", images(ws, [0], "ct_only"), "-o", tmp_path / "nnkd_seg", "-m", folder, "-f", 0,
             env=ws["env"])
    segs = sorted(f for f in os.listdir(tmp_path / "seg") if f.endswith(".nii.gz"))
    assert sorted(os.listdir(tmp_path / "nnkd_seg")) == sorted(["cases.csv", *segs])
    assert [r.split(",")[1] for r in open(tmp_path / "nnkd_seg" / "cases.csv").read().splitlines()[1:]] == ["CT"] * 3
    for f in segs:
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / d / f))) for d in ("seg", "nnkd_seg"))
        assert np.array_equal(a, b), f


def test_shipped_plan_by_name_and_paired_init_from_teacher(ws, teacher):
    """NNKD_PLAN names a shipped plan; another trainer refuses it, and a paired trainer honours
    student.init_from_teacher (here: refuses a teacher of another architecture), before training."""
    p = train(ws, "nnKDTrainerLogitKD", "react_kd", check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "plan 'react_kd' does not fit trainer nnKDTrainerLogitKD" in out
    assert "field 'trainers': the plan is for nnKDTrainerREACT, not for nnKDTrainerLogitKD" in out
    assert os.path.join("nnkd", "plans", "react_kd.json") in out
    assert not os.path.exists(os.path.join(model_folder(ws, "nnKDTrainerLogitKD"), "fold_0", "nnkd_plan.json"))
    plan = write_plan(ws, "init_fitnet", {"student": {"channels": ["CT"], "init_from_teacher": True},
                                          "teachers": [{"name": "structure_function", "model_folder": teacher}]})
    p = train(ws, "nnKDTrainerFitNet", plan, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and ("student.init_from_teacher: teacher 'structure_function' has another architecture"
                                  in out)
    assert "Epoch 0" not in out
    assert not os.path.exists(os.path.join(model_folder(ws, "nnKDTrainerFitNet"), "fold_0", "nnkd_plan.json"))


def test_resume_nonfinite_and_missing_labels_in_process(ws, monkeypatch, tmp_path):
    """Resume restores plan, epoch, optimizer and logger; a NaN loss stops and keeps the checkpoint.

    It trains a CT-only nnKDTrainerCls fold 0, i.e. in the teacher fixture's model folder: tests that use the
    teacher come before it in this module (pytest keeps the file order)."""
    import hashlib

    from nnunetv2.run.run_training import get_trainer_from_args

    from nnkd.errors import NNKDError

    for k, v in dict(ws["env"], **TRAIN).items():
        monkeypatch.setenv(k, v)
    plan = write_plan(ws, "resume", {"student": {"channels": ["CT"]},
                                     "classification": {"balanced_sampling": True},
                                     "schedule": dict(SCHEDULE, num_epochs=3, save_every=1)})
    monkeypatch.setenv("NNKD_PLAN", plan)
    cpu = torch.device("cpu")
    tr = get_trainer_from_args(str(DS), "3d_fullres", 0, "nnKDTrainerDistill", continue_training=False, device=cpu)
    # nnKDTrainerDistill without teachers must refuse before any data is touched
    with pytest.raises(NNKDError, match="needs teachers"):
        tr.on_train_start()

    tr = get_trainer_from_args(str(DS), "3d_fullres", 0, "nnKDTrainerCls", continue_training=False, device=cpu)
    tr.on_train_start()
    _one_epoch(tr)  # writes checkpoint_latest.pth (save_every=1), as an interrupted run leaves it
    log = open(tr.log_file).read()
    assert "training for 3 epochs of 2 iterations (+ 1 validation iterations each)" in log
    assert "epoch 1 of 3 done" in log
    latest = os.path.join(tr.output_folder, "checkpoint_latest.pth")
    digest = hashlib.sha256(open(latest, "rb").read()).hexdigest()

    # a non-finite loss stops training with a message; the last good checkpoint is untouched
    batch = next(tr.dataloader_train)
    batch["data"] = batch["data"] * float("nan")
    with pytest.raises(NNKDError, match="non-finite training loss"):
        tr.train_step(batch)
    assert hashlib.sha256(open(latest, "rb").read()).hexdigest() == digest
    assert not [f for f in os.listdir(tr.output_folder) if f.endswith(".tmp.pth")]
    # balanced sampling: every class drawn with equal probability
    ids = tr._balanced_identifiers(sorted(tr.case_to_class))
    drawn = [tr.case_to_class[k] for k in ids]
    shares = [drawn.count(c) / len(drawn) for c in range(3)]
    assert max(shares) - min(shares) < 0.01

    monkeypatch.delenv("NNKD_PLAN")
    resumed = get_trainer_from_args(str(DS), "3d_fullres", 0, "nnKDTrainerCls", continue_training=True, device=cpu)
    resumed.load_checkpoint(latest)
    assert resumed.kd_plan == tr.kd_plan and resumed.current_epoch == tr.current_epoch == 1
    assert resumed.logger.get_checkpoint() == tr.logger.get_checkpoint()
    saved = load_checkpoint(latest, TRAINER_KEYS)
    a, b = saved["optimizer_state"], resumed.optimizer.state_dict()
    assert all(torch.equal(v, resumed.network.state_dict()[k]) for k, v in saved["network_weights"].items())
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"]) for i in a["state"])

    # a training case without a case label stops training before the first iteration, naming it
    unlabelled = resumed.do_split()[0][0]
    del resumed.case_to_class[unlabelled]
    with pytest.raises(NNKDError, match=f"1 training case\\(s\\) have no case label.*{unlabelled}"):
        resumed.get_tr_and_val_datasets()


def test_exported_model_carries_class_names_but_no_case_labels(ws, student, tmp_path):
    """nnUNetv2_export_model_to_zip of a trained nnkd model: no case id with its class reaches the zip."""
    import io
    import zipfile

    labels = json.load(open(os.path.join(ws["env"]["nnUNet_raw"], ws["name"], "dataset.json")))["nnkd"]["case_labels"]
    assert len(labels) == 10
    out = tmp_path / "model.zip"
    run_cli([tool("nnUNetv2_export_model_to_zip"), "-d", str(DS), "-o", str(out), "-c", "3d_fullres",
             "-tr", "nnKDTrainerClsBaseline", "-f", "0"], env=ws["env"])
    z = zipfile.ZipFile(out)
    names = z.namelist()
    ds = json.loads(z.read(next(n for n in names if n.endswith("/dataset.json"))))
    assert ds["nnkd"]["class_names"] == ["G1", "G2", "G3"] and "case_labels" not in ds["nnkd"]
    assert any(n.endswith("fold_0/debug.json") for n in names)
    for n in names:
        data = z.read(n)
        assert b"case_labels" not in data, n
        if n.endswith("fold_0/validation/summary.json"):
            continue  # nnU-Net's per-case Dice names the validation cases' files (no class): nnU-Net's own export
        assert not [c for c in labels if c.encode() in data], n
    ck = torch.load(io.BytesIO(z.read(next(n for n in names if n.endswith("checkpoint_final.pth")))),
                    weights_only=False)
    assert "case_labels" not in ck["init_args"]["dataset_json"]["nnkd"]


def _one_epoch(tr):
    tr.on_epoch_start()
    tr.on_train_epoch_start()
    tr.on_train_epoch_end([tr.train_step(next(tr.dataloader_train)) for _ in range(2)])
    with torch.no_grad():
        tr.on_validation_epoch_start()
        tr.on_validation_epoch_end([tr.validation_step(next(tr.dataloader_val))])
    tr.on_epoch_end()


def test_nonfinite_never_reaches_a_checkpoint_and_a_corrected_plan_continues(ws, monkeypatch):
    """A NaN learning rate (as from schedule.initial_lr NaN) stops before the step; non-finite validation losses
    and weights stop too; checkpoints on disk stay byte-identical and finite; --c with a corrected plan works.
    Its CT-only runs use nnKDTrainerClsBaseline: the teacher fixture's model folder (nnKDTrainerCls) keeps its
    CT+FDG+ACE dataset.json, which a CT-only fold of the same trainer would rewrite."""
    import hashlib

    from nnunetv2.run.run_training import get_trainer_from_args

    from nnkd.errors import NNKDError

    for k, v in dict(ws["env"], **TRAIN).items():
        monkeypatch.setenv(k, v)
    schedule = dict(SCHEDULE, num_epochs=3, save_every=1)
    monkeypatch.setenv("NNKD_PLAN", write_plan(ws, "lr", {"student": {"channels": ["CT"]}, "schedule": schedule}))
    cpu = torch.device("cpu")
    tr = get_trainer_from_args(str(DS), "3d_fullres", 1, "nnKDTrainerClsBaseline", continue_training=False, device=cpu)
    tr.on_train_start()
    _one_epoch(tr)  # writes checkpoint_latest.pth and checkpoint_best.pth
    files = [os.path.join(tr.output_folder, f"checkpoint_{n}.pth") for n in ("best", "latest")]

    # one student forward per validation step; nnU-Net's loss is that of the same output
    calls = []
    hook = tr.network.register_forward_hook(lambda *a: calls.append(1))
    batch = next(tr.dataloader_val)
    with torch.no_grad():
        tr.on_validation_epoch_start()
        res = tr.validation_step(batch)
        hook.remove()
        out = tr.network(tr.student_input(batch["data"]), return_all=True)
    assert len(calls) == 1 and {"tp_hard", "fp_hard", "fn_hard", "cls_probs"} <= set(res)
    assert np.isclose(res["loss"], tr.loss(out.seg, batch["target"]).item(), rtol=1e-5)
    digest = {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}

    def unchanged():
        assert {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files} == digest
        for f in files:
            assert not nonfinite_tensors(load_checkpoint(f, TRAINER_KEYS)["optimizer_state"])
        assert sorted(f for f in os.listdir(tr.output_folder) if f.endswith(".pth")) == \
            ["checkpoint_best.pth", "checkpoint_latest.pth"]

    # the run continued (--c) with a NaN learning rate: refused before the first step is applied
    nan = get_trainer_from_args(str(DS), "3d_fullres", 1, "nnKDTrainerClsBaseline", continue_training=True, device=cpu)
    nan.initial_lr = float("nan")  # what schedule.initial_lr NaN sets
    nan.load_checkpoint(files[1])
    weights = {k: v.detach().clone() for k, v in nan.network.named_parameters()}  # buffers track batch statistics
    with pytest.raises(NNKDError) as e:
        nan.run_training()
    msg = str(e.value)
    assert "non-finite learning rate nan" in msg and "the optimizer step was not applied" in msg
    assert "(checkpoint_best.pth, checkpoint_latest.pth) hold the last finite weights" in msg
    assert "NNKD_PLAN=<corrected plan> and --c" in msg
    assert all(torch.equal(v, dict(nan.network.named_parameters())[k]) for k, v in weights.items())
    unchanged()

    # non-finite weights: the validation loss is refused, and so is writing them
    with torch.no_grad():
        next(iter(nan.network.parameters())).fill_(float("nan"))
        nan.on_validation_epoch_start()
        out = [nan.validation_step(next(nan.dataloader_val))]
    with pytest.raises(NNKDError, match="non-finite validation loss \\(cls_loss, loss\\)"):
        nan.on_validation_epoch_end(out)
    with pytest.raises(NNKDError, match="refused to write .*checkpoint_latest.pth: non-finite values"):
        nan.save_checkpoint(files[1])
    unchanged()
    assert not [f for f in os.listdir(tr.output_folder) if f.endswith(".tmp.pth")]

    # the advice works: a corrected plan changing the learning rate and epochs continues, the change logged
    fixed = write_plan(ws, "lr", {"student": {"channels": ["CT"]}, "description": "lr fixed",
                                  "schedule": dict(schedule, initial_lr=0.001, num_epochs=4)})
    monkeypatch.setenv("NNKD_PLAN", fixed)
    resumed = get_trainer_from_args(str(DS), "3d_fullres", 1, "nnKDTrainerClsBaseline", continue_training=True, device=cpu)
    resumed.load_checkpoint(files[1])
    assert resumed.current_epoch == 1 and resumed.num_epochs == 4 and resumed.kd_plan_source == fixed
    log = open(resumed.log_file).read()
    assert "plan changed on continuing: schedule.initial_lr: null -> 0.001" in log
    assert "plan changed on continuing: schedule.num_epochs: 3 -> 4" in log
    resumed.on_train_start()
    resumed.on_epoch_start()
    resumed.on_train_epoch_start()
    assert resumed.optimizer.param_groups[0]["lr"] < 0.001
    assert np.isfinite(resumed.train_step(next(resumed.dataloader_train))["loss"])
    # but not a different student
    monkeypatch.setenv("NNKD_PLAN", write_plan(ws, "lr", {"student": {"channels": ["CT", "FDG"]},
                                                          "schedule": schedule}))
    with pytest.raises(NNKDError, match="cannot change when continuing: student.channels\\."):
        get_trainer_from_args(str(DS), "3d_fullres", 1, "nnKDTrainerClsBaseline", continue_training=True, device=cpu)
