"""End to end through nnU-Net's and nnkd's CLIs on the tiny synthetic unpaired 2D pairs.

One module-scoped workspace holds both settings, preprocessed in one nnU-Net call:
PaGKD (white-light student 602, narrow-band teacher 603: teacher, PaGKD student with its
class-matched teacher stream in an nnU-Net augmentation worker, prediction, evaluation) and
CoMoTo (tomosynthesis-like student 604, mammography teacher 605: ImPA teacher, CoMoTo student
initialised from it on half its cases, nnU-Net probability maps -> detections -> FROC).
"""
import json
import math
import os
import shutil
import sys

import pytest
import torch

from conftest import nnkd_cli, run_cli, workspace
from nnkd.pipeline import tool
from nnkd.synthetic.plan_and_preprocess import COMMAND as PLAN_AND_PREPROCESS  # planning sized for tiny datasets

pytestmark = pytest.mark.integration
POLYP, LESION = 602, 604
SCHEDULE = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("unpaired")
    env = workspace(root)
    nnkd_cli("synth", "unpaired2d", "--id", POLYP, "--cases", 16, "--size", 32, 32, env=env)
    nnkd_cli("synth", "lesion2d", "--id", LESION, "--cases", 16, "--size", 32, 32, env=env)
    ids = [str(i) for i in (POLYP, POLYP + 1, LESION, LESION + 1)]
    planned = run_cli([*PLAN_AND_PREPROCESS, "-d", *ids, "-c", "2d", "-np", "1", "-npfp", "1",
                       "--verify_dataset_integrity"], env=env)
    assert "verify_dataset_integrity Done" in planned.stdout
    names = {int(d[7:10]): d for d in os.listdir(env["nnUNet_raw"])}
    for name in names.values():  # the case labels travelled into nnUNet_preprocessed
        doc = json.load(open(os.path.join(env["nnUNet_preprocessed"], name, "dataset.json")))
        assert len(doc["nnkd"]["case_labels"]) == 16
    return {"root": root, "env": env, "names": names}


def write_plan(ws, name, plan):
    path = ws["root"] / f"{name}.json"
    path.write_text(json.dumps(dict({"name": name, "seed": 0, "schedule": SCHEDULE}, **plan)))
    return str(path)


def train(ws, dataset, trainer, plan_path, *args, workers=0):
    env = dict(ws["env"], nnUNet_n_proc_DA=str(workers), NNKD_PLAN=plan_path)
    return run_cli([tool("nnUNetv2_train"), str(dataset), "2d", "0", "-tr", trainer, "-device", "cpu", *args],
                   env=env)


def model_folder(ws, dataset, trainer):
    return os.path.join(ws["env"]["nnUNet_results"], ws["names"][dataset], f"{trainer}__nnUNetPlans__2d")


def teacher_spec(ws, dataset, trainer, name):
    return {"name": name, "model_folder": model_folder(ws, dataset, trainer), "paired": False, "dataset": dataset}


def some_images(ws, dataset, n, tag):
    src = os.path.join(ws["env"]["nnUNet_raw"], ws["names"][dataset], "imagesTr")
    dst = ws["root"] / tag
    dst.mkdir()
    for f in sorted(os.listdir(src))[:n]:
        shutil.copyfile(os.path.join(src, f), dst / f)
    return str(dst)


def read_log(folder):
    logs = [f for f in os.listdir(os.path.join(folder, "fold_0")) if f.startswith("training_log")]
    return open(os.path.join(folder, "fold_0", sorted(logs)[-1])).read()


@pytest.fixture(scope="module")
def nbi_teacher(ws):
    train(ws, POLYP + 1, "nnKDTrainerCls", write_plan(ws, "nbi", {"classification": {"select_best_by": "auc"}}))
    return teacher_spec(ws, POLYP + 1, "nnKDTrainerCls", "nbi")


