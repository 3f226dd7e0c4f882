"""`nnkd bench speed`: cost per training step of every method, against plain student + teacher forwards.

For each case of :data:`CASES` (a method trainer on a synthetic benchmark dataset) and for plain
``nnKDTrainerClsBaseline`` (= ``nnKDTrainerCls``) on the same student, one fresh subprocess
instantiates the trainer exactly as ``nnUNetv2_train`` does (plans, configuration, fold 0,
dataset.json, device; ``NNKD_PLAN`` names a plan with the teachers), calls ``initialize()`` and
times the trainer's real ``train_step`` on pre-fetched batches (data loading is not timed; every
case of a dataset reads the same batches, saved once). Teachers are nnU-Net model folders built
from untrained networks (``initialize()`` + ``save_checkpoint()``): timing does not depend on
weights.

Per case, every timed batch runs each variant once, in an order rotated from batch to batch (load
drift of a shared machine then hits all alike); ratios and shares are medians of per-batch values:

* ``step``: one ``train_step`` with everything on;
* ``student``: the same trainer's ``train_step`` with teachers and ``LossBank`` switched off (the
  plain student step, interleaved with the KD step; the ``plain`` row is ``nnKDTrainerClsBaseline``
  in its own process, for comparison);
* ``teachers``: ``trainer.teacher_outputs(batch)`` alone (all teachers, same autocast as the step);
* ``losses``: forward + backward of the ``LossBank`` on the student and teacher outputs of a step
  run with the bank switched off, cut from the student's graph (new leaves), each timed on its
  own; the difference between the step with and without the bank is kept as ``losses_ab_ms``
  (the same quantity, but the difference of two noisy whole steps);
* ``ratio = step / (student + teachers)`` (target <= 1.10) and ``loss share = losses / step``
  (target <= 5 %);
* peak memory during the timed steps: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the
  peak resident set size (VmHWM, reset through ``/proc/self/clear_refs`` just before the timed
  steps) of the case's own fresh process, so allocator caches, the teachers and everything the
  step touches count (a profiler's tensor accounting would miss allocator overhead and
  fragmentation); ``vs plain``: that peak minus the plain row's.

On CUDA every timed region is bracketed by ``torch.cuda.synchronize()`` and nnU-Net's autocast
is on (the trainer's own ``train_step``). Results: aligned table on stdout, ``OUT/speed.json``,
``OUT/speed.md``, ``OUT/speed.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from nnkd.errors import NNKDError
from nnkd.synthetic.plan_and_preprocess import COMMAND as PLAN_AND_PREPROCESS

TARGET_RATIO = 1.10
TARGET_LOSS_SHARE = 0.05
PLAIN_TRAINER = "nnKDTrainerClsBaseline"
PROGRESS = "@@ "  # worker lines starting with this are forwarded to the console


# ------------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class TeacherModel:
    """A teacher model folder the bench builds from an untrained network."""

    name: str
    trainer: str
    plan: Dict[str, Any]
    dataset_offset: int = 0  # 0: the student's dataset (paired); 1: the teacher dataset (unpaired kinds)
    plan_entry: Dict[str, Any] = field(default_factory=dict)  # extra fields of the student's plan entry
    paired: bool = True  # False: the student's plan names the teacher's dataset, batches come class-matched


@dataclass(frozen=True)
class BenchDataset:
    """A synthetic benchmark dataset (``nnkd synth KIND``), its nnU-Net configuration and teachers."""

    kind: str
    dataset_id: int
    configuration: str
    size: Tuple[int, ...]
    cases: int
    quick_size: Tuple[int, ...]
    quick_cases: int
    n_datasets: int  # 1 paired, 2 unpaired (student N, teacher N+1)
    student: Dict[str, Any]  # the plan's ``student`` entry
    teachers: Tuple[TeacherModel, ...]
    batch_case: str  # the case whose data loader makes the shared batches (its loader's keys are a superset)


@dataclass(frozen=True)
class Case:
    """One row of the table: a method's trainer on a benchmark dataset (plan = trainer defaults + teachers)."""

    label: str
    trainer: str
    dataset: str
    plan: Dict[str, Any] = field(default_factory=dict)  # extra plan fields (e.g. loss overrides)


