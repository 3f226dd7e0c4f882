"""`nnkd demo`: the whole path on a synthetic paired PET/CT dataset, through nnU-Net's own CLIs.

Synthetic dataset -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train a multi-modal teacher
(nnKDTrainerCls, modality dropout), a dose-aware CT teacher (nnKDTrainerDoseTeacher), a CT-only
student without distillation (nnKDTrainerClsBaseline) and a REACT-KD student (nnKDTrainerREACT)
-> nnkd predict on an external synthetic test set (CT-only models see CT files only) -> nnkd
evaluate / compare -> a comparison table. Steps already done in the workspace are skipped, so a re-run resumes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from nnkd.commands.info import ext_trainer_value, workspace_env
from nnkd.errors import NNKDError
from nnkd.io import write_json

TRAIN_ID, TEST_ID = 990, 991
PROGRESS_TAGS = ("Epoch ", "cls: train_loss", "Mean Validation Dice", "classification on")
CONFIG = "3d_fullres"


@dataclass(frozen=True)
class DemoSettings:
    cases: int = 30
    test_cases: int = 24
    size: tuple = (24, 40, 40)
    epochs: int = 12
    iterations: int = 12
    val_iterations: int = 4
    seed: int = 0


QUICK = DemoSettings(cases=12, test_cases=8, size=(16, 32, 32), epochs=1, iterations=2, val_iterations=1)


@dataclass(frozen=True)
class Model:
    """One trained model of the demo: trainer, plan and the channels it deploys with."""
    label: str
    trainer: str
    plan: Dict
    channels: Optional[List[int]]  # None = all


def _models(s: DemoSettings, teacher_folder, dose_teacher_folder) -> List[Model]:
    schedule = {"num_epochs": s.epochs, "num_iterations_per_epoch": s.iterations,
                "num_val_iterations_per_epoch": s.val_iterations}
    common = {"seed": s.seed, "schedule": schedule, "classification": {"select_best_by": "auc"}}
    ct = {"channels": ["CT"]}
    teachers = [{"name": "structure_function", "model_folder": teacher_folder},
                {"name": "dose_aware", "model_folder": dose_teacher_folder, "channels": ["CT"]}]
    return [
        Model("teacher CT+FDG+ACE", "nnKDTrainerCls",
              dict(common, name="demo_teacher", modality_dropout={"p": 0.3, "keep": ["CT"]}), None),
        Model("dose-aware teacher CT", "nnKDTrainerDoseTeacher",
              dict(common, name="demo_dose_teacher", student=ct,
                   augmentation=[{"name": "lowdose_noise", "params": {"p": 0.5, "channels": [0]}}]), [0]),
        Model("student CT, no KD", "nnKDTrainerClsBaseline", dict(common, name="demo_student", student=ct), [0]),
        # losses: nnKDTrainerREACT's defaults (focal, 0.7 logit KD, region-graph KD)
        Model("student CT, REACT-KD", "nnKDTrainerREACT",
              dict(common, name="demo_react", student=ct, teachers=teachers,
                   classification={"loss": "focal", "params": {"gamma": 2.0}, "select_best_by": "auc"}), [0]),
    ]


class Workspace:
    """Paths and the environment every child process gets."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.env = dict(os.environ, **workspace_env(self.root), nnUNet_extTrainer=ext_trainer_value())
        for k, v in {"nnUNet_def_n_proc": "2", "nnUNet_compile": "0"}.items():
            self.env.setdefault(k, v)
        # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA): 0 is for training only.
        self.train_env = {"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")}
        self.env.pop("nnUNet_n_proc_DA", None)
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.makedirs(self.env[k], exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def dataset_folder(self, kind: str, dataset_id: int) -> Optional[str]:
        root = self.env[kind]
        hits = [d for d in os.listdir(root) if d.startswith(f"Dataset{dataset_id:03d}_")]
        return os.path.join(root, hits[0]) if hits else None

    def run(self, args: List[str], extra_env: Optional[Dict[str, str]] = None, log: Optional[str] = None) -> None:
        env = dict(self.env, **(extra_env or {}))
        print(f"$ {' '.join(args)}", flush=True)
        t0 = time.time()
        if log:  # everything to the log; the epoch lines to the console as progress
            with open(log, "w") as f, subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                                       stderr=subprocess.STDOUT, text=True) as p:
                for line in p.stdout:
                    f.write(line)
                    if any(tag in line for tag in PROGRESS_TAGS):
                        print("  " + line.split(": ", 1)[-1].rstrip(), flush=True)
        else:
            p = subprocess.run(args, env=env)
        if p.returncode != 0:
            raise NNKDError(f"'{' '.join(args)}' failed (exit {p.returncode})" + (f"; see {log}" if log else ""))
        print(f"  done in {time.time() - t0:.0f} s", flush=True)


def _nnkd(*args) -> List[str]:
    return [sys.executable, "-m", "nnkd.cli", *map(str, args)]