@pytest.fixture(scope="module")
def impa_teacher(ws):
    plan = write_plan(ws, "impa", {"classification": {"weight": 0.0},
                                   "losses": [{"name": "impa", "weight": 1.0, "params": {"beta": 2.0}}]})
    train(ws, LESION + 1, "nnKDTrainerImPA", plan)
    log = read_log(model_folder(ws, LESION + 1, "nnKDTrainerImPA"))
    assert "kd/impa/impa_align" in log and "kd/impa/impa_background" in log
    return teacher_spec(ws, LESION + 1, "nnKDTrainerImPA", "mammography")


def test_pagkd_student_trains_predicts_and_evaluates(ws, nbi_teacher, tmp_path):
    plan = write_plan(ws, "pagkd", {"teachers": [nbi_teacher],
                                    "losses": [{"name": "pagkd", "weight": 1.0, "params": {"warmup_epochs": 0}}]})
    train(ws, POLYP, "nnKDTrainerPaGKD", plan, workers=1)  # the teacher stream runs in an augmentation worker
    folder = model_folder(ws, POLYP, "nnKDTrainerPaGKD")
    log = read_log(folder)
    assert "class-matched batches from" in log and "data wait:" in log
    values = {term: float(log.split(f"{term}: ")[1].split()[0]) for term in ("kd/pagkd/pro", "kd/pagkd/pcls",
                                                                              "kd/pagkd/den")}
    assert all(math.isfinite(v) for v in values.values()), values
    # switched on (warm-up 0); "pro" alone may be exactly 0: a batch pair sharing one class has no negatives
    assert values["kd/pagkd/pcls"] != 0.0 and values["kd/pagkd/den"] != 0.0, values
    ckpt = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), weights_only=False)
    assert ckpt["nnkd"]["teachers"][0]["sha256"] and "losses.pagkd.embed_t.weight" in ckpt["nnkd"]["loss_bank"]
    # PaGKD's loss bank trains with its own AdamW (plan default), not as a group of the student's SGD
    assert len(ckpt["optimizer_state"]["param_groups"]) == 1
    steps = {int(v["step"]) for v in ckpt["nnkd"]["loss_optimizer"]["state"].values()}
    assert steps == {SCHEDULE["num_iterations_per_epoch"]}, steps
    # --c with one more epoch continues the loss bank's AdamW (its step count goes on)
    longer = write_plan(ws, "pagkd", {"teachers": [nbi_teacher], "schedule": dict(SCHEDULE, num_epochs=2),
                                      "losses": [{"name": "pagkd", "weight": 1.0, "params": {"warmup_epochs": 0}}]})
    train(ws, POLYP, "nnKDTrainerPaGKD", longer, "--c", workers=1)
    ckpt = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), weights_only=False)
    steps = {int(v["step"]) for v in ckpt["nnkd"]["loss_optimizer"]["state"].values()}
    assert steps == {2 * SCHEDULE["num_iterations_per_epoch"]}, steps
    assert os.path.isfile(os.path.join(folder, "fold_0", "progress.png"))

    out = tmp_path / "pred"
    nnkd_cli("predict", "-i", some_images(ws, POLYP, 4, "wli"), "-o", out, "-m", folder, "-f", "0",
             "-device", "cpu", env=ws["env"])
    nnkd_cli("evaluate", out / "classification.csv", "--labels", POLYP, "--allow-missing", "-o", tmp_path / "report",
             "--n-bootstrap", 50, env=ws["env"])
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["class_names"] == ["adenoma", "hyperplastic", "serrated"]
    assert 0.0 <= metrics["auc"]["value"] <= 1.0