_CT = {"channels": ["CT"]}
DATASETS: Dict[str, BenchDataset] = {
    "paired3d": BenchDataset(
        kind="paired3d", dataset_id=980, configuration="3d_fullres", size=(24, 40, 40), cases=10,
        quick_size=(16, 32, 32), quick_cases=8, n_datasets=1, student=_CT,
        teachers=(TeacherModel("structure_function", "nnKDTrainerCls", {},
                               plan_entry={"channels": ["CT", "FDG", "ACE"]}),
                  TeacherModel("dose_aware", "nnKDTrainerDoseTeacher", {}, plan_entry={"channels": ["CT"]})),
        batch_case="plain paired3d"),
    # PaGKD: white-light student N, narrow-band teacher N+1; nnU-Net's 2d batch is 5 % of the cases
    # (120 cases: batches of 6, two per class), each with a class-matched teacher batch
    "unpaired2d": BenchDataset(
        kind="unpaired2d", dataset_id=982, configuration="2d", size=(64, 64), cases=120,
        quick_size=(32, 32), quick_cases=40, n_datasets=2, student={},
        teachers=(TeacherModel("nbi", "nnKDTrainerCls", {}, dataset_offset=1, paired=False),),
        batch_case="PaGKD"),
    # CoMoTo: tomosynthesis-like student N, ImPA mammography teacher N+1
    "lesion2d": BenchDataset(
        kind="lesion2d", dataset_id=984, configuration="2d", size=(64, 64), cases=60,
        quick_size=(32, 32), quick_cases=40, n_datasets=2, student={},
        teachers=(TeacherModel("mammography", "nnKDTrainerImPA", {}, dataset_offset=1, paired=False),),
        batch_case="CoMoTo"),
}

#: The table's rows. Plain ``nnKDTrainerClsBaseline`` rows ("plain <dataset>") are added per dataset.
CASES: List[Case] = [
    Case("REACT-KD", "nnKDTrainerREACT", "paired3d"),
    Case("logit KD", "nnKDTrainerLogitKD", "paired3d"),
    Case("FitNet", "nnKDTrainerFitNet", "paired3d"),
    Case("AT", "nnKDTrainerAT", "paired3d"),
    Case("DKD", "nnKDTrainerDKD", "paired3d"),
    Case("PaGKD", "nnKDTrainerPaGKD", "unpaired2d"),
    Case("CoMoTo", "nnKDTrainerCoMoTo", "lesion2d"),
]


def plain_case(dataset: str) -> Case:
    return Case(f"plain {dataset}", PLAIN_TRAINER, dataset)


