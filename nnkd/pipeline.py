"""Driving nnU-Net's and nnkd's command lines from Python: the layer ``nnkd demo``, ``nnkd bench quality`` and
``nnkd bench speed`` share.

A :class:`Workspace` holds the nnU-Net folders and the environment every child process gets. The
steps (synthetic data, planning, training with a distillation plan, prediction, evaluation) run the
real CLIs (``nnkd synth``, ``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``, ``nnkd predict``,
``nnUNetv2_predict``, ``nnkd detect``, ``nnkd evaluate``) and skip what the workspace already
holds, so a re-run resumes: a model whose fold has ``checkpoint_final.pth`` is not trained again, a
prediction whose output file exists is not repeated. Every child process streams its output, line by
line as it comes, to its log file and to the console (:func:`run_logged`).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from nnkd.environment import ext_trainer_value, workspace_env
from nnkd.errors import NNKDError
from nnkd.io import write_json
from nnkd.plan import read_plan_file
from nnkd.synthetic.plan_and_preprocess import COMMAND as PLAN_AND_PREPROCESS

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?:( |$)")  # nnU-Net's print_to_log_file prefix


CONSOLE_WIDTH = 240  # longer lines (nnU-Net's configuration dumps) are cut on the console, whole in the log


def console_line(line: str) -> Optional[str]:
    """What the console shows of a child's output line: nnU-Net's timestamp cut, blank lines and the
    ``next: ...`` hints of nnkd's commands left out (the pipeline runs those steps itself; the log keeps them),
    lines over :data:`CONSOLE_WIDTH` characters shortened."""
    text = _TIMESTAMP.sub("", line.rstrip())
    if not text.strip() or text.startswith("next: "):
        return None
    cut = " ... (whole line in log)"
    return text if len(text) <= CONSOLE_WIDTH else text[:CONSOLE_WIDTH - len(cut)] + cut


def run_logged(args: Sequence[str], env: Dict[str, str], log: Optional[str] = None,
               echo: Optional[Callable[[str], Optional[str]]] = console_line, prefix: str = "  ") -> int:
    """Run ``args`` and pass every line of its output (stdout and stderr), as it comes, to ``log`` (flushed
    line by line) and, through ``echo`` (None: nothing on the console), to the console after ``prefix``.

    The child should run with ``PYTHONUNBUFFERED=1`` (:class:`Workspace` sets it): Python children
    block-buffer a pipe otherwise. ``\r`` counts as a line end, so progress bars show as lines.
    Returns the exit status.
    """
    f = None
    if log:
        os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
        f = open(log, "w", encoding="utf-8", buffering=1)  # line-buffered: readable while the child runs
    try:
        try:
            p = subprocess.Popen(list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 errors="replace", bufsize=1)
        except FileNotFoundError:
            raise NNKDError(f"command not found: {args[0]} (nnU-Net's console scripts come with `pip install "
                            f"nnunetv2` in this Python environment: {os.path.dirname(sys.executable)})") from None
        with p:
            for line in p.stdout:
                if f is not None:
                    f.write(line)
                shown = echo(line) if echo is not None else None
                if shown is not None:
                    print(prefix + shown, flush=True)
    finally:
        if f is not None:
            f.close()
    return p.returncode


class Workspace:
    """Paths and the environment every child process gets.

    ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` live under ``root``, exactly where
    ``nnkd env --workspace ROOT`` points them; a training may put its results elsewhere (``results`` of
    :func:`train`) so that runs of one trainer with different plans or seeds get their own model folders.
    Logs go to ``ROOT/logs`` unless a step names its own.
    """

    def __init__(self, root: str, verbose: bool = True, tag_lines: bool = False, device: str = "cpu"):
        self.root = os.path.abspath(root)
        self.device = device  # -device of every training and prediction ("cpu" or "cuda")
        self.verbose = verbose
        self.tag_lines = tag_lines  # prefix echoed lines with their step's label (several steps run at once)
        self.env = dict(os.environ, **workspace_env(self.root), nnUNet_extTrainer=ext_trainer_value())
        self.env["PYTHONUNBUFFERED"] = "1"  # children's lines reach the logs and the console as they come
        self.env.pop("NNKD_PLAN", None)  # a training names its own plan
        # OpenMP threads that spin while they wait for work make a 2-core machine that runs anything else crawl
        # (measured: one 3D training step 12-20 s spinning, 3 s passive, under a load of 6-10)
        self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        for k, v in {"nnUNet_def_n_proc": "2", "nnUNet_compile": "0", "MPLBACKEND": "agg"}.items():
            self.env.setdefault(k, v)
        # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA): 0 is for training only.
        self.train_env = {"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")}
        self.env.pop("nnUNet_n_proc_DA", None)
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.makedirs(self.env[k], exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def dataset_folder(self, kind: str, dataset_id: int) -> Optional[str]:
        """``Dataset<id>_*`` under ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results``, or None."""
        root = self.env[kind]
        hits = sorted(d for d in os.listdir(root) if d.startswith(f"Dataset{dataset_id:03d}_")) \
            if os.path.isdir(root) else []
        return os.path.join(root, hits[0]) if hits else None

    def is_preprocessed(self, dataset_id: int, config: str) -> bool:
        """The dataset has nnU-Net plans with ``config`` and a non-empty preprocessed data folder for it."""
        folder = self.dataset_folder("nnUNet_preprocessed", dataset_id)
        plans_file = os.path.join(folder or "", "nnUNetPlans.json")
        if not os.path.isfile(plans_file):
            return False
        with open(plans_file) as f:
            ident = json.load(f)["configurations"].get(config, {}).get("data_identifier", "")
        sub = os.path.join(folder, ident)
        return bool(ident) and os.path.isdir(sub) and len(os.listdir(sub)) > 0

    def run(self, args: List[str], extra_env: Optional[Dict[str, str]] = None, log: Optional[str] = None,
            label: Optional[str] = None, echo: Optional[Callable[[str], Optional[str]]] = console_line) -> float:
        """Run a command; its output streams to ``log`` and (``verbose``) to the console as it comes.
        Returns the wall time in seconds; a non-zero exit raises :class:`NNKDError` with the log's last lines."""
        env = dict(self.env, **(extra_env or {}))
        tag = f"[{label}] " if label and self.tag_lines else ""
        if self.verbose:
            print(f"{tag}$ {' '.join(map(str, args))}" + (f"\n{tag}  (log: {log})" if log else ""), flush=True)
        t0 = time.time()
        code = run_logged(args, env, log, echo if self.verbose else None, prefix="  " + tag)
        if code != 0:
            tail = ""
            if log and os.path.isfile(log):
                with open(log, encoding="utf-8", errors="replace") as f:
                    tail = "\n" + "\n".join(f.read().strip().splitlines()[-15:])
            raise NNKDError(f"'{' '.join(map(str, args))}' failed (exit {code})"
                            + (f"; log {log}:{tail}" if log else ""))
        seconds = time.time() - t0
        if self.verbose:
            print(f"{tag}  done in {seconds:.0f} s" + (f": {' '.join(map(str, args[:5]))} ..." if tag else ""),
                  flush=True)
        return seconds


def nnkd_cmd(*args) -> List[str]:
    """``nnkd ARGS`` with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "nnkd.cli", *map(str, args)]


def tool(name: str) -> str:
    """nnU-Net console scripts of this interpreter's environment (also when not on PATH)."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else name


# ------------------------------------------------------------------------------------------- data
def synth(ws: Workspace, kind: str, dataset_id: int, cases: int, seed: int, size: Sequence[int]) -> List[str]:
    """``nnkd synth KIND`` unless the dataset exists; returns the raw folder(s) (two for unpaired kinds: student
    ``dataset_id`` and teacher ``dataset_id + 1``, made again together when one of them is missing)."""
    n = 1 if kind == "paired3d" else 2
    if any(ws.dataset_folder("nnUNet_raw", dataset_id + i) is None for i in range(n)):
        ws.run(nnkd_cmd("synth", kind, "--id", dataset_id, "--cases", cases, "--seed", seed, "--size", *size,
                        "--overwrite"), log=ws.path("logs", f"synth_{kind}_{dataset_id}.log"))
    return [ws.dataset_folder("nnUNet_raw", dataset_id + i) for i in range(n)]


def plan_and_preprocess(ws: Workspace, dataset_ids: Sequence[int], config: str) -> None:
    """``nnUNetv2_plan_and_preprocess`` for the datasets not preprocessed yet (synthetic data: with the
    smaller intensity sample of :mod:`nnkd.synthetic.plan_and_preprocess`)."""
    todo = [d for d in dataset_ids if not ws.is_preprocessed(d, config)]
    if todo:
        n = ws.env["nnUNet_def_n_proc"]
        ws.run([*PLAN_AND_PREPROCESS, "-d", *map(str, todo), "-c", config, "-np", n, "-npfp", n,
                "--verify_dataset_integrity"],
               log=ws.path("logs", f"plan_and_preprocess_{'_'.join(map(str, todo))}.log"))


def load_plan_file(name: str) -> Dict[str, Any]:
    """A shipped plan (``name`` with or without ``.json``) or any plan file, unvalidated."""
    return read_plan_file(name)


def with_overrides(plan: Dict[str, Any], **fields) -> Dict[str, Any]:
    """A copy of ``plan`` with top-level ``fields`` replaced; dict values merge one level deep."""
    out = copy.deepcopy(plan)
    for k, v in fields.items():
        out[k] = dict(out.get(k) or {}, **v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------------------------------- training
def model_folder(ws: Workspace, dataset_id: int, trainer: str, config: str, results: Optional[str] = None) -> str:
    """``<results>/Dataset<id>_<name>/<trainer>__nnUNetPlans__<config>`` (results: ``$nnUNet_results``)."""
    name = os.path.basename(ws.dataset_folder("nnUNet_preprocessed", dataset_id)
                            or ws.dataset_folder("nnUNet_raw", dataset_id))
    return os.path.join(results or ws.env["nnUNet_results"], name, f"{trainer}__nnUNetPlans__{config}")


def is_trained(folder: str, fold: int = 0) -> bool:
    return os.path.isfile(os.path.join(folder, f"fold_{fold}", "checkpoint_final.pth"))


def train(ws: Workspace, dataset_id: int, config: str, trainer: str, plan: Dict[str, Any], label: str,
          results: Optional[str] = None, log: Optional[str] = None) -> str:
    """``NNKD_PLAN=<plan> nnUNetv2_train ID CONFIG 0 -tr TRAINER -device <ws.device>`` unless already trained.

    ``plan`` is written to ``<workspace>/plans/<plan name>.json`` (names must be unique per run);
    ``results`` replaces ``$nnUNet_results`` for this training. Returns the model folder. A run
    stopped half-way starts again from scratch (a fresh plan would refuse ``--c`` anyway when it changed).
    """
    folder = model_folder(ws, dataset_id, trainer, config, results)
    if is_trained(folder):
        if ws.verbose:
            print(f"{label}: already trained ({folder})")
        return folder
    plan_path = ws.path("plans", f"{plan['name']}.json")
    write_json(plan_path, plan)
    log = log or ws.path("logs", f"train_{plan['name']}.log")
    if ws.verbose:
        epochs = (plan.get("schedule") or {}).get("num_epochs")
        print(f"training {label} with {trainer}" + (f", {epochs} epoch(s)" if epochs else "")
              + f" -> {folder}\n  nnU-Net's own log: {os.path.join(folder, 'fold_0', 'training_log_*.txt')}",
              flush=True)
    env = dict(ws.train_env, NNKD_PLAN=plan_path)
    if results:
        os.makedirs(results, exist_ok=True)
        env["nnUNet_results"] = results
    ws.run([tool("nnUNetv2_train"), str(dataset_id), config, "0", "-tr", trainer, "-device", ws.device],
           extra_env=env, log=log, label=label)
    return folder


# ------------------------------------------------------------------------------------------- prediction
def channel_images(raw_folder: str, channels: Optional[List[int]], dst: str) -> str:
    """A copy of ``raw_folder/imagesTr`` holding only ``channels`` (renumbered from 0), as a deployment
    site with only those modalities would have them; ``None`` = every channel. Built once."""
    src = os.path.join(raw_folder, "imagesTr")
    if not os.path.isdir(dst):
        tmp = dst + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name in sorted(os.listdir(src)):
            stem, rest = name.rsplit("_", 1)
            ch = int(rest[:4])
            if channels is None or ch in channels:
                new = name if channels is None else f"{stem}_{channels.index(ch):04d}{rest[4:]}"
                shutil.copyfile(os.path.join(src, name), os.path.join(tmp, new))
        os.replace(tmp, dst)
    return dst


def predict_classes(ws: Workspace, images: str, out: str, model: str, redo: bool = False,
                    log: Optional[str] = None, label: Optional[str] = None) -> str:
    """``nnkd predict`` without test-time mirroring, the same for every model of a benchmark (class
    probabilities + segmentations); returns ``out/classification.csv``."""
    csv = os.path.join(out, "classification.csv")
    if redo or not os.path.isfile(csv):
        ws.run(nnkd_cmd("predict", "-i", images, "-o", out, "-m", model, "-f", "0", "-device", ws.device,
                        "--disable_tta"),
               log=log, label=label)
    return csv


def predict_detections(ws: Workspace, images: str, out: str, model: str, redo: bool = False,
                       log: Optional[str] = None, label: Optional[str] = None) -> str:
    """``nnUNetv2_predict --save_probabilities --disable_tta`` then ``nnkd detect``; returns ``out/detections.csv``."""
    csv = os.path.join(out, "detections.csv")
    if redo or not os.path.isfile(csv):
        maps = os.path.join(out, "probabilities")
        ws.run([tool("nnUNetv2_predict_from_modelfolder"), "-i", images, "-o", maps, "-m", model, "-f", "0",
                "-device", ws.device, "-npp", "1", "-nps", "1", "--save_probabilities", "--disable_progress_bar", "--disable_tta"],
               log=log, label=label)
        ws.run(nnkd_cmd("detect", "-i", maps, "-o", csv), log=log and log + ".detect", label=label)
    return csv


def evaluate_classes(ws: Workspace, csv: str, labels: str, out: str, redo: bool = False,
                     log: Optional[str] = None, label: Optional[str] = None) -> Dict[str, Any]:
    """``nnkd evaluate`` -> ``out/metrics.json`` (read back)."""
    metrics = os.path.join(out, "metrics.json")
    if redo or not os.path.isfile(metrics):
        ws.run(nnkd_cmd("evaluate", csv, "--labels", labels, "-o", out), log=log, label=label)
    with open(metrics) as f:
        return json.load(f)


def evaluate_detections(ws: Workspace, csv: str, ground_truth: str, out: str, redo: bool = False,
                        log: Optional[str] = None, label: Optional[str] = None) -> Dict[str, Any]:
    """``nnkd evaluate --detection`` -> ``out/froc.json`` (read back)."""
    report = os.path.join(out, "froc.json")
    if redo or not os.path.isfile(report):
        ws.run(nnkd_cmd("evaluate", csv, "--detection", "--labels", ground_truth, "-o", out), log=log, label=label)
    with open(report) as f:
        return json.load(f)


def compare_classes(ws: Workspace, csv_a: str, csv_b: str, labels: str, out_json: str, names: Sequence[str],
                    redo: bool = False, log: Optional[str] = None, label: Optional[str] = None) -> Dict[str, Any]:
    """``nnkd compare A B`` (DeLong + paired bootstrap) -> ``out_json`` (read back)."""
    if redo or not os.path.isfile(out_json):
        ws.run(nnkd_cmd("compare", csv_a, csv_b, "--labels", labels, "--names", *names, "-o", out_json),
               log=log, label=label)
    with open(out_json) as f:
        return json.load(f)