def test_teacher_batches_are_class_matched_and_checked(ws, nbi_teacher, tmp_path):
    """In the trainer's real loader: teacher sample j has student sample j's class, at the teacher's patch."""
    plan = write_plan(ws, "stream", {"teachers": [nbi_teacher], "losses": [{"name": "pagkd", "weight": 1.0}]})
    script = f"""
import json, torch
from nnunetv2.run.run_training import get_trainer_from_args
tr = get_trainer_from_args("{POLYP}", "2d", 0, "nnKDTrainerPaGKD", device=torch.device("cpu"))
tr.initialize()
gen, _ = tr.get_dataloaders()
out = []
for _ in range(4):
    b = tr.make_batch(next(gen))
    out.append([b["class_target"].tolist(), b["teacher_class_target"][0].tolist(), list(b["teacher_data"][0].shape),
                sorted(set(b["teacher_keys"][0]) - set(tr.teacher_data[0].sampler.case_to_class))])
# the losses get the teacher batch's own targets, not the student's
seen = dict()
tr.loss_bank_call = lambda student, teachers, batch: seen.update(batch) or dict()
b = tr.make_batch(next(gen))
tr.compute_losses(tr.forward_student(b), b)
own = seen["teacher_seg_target"][0] is b["teacher_seg_target"][0] and seen["teacher_class_target"][0] is b["teacher_class_target"][0]
print("RESULT" + json.dumps([out, own]))
"""
    env = dict(ws["env"], nnUNet_n_proc_DA="0", NNKD_PLAN=plan)
    res = run_cli([sys.executable, "-c", script], env=env)
    batches, own_targets = json.loads(res.stdout.split("RESULT")[1])
    assert own_targets
    for student, teacher, shape, foreign in batches:
        assert student == teacher and len(student) == shape[0] and foreign == []
        assert shape[1] == 3  # the teacher's RGB channels

    # a teacher dataset without labels for one class is refused before training, naming the class
    teacher_json = os.path.join(ws["env"]["nnUNet_preprocessed"], ws["names"][POLYP + 1], "dataset.json")
    saved = open(teacher_json).read()
    data = json.loads(saved)
    labels = data["nnkd"]["case_labels"]
    for case in [c for c, lab in labels.items() if lab == "serrated"]:
        labels[case] = "adenoma"
    try:
        with open(teacher_json, "w") as f:
            json.dump(data, f)
        res = run_cli([tool("nnUNetv2_train"), str(POLYP), "2d", "0", "-tr", "nnKDTrainerPaGKD", "-device", "cpu"],
                      env=env, check=False)
    finally:
        with open(teacher_json, "w") as f:
            f.write(saved)
    assert res.returncode != 0
    assert "['serrated']" in res.stdout + res.stderr and "class-matched teacher batch cannot be drawn" in res.stdout + res.stderr


def test_comoto_student_detections_and_froc(ws, impa_teacher, tmp_path):
    plan = write_plan(ws, "comoto", {"student": {"train_fraction": 0.5, "init_from_teacher": True},
                                     "classification": {"weight": 0.0}, "teachers": [impa_teacher],
                                     "losses": [{"name": "lskd", "weight": 1.0, "params": {}}]})
    train(ws, LESION, "nnKDTrainerCoMoTo", plan)
    folder = model_folder(ws, LESION, "nnKDTrainerCoMoTo")
    log = read_log(folder)
    assert "student initialised from teacher 'mammography'" in log
    assert "student.train_fraction 0.5: training on" in log
    assert "kd/lskd/lskd:" in log

    pred = tmp_path / "pred"
    run_cli([tool("nnUNetv2_predict"), "-i", some_images(ws, LESION, 4, "dbt"), "-o", str(pred), "-d", str(LESION),
             "-c", "2d", "-tr", "nnKDTrainerCoMoTo", "-f", "0", "--save_probabilities", "-device", "cpu",
             "-npp", "1", "-nps", "1"],
            env=ws["env"])
    nnkd_cli("detect", "-i", pred, "-o", tmp_path / "det.csv", "--threshold", 0.3, env=ws["env"])
    labels = os.path.join(ws["env"]["nnUNet_raw"], ws["names"][LESION], "labelsTr")
    nnkd_cli("evaluate", tmp_path / "det.csv", "--detection", "--labels", labels, "--allow-missing",
             "-o", tmp_path / "froc", "--n-bootstrap", 50, env=ws["env"])
    summary = json.loads((tmp_path / "froc" / "froc.json").read_text())
    assert 0.0 <= summary["mean_sensitivity"] <= 1.0
    assert (tmp_path / "froc" / "froc.png").is_file()