def all_cases(selected: Optional[Sequence[str]] = None) -> List[Case]:
    """Plain rows first (per dataset used), then the method rows; ``selected`` filters method labels."""
    methods = CASES
    if selected:
        known = {c.label.lower(): c for c in CASES}
        unknown = [s for s in selected if s.lower() not in known]
        if unknown:
            raise NNKDError(f"unknown method(s) {unknown}; known: {', '.join(c.label for c in CASES)}")
        methods = [known[s.lower()] for s in selected]
    datasets = list(dict.fromkeys(c.dataset for c in methods))
    return [plain_case(d) for d in datasets] + list(methods)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", dest="out", default="bench_speed", metavar="OUT",
                        help="output folder: speed.json, speed.md, speed.png (default ./bench_speed)")
    parser.add_argument("--out", dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # former name
    parser.add_argument("--workspace", default=None,
                        help="nnU-Net workspace for the synthetic datasets and teacher folders, reused when "
                             "present (default OUT/workspace; --quick: OUT/workspace_quick)")
    parser.add_argument("-device", "--device", default="cpu", choices=("cpu", "cuda"),
                        help="device the trainers run on (default cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny data and 3 timed batches: a smoke run of the whole pipeline, meaningless numbers")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed batches per case; each runs every variant once (default 8; quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up batches (default 2; quick 1)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="LABEL",
                        help=f"method labels to run (default all: {', '.join(repr(c.label) for c in CASES)})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads in each measuring process (default 1: reproducible on a shared "
                             "machine, where several threads per process oversubscribe the cores; 0 = torch's "
                             "default, all cores as nnUNetv2_train uses them)")


def run(args) -> int:
    iters = args.iters if args.iters is not None else (3 if args.quick else 8)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if iters < 1 or warmup < 0:
        raise NNKDError(f"need --iters >= 1 and --warmup >= 0, got {iters} and {warmup}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise NNKDError("-device cuda: torch sees no CUDA device")
    out = os.path.abspath(args.out)
    workspace = os.path.abspath(args.workspace or os.path.join(out, "workspace_quick" if args.quick else "workspace"))
    cases = all_cases(args.methods)
    settings = {"device": args.device, "quick": bool(args.quick), "iters": iters, "warmup": warmup,
                "threads": args.threads, "workspace": workspace}
    t0 = time.time()
    bench = Bench(workspace, args.device, args.quick, iters, warmup, args.threads)
    print(f"[bench speed] workspace {workspace}; device {args.device}; {warmup} warm-up + {iters} timed "
          f"batches per case; {len(cases)} cases", flush=True)
    results = bench.run(cases)
    report = build_report(results, cases, settings, bench.environment())
    report["minutes"] = round((time.time() - t0) / 60, 2)
    write_outputs(report, out)
    print("\n" + format_table(report))
    print(f"\nwritten: {os.path.join(out, 'speed.json')}, speed.md, speed.png  ({report['minutes']:.1f} min)")
    return 0


# ------------------------------------------------------------------------------------------ orchestration
class Bench:
    """Workspace preparation (synthetic data, preprocessing, teacher folders) and one worker per case."""

    def __init__(self, workspace: str, device: str, quick: bool, iters: int, warmup: int, threads: Optional[int]):
        from nnkd.commands.info import ext_trainer_value, workspace_env

        self.root, self.device, self.quick = workspace, device, quick
        self.iters, self.warmup, self.threads = iters, warmup, threads
        self.env = dict(os.environ, **workspace_env(workspace), nnUNet_extTrainer=ext_trainer_value(),
                        nnUNet_compile="0", MPLBACKEND="agg")
        self.env.setdefault("nnUNet_def_n_proc", "2")
        self.env.pop("NNKD_PLAN", None)
        self.env.pop("nnUNet_n_proc_DA", None)  # nnU-Net's planner crashes on 0; workers set it
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.makedirs(self.env[k], exist_ok=True)
        os.makedirs(self.path("logs"), exist_ok=True)
        os.makedirs(self.path("plans"), exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def environment(self) -> Dict[str, Any]:
        import platform

        import torch

        info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                "machine": platform.machine(), "processor": _cpu_name()}
        try:
            from importlib.metadata import version

            info["nnunetv2"] = version("nnunetv2")
        except Exception:  # pragma: no cover - informational only
            pass
        if self.device == "cuda":
            info["gpu"] = torch.cuda.get_device_name(0)
        return info

    # ---------------------------------------------------------------- data
    def dataset_folder(self, kind: str, dataset_id: int) -> Optional[str]:
        root = self.env[kind]
        hits = sorted(d for d in os.listdir(root) if d.startswith(f"Dataset{dataset_id:03d}_"))
        return os.path.join(root, hits[0]) if hits else None

    def prepare_datasets(self, datasets: List[BenchDataset]) -> None:
        """Synthetic raw datasets, then one nnUNetv2_plan_and_preprocess per configuration for the missing ones."""
        for ds in datasets:
            size, cases = (ds.quick_size, ds.quick_cases) if self.quick else (ds.size, ds.cases)
            ids = [ds.dataset_id + i for i in range(ds.n_datasets)]
            if any(self.dataset_folder("nnUNet_raw", i) is None for i in ids):
                _progress(f"synthetic dataset {ds.kind} (ids {ids}, {cases} cases, size {'x'.join(map(str, size))})")
                self._call([sys.executable, "-m", "nnkd.cli", "synth", ds.kind, "--id", str(ds.dataset_id),
                            "--cases", str(cases), "--size", *map(str, size), "--overwrite"], f"synth_{ds.kind}")
        for config in dict.fromkeys(ds.configuration for ds in datasets):
            missing = [ds.dataset_id + i for ds in datasets if ds.configuration == config
                       for i in range(ds.n_datasets) if not self._preprocessed(ds.dataset_id + i, config)]
            if missing:
                n = self.env["nnUNet_def_n_proc"]
                _progress(f"nnUNetv2_plan_and_preprocess -d {' '.join(map(str, missing))} -c {config}")
                self._call([*PLAN_AND_PREPROCESS, "-d", *map(str, missing), "-c", config, "-np", n, "-npfp", n],
                           f"preprocess_{config}")

    def _preprocessed(self, dataset_id: int, configuration: str) -> bool:
        folder = self.dataset_folder("nnUNet_preprocessed", dataset_id)
        if folder is None or not os.path.isfile(os.path.join(folder, "nnUNetPlans.json")):
            return False
        plans = json.load(open(os.path.join(folder, "nnUNetPlans.json")))
        ident = plans["configurations"].get(configuration, {}).get("data_identifier", "")
        sub = os.path.join(folder, ident)
        return bool(ident) and os.path.isdir(sub) and len(os.listdir(sub)) > 0

    def teacher_folder(self, ds: BenchDataset, t: TeacherModel) -> str:
        name = os.path.basename(self.dataset_folder("nnUNet_preprocessed", ds.dataset_id + t.dataset_offset))
        return os.path.join(self.env["nnUNet_results"], name, f"{t.trainer}__nnUNetPlans__{ds.configuration}")

    def prepare_teachers(self, ds: BenchDataset) -> None:
        """Teacher model folders from untrained networks (timing does not depend on weights), one process."""
        todo = [t for t in ds.teachers
                if not os.path.isfile(os.path.join(self.teacher_folder(ds, t), "fold_0", "checkpoint_final.pth"))]
        if not todo:
            return
        _progress(f"teacher model folders (untrained weights): {', '.join(f'{t.name} ({t.trainer})' for t in todo)}")
        specs = [{"trainer": t.trainer, "dataset_id": ds.dataset_id + t.dataset_offset,
                  "plan": self.write_plan(f"teacher_{ds.kind}_{t.name}", dict({"seed": 0}, **t.plan))} for t in todo]
        self.worker({"task": "teachers", "teachers": specs, "configuration": ds.configuration, "device": "cpu",
                     "plan": specs[0]["plan"]}, f"teachers_{ds.kind}")

    def write_plan(self, name: str, plan: Dict[str, Any]) -> str:
        from nnkd.io import write_json

        path = self.path("plans", f"{name.replace(' ', '_')}.json")
        write_json(path, dict({"name": f"bench_{name.replace(' ', '_')}"}, **plan))
        return path

    def case_plan(self, case: Case) -> str:
        ds = DATASETS[case.dataset]
        plan: Dict[str, Any] = {"seed": 0, **({"student": ds.student} if ds.student else {})}
        if case.trainer != PLAIN_TRAINER:
            plan["teachers"] = [dict({"name": t.name, "model_folder": self.teacher_folder(ds, t)}, **t.plan_entry,
                                     **({} if t.paired else {"paired": False,
                                                             "dataset": ds.dataset_id + t.dataset_offset}))
                                for t in ds.teachers]
        return self.write_plan(f"case_{case.label}", dict(plan, **case.plan))

    # ---------------------------------------------------------------- running
    def run(self, cases: List[Case]) -> Dict[str, Dict[str, Any]]:
        from nnkd.hooks import registry

        datasets = list(dict.fromkeys(c.dataset for c in cases))
        trainers = registry("trainers")
        missing = sorted({c.trainer for c in cases} - set(trainers))
        if missing:
            raise NNKDError(f"trainer(s) {missing} are not registered (nnkd trainers lists the known ones)")
        self.prepare_datasets([DATASETS[d] for d in datasets])
        for d in datasets:
            self.prepare_teachers(DATASETS[d])
        results: Dict[str, Dict[str, Any]] = {}
        for d in datasets:
            ds = DATASETS[d]
            batches = self.path(f"batches_{d}{'_quick' if self.quick else ''}_{self.iters + self.warmup}.pt")
            mine = [c for c in cases if c.dataset == d]
            source = next((c for c in mine if c.label == ds.batch_case), None)
            if source is None:
                source = next(c for c in all_cases() if c.label == ds.batch_case)
            order = [source] + [c for c in mine if c is not source]
            for case in order:
                i = cases.index(case) + 1 if case in cases else 0
                _progress(f"case {i}/{len(cases)}: {case.label} ({case.trainer} on {d})")
                res = self.worker({"task": "measure", "label": case.label, "trainer": case.trainer,
                                   "dataset_id": ds.dataset_id, "configuration": ds.configuration,
                                   "plan": self.case_plan(case), "device": self.device, "iters": self.iters,
                                   "warmup": self.warmup, "batches": batches, "threads": self.threads,
                                   "kd": case.trainer != PLAIN_TRAINER}, f"case_{case.label}")
                if case in cases:
                    results[case.label] = res
        return results

    def worker(self, spec: Dict[str, Any], name: str) -> Dict[str, Any]:
        from nnkd.io import write_json

        tag = name.replace(" ", "_")
        spec_path, result_path = self.path("logs", f"{tag}.spec.json"), self.path("logs", f"{tag}.result.json")
        if os.path.exists(result_path):
            os.remove(result_path)
        write_json(spec_path, dict(spec, result=result_path))
        env = dict(self.env, nnUNet_n_proc_DA="0", NNKD_PLAN=spec["plan"])
        if spec.get("threads"):
            env.update(OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
        self._call([sys.executable, "-m", "nnkd.bench.speed", spec_path], tag, env=env)
        with open(result_path) as f:
            return json.load(f)

    def _call(self, args: List[str], tag: str, env: Optional[Dict[str, str]] = None) -> None:
        log = self.path("logs", f"{tag}.log")
        with open(log, "w") as f, subprocess.Popen(args, env=env or self.env, stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, text=True) as p:
            for line in p.stdout:
                f.write(line)
                if line.startswith(PROGRESS):
                    print("    " + line[len(PROGRESS):].rstrip(), flush=True)
        if p.returncode != 0:
            tail = open(log).read().strip().splitlines()[-15:]
            raise NNKDError(f"'{' '.join(args)}' failed (exit {p.returncode}); log {log}:\n" + "\n".join(tail))


def _progress(msg: str) -> None:
    print(f"[bench speed] {msg}", flush=True)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


# ------------------------------------------------------------------------------------------ report
def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def build_report(results: Dict[str, Dict[str, Any]], cases: List[Case], settings: Dict[str, Any],
                 environment: Dict[str, Any]) -> Dict[str, Any]:
    """Rows of the table. Ratios and loss shares are medians of per-batch values (variants interleaved
    on the same batch); ``ratio_vs_plain_row`` uses the plain trainer's own process instead."""
    rows = []
    for case in cases:
        r = results[case.label]
        t = r["times"]
        plain = results.get(plain_case(case.dataset).label)
        row = {"label": case.label, "trainer": case.trainer, "dataset": case.dataset, "kd": r["kd"],
               "patch_size": r["patch_size"], "batch_size": r["batch_size"], "threads": r["threads"],
               "step_ms": _median(t["step"]) * 1e3, "step_iqr_ms": _iqr(t["step"]) * 1e3,
               "peak_mem_mib": r["peak_mem_mib"], "step_mem_mib": r["step_mem_mib"],
               "memory_measure": r["memory_measure"], "losses": r.get("losses", []),
               "n_teachers": r.get("n_teachers", 0), "load": [r.get("load_before"), r.get("load_after")]}
        if not r["kd"]:
            row["student_ms"] = row["step_ms"]
        else:
            row.update(step_no_losses_ms=_median(t["step_no_losses"]) * 1e3,
                       student_ms=_median(t["student"]) * 1e3, teachers_ms=_median(t["teachers"]) * 1e3,
                       losses_ms=_median([f + b for f, b in zip(t["losses_fwd"], t["losses_bwd"])]) * 1e3,
                       losses_fwd_ms=_median(t["losses_fwd"]) * 1e3, losses_bwd_ms=_median(t["losses_bwd"]) * 1e3,
                       losses_ab_ms=_median([a - b for a, b in zip(t["step"], t["step_no_losses"])]) * 1e3,
                       loss_share=_median([(f + b) / s for f, b, s in
                                           zip(t["losses_fwd"], t["losses_bwd"], t["step"])]),
                       ratio=_median([a / (s + q) for a, s, q in zip(t["step"], t["student"], t["teachers"])]))
            if plain is not None:
                row["plain_ms"] = _median(plain["times"]["step"]) * 1e3
                row["ratio_vs_plain_row"] = row["step_ms"] / (row["plain_ms"] + row["teachers_ms"])
                row["mem_vs_plain_mib"] = row["peak_mem_mib"] - plain["peak_mem_mib"]
        rows.append(row)
    return {"benchmark": "nnkd bench speed", "settings": settings, "environment": environment,
            "targets": {"ratio": TARGET_RATIO, "loss_share": TARGET_LOSS_SHARE},
            "datasets": {d: asdict(DATASETS[d]) for d in dict.fromkeys(c.dataset for c in cases)},
            "rows": rows, "raw": results}


def _iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return float(q[2] - q[0])


COLUMNS = [  # (header, row key, format)
    ("method", "label", "{}"), ("trainer", "trainer", "{}"), ("step ms", "step_ms", "{:.1f}"),
    ("student ms", "student_ms", "{:.1f}"), ("teachers ms", "teachers_ms", "{:.1f}"), ("ratio", "ratio", "{:.3f}"),
    ("ratio/plain", "ratio_vs_plain_row", "{:.3f}"), ("losses ms", "losses_ms", "{:.1f}"),
    ("loss fwd ms", "losses_fwd_ms", "{:.1f}"), ("loss share", "loss_share", "{:.1%}"),
    ("peak MiB", "peak_mem_mib", "{:.0f}"), ("vs plain MiB", "mem_vs_plain_mib", "{:+.0f}"),
]


def _cells(row: Dict[str, Any]) -> List[str]:
    out = []
    for _, key, fmt in COLUMNS:
        v = row.get(key)
        cell = "-" if v is None else fmt.format(v)
        if key == "ratio" and v is not None and v > TARGET_RATIO:
            cell += " !"
        if key == "loss_share" and v is not None and v > TARGET_LOSS_SHARE:
            cell += " !"
        out.append(cell)
    return out


def _caption(report: Dict[str, Any]) -> List[str]:
    s, e = report["settings"], report["environment"]
    threads = sorted({r["threads"] for r in report["rows"]})
    loads = [x[0] for r in report["rows"] for x in r["load"] if x]
    lines = [f"device {s['device']} ({e.get('gpu') or e.get('processor', '?')}, {e.get('cpu_count')} CPUs, "
             f"torch {e.get('torch')}, {'/'.join(map(str, threads))} torch thread(s)); medians over {s['iters']} "
             f"batches after {s['warmup']} warm-up{' (quick)' if s['quick'] else ''}; 1-min load average "
             f"{min(loads, default=float('nan')):.1f}-{max(loads, default=float('nan')):.1f} during the run"]
    for d, ds in report["datasets"].items():
        row = next(r for r in report["rows"] if r["dataset"] == d)
        lines.append(f"{d}: patch {'x'.join(map(str, row['patch_size']))}, batch {row['batch_size']}, "
                     f"{ds['configuration']}, {len(ds['teachers'])} teacher(s)")
    lines += [
        "step: train_step with everything on; student: the same trainer's step with teachers and losses off "
        "(the plain student step; the 'plain' row is nnKDTrainerClsBaseline in its own process); teachers: "
        "teacher_outputs alone; losses: the LossBank forward + backward on the step's own outputs (cut from the "
        "student's graph), loss fwd: its forward; all variants interleaved on the same batches",
        f"ratio = step / (student + teachers) per batch, median (target <= {TARGET_RATIO:.2f}); ratio/plain uses "
        f"the plain row instead of the student column; loss share = losses / step (target <= "
        f"{TARGET_LOSS_SHARE:.0%}); '!' marks a miss",
        f"memory: {report['rows'][0]['memory_measure']} during the timed steps",
    ]
    return lines


def format_table(report: Dict[str, Any]) -> str:
    rows = [[h for h, _, _ in COLUMNS]] + [_cells(r) for r in report["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + _caption(report))


def format_markdown(report: Dict[str, Any]) -> str:
    head = [h for h, _, _ in COLUMNS]
    lines = ["# nnkd bench speed", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in report["rows"]]
    return "\n".join(lines + [""] + [f"- {c}" for c in _caption(report)]) + "\n"


def plot(report: Dict[str, Any], path: str) -> None:
    """Per method: KD step and student + teachers, relative to student + teachers; extra peak memory."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    from nnkd.io import save_figure

    rows = [r for r in report["rows"] if r["kd"]]
    fig, (ax, axm) = plt.subplots(1, 2, figsize=(12, 0.8 * max(len(rows), 1) + 1.8),
                                  gridspec_kw={"width_ratios": [3, 1]})
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        base = r["student_ms"] + r["teachers_ms"]
        losses = max(r["losses_ms"], 0.0) / base
        ax.barh(y + 0.2, r["step_ms"] / base - losses, 0.38, color="#4c72b0",
                label="KD step without losses" if i == 0 else None)
        ax.barh(y + 0.2, losses, 0.38, left=r["step_ms"] / base - losses, color="#dd8452",
                label="distillation losses (fwd+bwd)" if i == 0 else None)
        ax.barh(y - 0.2, r["student_ms"] / base, 0.38, color="#8c8c8c", label="plain student step" if i == 0 else None)
        ax.barh(y - 0.2, r["teachers_ms"] / base, 0.38, left=r["student_ms"] / base, color="#55a868",
                label="teacher forwards" if i == 0 else None)
        ax.text(max(r["step_ms"] / base, 1.0) + 0.01, y,
                f"ratio {r['ratio']:.2f}, losses {r['loss_share']:.1%}\nstep {r['step_ms']:.0f} ms",
                va="center", fontsize=8)
        axm.barh(y, r.get("mem_vs_plain_mib", 0.0), 0.6, color="#4c72b0")
    ax.axvline(TARGET_RATIO, color="#c44e52", ls="--", lw=1, label=f"target ratio {TARGET_RATIO:.2f}")
    labels = [f"{r['label']}\n({r['dataset']})" for r in rows][::-1]
    for a in (ax, axm):
        a.set_yticks(range(len(rows)))
        a.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("time per training iteration relative to plain student + teacher forwards "
                  "(upper bar: KD step; lower: student + teachers)")
    ax.set_xlim(0, max([r["step_ms"] / (r["student_ms"] + r["teachers_ms"]) for r in rows] + [TARGET_RATIO]) * 1.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=7, frameon=False)
    axm.set_xlabel("peak memory above plain (MiB)")
    s = report["settings"]
    fig.suptitle(f"nnkd bench speed: {s['device']}, medians over {s['iters']} batches", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_outputs(report: Dict[str, Any], out: str) -> None:
    from nnkd.io import write_json, write_text

    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "speed.json"), report)
    write_text(os.path.join(out, "speed.md"), format_markdown(report))
    plot(report, os.path.join(out, "speed.png"))


# ------------------------------------------------------------------------------------------ worker
def _worker_main(spec_path: str) -> None:
    """One subprocess per teacher build / measured case (fresh RSS, nnU-Net paths from the env)."""
    from nnkd.io import write_json

    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    if spec["task"] == "teachers":
        result = []
        for t in spec["teachers"]:
            os.environ["NNKD_PLAN"] = t["plan"]  # read by the trainer's constructor
            result.append(_build_teacher(_make_trainer(dict(spec, **t))))
    else:
        result = _measure(_make_trainer(spec), spec)
    write_json(spec["result"], result)


def _make_trainer(spec: Dict[str, Any]):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.paths import nnUNet_preprocessed

    from nnkd.hooks import lookup

    name = maybe_convert_to_dataset_name(int(spec["dataset_id"]))
    folder = os.path.join(nnUNet_preprocessed, name)
    plans = load_json(os.path.join(folder, "nnUNetPlans.json"))
    dataset_json = load_json(os.path.join(folder, "dataset.json"))
    cls = lookup("trainers", spec["trainer"])
    plans["continue_training"] = False  # what nnU-Net's run_training sets before instantiating a trainer
    trainer = cls(plans, spec["configuration"], 0, dataset_json, torch.device(spec["device"]))
    trainer.initialize()
    return trainer


def _build_teacher(trainer) -> Dict[str, Any]:
    """A teacher model folder as nnkd's on_train_start + save_checkpoint leave it (untrained weights)."""
    from nnkd.io import write_json
    from nnkd.trainers.channels import subset_plans

    plans = trainer.plans_manager.plans
    if trainer.uses_channel_subset:
        plans = subset_plans(plans, trainer.input_channels)
    write_json(os.path.join(trainer.output_folder_base, "plans.json"), plans)
    write_json(os.path.join(trainer.output_folder_base, "dataset.json"), trainer.dataset_json)
    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    return {"folder": trainer.output_folder_base}


class _Clock:
    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.sync = torch.cuda.synchronize if self.cuda else (lambda: None)

    def __call__(self, fn) -> float:
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t


def _rss_mib(field_name: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    raise OSError(field_name)


class _Memory:
    """Peak memory of the timed steps: CUDA allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch
        self.measure = "torch.cuda.max_memory_allocated" if self.cuda else "peak RSS of the case's process (VmHWM)"

    def start(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated() / 2**20
            return
        import gc

        gc.collect()
        try:  # reset the kernel's high-water mark of this process to its current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
            self.measure = "peak RSS of the case's process since its start (ru_maxrss)"
        self.base = _rss_mib("VmRSS")

    def stop(self) -> Tuple[float, float]:
        if self.cuda:
            self.torch.cuda.synchronize()
            peak = self.torch.cuda.max_memory_allocated() / 2**20
        elif self.reset:
            peak = _rss_mib("VmHWM")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return peak, peak - self.base


def _load_or_make_batches(trainer, path: str, n: int) -> list:
    """``n`` training batches: the dataset's saved ones when present (every case reads the same data),
    else drawn from the trainer's own loader and saved. The loaders are always built: unpaired
    trainers set up their teacher streams there, which their ``make_batch`` needs."""
    import torch

    from nnkd.io import torch_save

    loader, val = trainer.get_dataloaders()
    batches = torch.load(path, weights_only=False) if os.path.isfile(path) else []
    if len(batches) < n:
        print(f"{PROGRESS}pre-fetching {n} batches from {type(trainer).__name__}'s training data loader", flush=True)
        batches = [next(loader) for _ in range(n)]
        torch_save(batches, path)
    for dl in (loader, val):
        if hasattr(dl, "_finish"):
            dl._finish()
    return batches[:n]


def _leaf_outputs(out):
    """The student's outputs cut from its graph: tensors detached, features and logits new leaves."""
    from dataclasses import fields, replace

    def leaf(x):
        return x.detach().requires_grad_(x.requires_grad) if hasattr(x, "detach") else x

    values = {f.name: getattr(out, f.name) for f in fields(out)}
    values["features"] = [leaf(f) for f in out.features]
    values["logits"] = leaf(out.logits)
    values["attention"] = leaf(out.attention)
    values["seg"] = [s.detach() for s in out.seg] if isinstance(out.seg, (list, tuple)) else leaf(out.seg)
    return replace(out, **values)


def _measure(trainer, spec: Dict[str, Any]) -> Dict[str, Any]:
    """Time the trainer's ``train_step`` (and, for KD trainers, its variants) on the shared batches.

    KD trainers: every timed batch runs, in an order rotated per batch so that load drift hits
    all alike, ``step`` (everything on), ``step_no_losses`` (LossBank off, teachers on),
    ``student`` (teachers and LossBank off: the plain student step of the same trainer) and
    ``teachers`` (``teacher_outputs`` alone). The LossBank call that ``step_no_losses`` skipped
    then runs on that step's own student and teacher outputs, cut from the student's graph
    (new leaves), forward and backward timed separately (``losses_fwd``, ``losses_bwd``): the
    distillation losses alone, without the noise of a difference of two whole steps (which is
    kept as ``losses_ab`` for comparison).
    """
    import torch

    iters, warmup, kd = int(spec["iters"]), int(spec["warmup"]), bool(spec["kd"])
    batches = _load_or_make_batches(trainer, spec["batches"], iters + warmup)
    trainer.network.train()
    # past every loss warm-up (distillation terms are constant zeros before it): time the real terms
    trainer.current_epoch = max(int(trainer.num_epochs) - 1, 0)
    clock, memory = _Clock(trainer.device), _Memory(trainer.device)
    name = spec["label"]
    out: Dict[str, Any] = {"label": name, "trainer": spec["trainer"], "kd": kd,
                           "patch_size": list(trainer.configuration_manager.patch_size),
                           "batch_size": int(trainer.batch_size), "threads": torch.get_num_threads(),
                           "memory_measure": memory.measure, "load_before": _loadavg()}
    print(f"{PROGRESS}{name}: patch {'x'.join(map(str, out['patch_size']))}, batch {out['batch_size']}, "
          f"{warmup} warm-up + {iters} timed batches", flush=True)
    timed = batches[warmup:]
    times: Dict[str, List[float]] = {"step": []}
    if not kd:
        for i in range(warmup):
            trainer.train_step(batches[i])
        memory.start()
        for batch in timed:
            times["step"].append(clock(lambda: trainer.train_step(batch)))
        peak, delta = memory.stop()
    else:
        bank, teacher_outputs = trainer.loss_bank_call, trainer.teacher_outputs
        out["losses"] = list(trainer.loss_bank.losses.keys())
        out["n_teachers"] = len(getattr(trainer, "teachers", []) or [])
        times.update(step_no_losses=[], student=[], teachers=[], losses_fwd=[], losses_bwd=[])
        captured = []

        def no_losses(*args):
            captured.append(args)
            return {}

        def losses_alone():
            student, teachers, b = captured.pop()
            student = _leaf_outputs(student)
            terms = {}
            with trainer._autocast():
                fwd = clock(lambda: terms.update(bank(student, teachers, b)))
            total = sum(v for k, v in terms.items() if not k.startswith("n_") and v.requires_grad)
            bwd = clock(total.backward) if torch.is_tensor(total) else 0.0
            trainer.optimizer.zero_grad(set_to_none=True)
            return fwd, bwd

        def step(call, teachers_on=True):
            def run_step(batch):
                trainer.loss_bank_call = call
                if not teachers_on:
                    trainer.teacher_outputs = lambda b: []
                try:
                    return clock(lambda: trainer.train_step(batch))
                finally:
                    trainer.loss_bank_call = bank
                    trainer.__dict__.pop("teacher_outputs", None)
            return run_step

        def teachers_alone(batch):
            b = trainer.make_batch(batch)
            with trainer._autocast():
                return clock(lambda: teacher_outputs(b))

        variants = [("step", step(bank)), ("step_no_losses", step(no_losses)),
                    ("student", step(no_losses, teachers_on=False)), ("teachers", teachers_alone)]
        for i in range(warmup):
            for key, fn in variants:
                fn(batches[i])
                if key == "step_no_losses":
                    losses_alone()
            captured.clear()
        memory.start()
        for i, batch in enumerate(timed):
            for k in range(len(variants)):  # rotated order: slow drift of the machine's load hits every variant
                key, fn = variants[(i + k) % len(variants)]
                times[key].append(fn(batch))
                if key == "step_no_losses":
                    fwd, bwd = losses_alone()
                    times["losses_fwd"].append(fwd)
                    times["losses_bwd"].append(bwd)
            captured.clear()
        peak, delta = memory.stop()
    out.update(times=times, peak_mem_mib=peak, step_mem_mib=delta, load_after=_loadavg())
    msg = f"{name}: step {_median(times['step']) * 1e3:.1f} ms"
    if kd:
        msg += (f", without losses {_median(times['step_no_losses']) * 1e3:.1f} ms, student alone "
                f"{_median(times['student']) * 1e3:.1f} ms, teachers {_median(times['teachers']) * 1e3:.1f} ms, "
                f"losses fwd {_median(times['losses_fwd']) * 1e3:.1f} + bwd "
                f"{_median(times['losses_bwd']) * 1e3:.1f} ms")
    print(f"{PROGRESS}{msg}, peak memory {peak:.0f} MiB", flush=True)
    return out


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m nnkd.bench.speed SPEC.json  (internal; use `nnkd bench speed`)")
    _worker_main(sys.argv[1])