def _tool(name: str) -> str:
    """nnU-Net console scripts of this interpreter's environment (also when not on PATH)."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else name


def prepare_data(ws: Workspace, s: DemoSettings) -> str:
    """Synthetic training and test datasets, planned and preprocessed; returns the test dataset folder."""
    for did, cases, seed in ((TRAIN_ID, s.cases, s.seed), (TEST_ID, s.test_cases, s.seed + 1000)):
        if ws.dataset_folder("nnUNet_raw", did) is None:
            ws.run(_nnkd("synth", "paired3d", "--id", did, "--cases", cases, "--seed", seed, "--size", *s.size))
    pre = ws.dataset_folder("nnUNet_preprocessed", TRAIN_ID)
    if pre is None or not os.path.isdir(os.path.join(pre, "nnUNetPlans_3d_fullres")):
        ws.run([_tool("nnUNetv2_plan_and_preprocess"), "-d", str(TRAIN_ID), "-c", CONFIG, "-np", "2",
                "--verify_dataset_integrity"], log=ws.path("plan_and_preprocess.log"))
    return ws.dataset_folder("nnUNet_raw", TEST_ID)


def model_folder(ws: Workspace, trainer: str) -> str:
    name = os.path.basename(ws.dataset_folder("nnUNet_preprocessed", TRAIN_ID))
    return os.path.join(ws.env["nnUNet_results"], name, f"{trainer}__nnUNetPlans__{CONFIG}")


def train(ws: Workspace, m: Model) -> str:
    folder = model_folder(ws, m.trainer)
    if os.path.isfile(os.path.join(folder, "fold_0", "checkpoint_final.pth")):
        print(f"{m.label}: already trained ({folder})")
        return folder
    plan_path = ws.path("plans", f"{m.plan['name']}.json")
    write_json(plan_path, m.plan)
    os.makedirs(ws.path("logs"), exist_ok=True)
    log = ws.path("logs", f"train_{m.trainer}.log")
    print(f"training {m.label} with {m.trainer} (log: {log})")
    ws.run([_tool("nnUNetv2_train"), str(TRAIN_ID), CONFIG, "0", "-tr", m.trainer, "-device", "cpu"],
           extra_env=dict(ws.train_env, NNKD_PLAN=plan_path), log=log)
    return folder


def test_images(ws: Workspace, test_raw: str, channels: Optional[List[int]]) -> str:
    """The test set's images holding only ``channels`` (what a deployment site would have)."""
    src = os.path.join(test_raw, "imagesTr")
    tag = "all" if channels is None else "ch" + "_".join(map(str, channels))
    dst = ws.path("test_images", tag)
    if not os.path.isdir(dst):
        tmp = dst + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name in sorted(os.listdir(src)):
            ch = int(name.rsplit("_", 1)[1][:4])
            if channels is None or ch in channels:
                new = name if channels is None else f"{name.rsplit('_', 1)[0]}_{channels.index(ch):04d}" \
                                                    f"{name.rsplit('_', 1)[1][4:]}"
                shutil.copyfile(os.path.join(src, name), os.path.join(tmp, new))
        os.replace(tmp, dst)
    return dst


def run_demo(workspace: str, settings: DemoSettings = DemoSettings()) -> Dict:
    ws = Workspace(workspace)
    t0 = time.time()
    print(f"[1/4] synthetic data and nnU-Net preprocessing in {ws.root}")
    test_raw = prepare_data(ws, settings)
    results = {}
    models = _models(settings, model_folder(ws, "nnKDTrainerCls"), model_folder(ws, "nnKDTrainerDoseTeacher"))
    for i, m in enumerate(models):
        print(f"[2/4] training {i + 1}/{len(models)}: {m.label}")
        folder = train(ws, m)
        print(f"[3/4] predicting the external test set with {m.label}")
        out = ws.path("predictions", m.trainer)
        ws.run(_nnkd("predict", "-i", test_images(ws, test_raw, m.channels), "-o", out, "-m", folder,
                     "-f", "0", "-device", "cpu"))
        report = ws.path("reports", m.trainer)
        ws.run(_nnkd("evaluate", os.path.join(out, "classification.csv"), "--labels", str(TEST_ID),
                     "-o", report))
        results[m.label] = {"csv": os.path.join(out, "classification.csv"), "report": report}
    print("[4/4] comparison")
    csvs = {m.trainer: results[m.label]["csv"] for m in models}
    compare_json = ws.path("reports", "compare_react_vs_no_kd.json")
    ws.run(_nnkd("compare", csvs["nnKDTrainerREACT"], csvs["nnKDTrainerClsBaseline"], "--labels", str(TEST_ID),
                 "-o", compare_json))
    table = summary_table(results)
    write_json(ws.path("reports", "summary.json"), {"models": results, "table": table,
                                                    "minutes": round((time.time() - t0) / 60, 1)})
    print("\n" + table)
    print(f"\nreports: {ws.path('reports')}  (metrics.json, roc.png, dca.png, calibration.png per model)")
    print(f"total time: {(time.time() - t0) / 60:.1f} min")
    return results


def summary_table(results: Dict) -> str:
    import json

    rows = [("model", "AUC [95% CI]", "accuracy", "bal. acc.")]
    for label, r in results.items():
        m = json.load(open(os.path.join(r["report"], "metrics.json")))
        auc, ci = m["auc"]["value"], m["auc"]["ci95"]
        rows.append((label, f"{auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if auc is not None else "n/a",
                     f"{m['accuracy']:.3f}", f"{m['balanced_accuracy']:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
