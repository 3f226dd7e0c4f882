"""`nnkd demo`: the whole path on a synthetic paired PET/CT dataset, through nnU-Net's own CLIs.

Synthetic dataset -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train a multi-modal teacher
(nnKDTrainerCls, modality dropout) and a dose-aware CT teacher (nnKDTrainerDoseTeacher) on fold 0's
training cases, then a CT-only student without distillation (nnKDTrainerClsBaseline) and a REACT-KD
student (nnKDTrainerREACT) on a quarter of them (by default; ``methods`` adds REACT-KD's comparisons),
each with its plan file shipped with the package (nnkd/plans/) -> nnkd predict on an external test set
(CT-only models see CT files only) -> nnkd evaluate / compare -> one table: every model's test AUC and
what distillation buys over the student without it, with a paired bootstrap CI. This is ``nnkd bench
quality``'s paired3d benchmark (same generator and design) with one seed, fewer cases and a shorter
schedule (:mod:`nnkd.bench.quality`). Steps already done in the workspace are skipped, so a re-run resumes.

Layout: ``WORKSPACE/nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` (every model folder),
exactly where ``nnkd env --workspace WORKSPACE`` points nnU-Net; per model ``WORKSPACE/runs/paired3d/
seed<s>/<model>/`` holds its logs (train.log, predict.log, evaluate.log), predictions and report.
"""
from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from nnkd.io import write_json

QUICK_NOTE = ("PATH CHECK ONLY (--quick): tiny data and 1 epoch of 2 iterations per model. These numbers carry no "
              "meaning: they only show that every step ran. Run `nnkd demo` without --quick for results.")


@dataclass(frozen=True)
class DemoSettings:
    """The demo's share of the paired benchmark: its generator and design (teachers on fold 0's training
    cases, data-limited CT students on ``student_fraction`` of them), one seed, a shorter schedule."""

    cases: int = 120
    test_cases: int = 60
    size: tuple = (16, 32, 32)
    epochs: int = 15
    teacher_epochs: Optional[int] = 8  # the teacher reads PET, an easy task: 8 epochs reach 0.96 test AUC
    iterations: int = 20
    val_iterations: int = 2
    student_fraction: float = 0.25  # 24 of fold 0's 96 training cases; the teachers train on all 96
    max_features: Optional[int] = None  # a smaller cap on the features per stage than the benchmark's 32
    seed: int = 0
    jobs: int = 2  # trainings at once: overlaps nnU-Net's single-threaded parts on 2 cores
    methods: Optional[Tuple[str, ...]] = ("react",)  # distillation methods (keys of catalogue.PAIRED3D); None = all
    quick: bool = False  # a path check: its numbers mean nothing, and the summary says so


# a smoke run: every step once, REACT-KD as the only distilled student
QUICK = DemoSettings(cases=9, test_cases=6, size=(16, 32, 32), epochs=1, iterations=2, val_iterations=1,
                     student_fraction=1.0, teacher_epochs=None, quick=True)


def run_demo(workspace: str, settings: DemoSettings = DemoSettings()) -> Dict:
    from nnkd.bench.catalogue import PAIRED3D, Schedule
    from nnkd.bench.quality import QualityRun

    t0 = time.time()
    schedule = Schedule(cases=settings.cases, test_cases=settings.test_cases, size=tuple(settings.size),
                        epochs=settings.epochs, iterations=settings.iterations, val_iterations=settings.val_iterations,
                        student_fraction=settings.student_fraction, ceiling_fraction=settings.student_fraction,
                        teacher_epochs=settings.teacher_epochs)
    run = QualityRun(os.path.join(workspace, "reports"), [settings.seed], quick=settings.quick, workspace=workspace,
                     schedules={PAIRED3D.key: schedule}, jobs=settings.jobs, shared_results=True,
                     max_features=settings.max_features)
    share = (f"; the CT students on {100 * settings.student_fraction:.0f} % of the teachers' training cases"
             if settings.student_fraction < 1 else "")
    print(f"nnkd demo in {run.ws.root}: teachers, a CT student without and with distillation, on "
          f"{settings.cases} synthetic PET/CT cases ({'x'.join(map(str, settings.size))}){share}; test set of "
          f"{settings.test_cases} external cases; {settings.epochs} epoch(s) x {settings.iterations} "
          f"iterations per student{f', {settings.teacher_epochs} per teacher' if settings.teacher_epochs else ''}")
    if settings.quick:
        print(QUICK_NOTE)
    report = run.run([PAIRED3D.key], None if settings.methods is None else list(settings.methods))
    bench = report["benchmarks"][PAIRED3D.key]
    table = summary_table(bench, str(settings.seed))
    minutes = round((time.time() - t0) / 60, 1)
    write_json(run.ws.path("reports", "summary.json"), {"table": table, "minutes": minutes, "quick": settings.quick,
                                                        "note": QUICK_NOTE if settings.quick else None,
                                                        "models": bench["runs"]})
    print("\n" + table)
    if settings.quick:
        print("\n" + QUICK_NOTE)
    print("\n" + "\n".join(where_lines(run.ws.root, bench, str(settings.seed))))
    print(f"\nreports: {run.ws.path('reports')}  (quality.md / .json / .png; per model: "
          f"runs/paired3d/seed{settings.seed}/<model>/report with metrics.json, roc.png, dca.png, calibration.png)")
    print(f"total time: {minutes:.1f} min")
    return bench


def where_lines(root: str, bench: Dict, seed: str) -> List[str]:
    """Where each model folder and log is, and the commands that use them (``nnkd env`` + ``nnkd predict``)."""
    from nnkd.bench.catalogue import KD, PAIRED3D

    results = os.path.join(root, "nnUNet_results")
    lines = ["where things are:"]
    example = None
    for m in PAIRED3D.methods:
        rec = bench["runs"].get(m.key, {}).get(seed)
        if rec is None:
            continue
        logs = rec.get("logs", {})
        lines += [f"  {m.label}:", f"    model:   {rec['model_folder']}",
                  f"    logs:    {logs.get('train', '?')} (training), "
                  f"{os.path.join(rec['model_folder'], 'fold_0', 'training_log_*.txt')} (nnU-Net's own)"]
        if example is None and m.role == KD:
            example = rec
    if example is not None:
        rel = os.path.relpath(example["model_folder"], results)
        model = f'"$nnUNet_results/{rel}"' if not rel.startswith("..") else shlex.quote(example["model_folder"])
        images = example.get("test_images") or os.path.join(root, "test_images", "<images>")
        lines += ["", "use the models yourself (nnU-Net's folders of this demo, then a prediction with the student):",
                  f'  eval "$(nnkd env --workspace {shlex.quote(root)})"',
                  f"  nnkd predict -i {shlex.quote(images)} -o {shlex.quote(os.path.join(root, 'my_predictions'))} "
                  f"-m {model} -f 0 -device cpu"]
    return lines


def summary_table(bench: Dict, seed: str) -> str:
    """Every model of the demo: test macro AUC with its bootstrap CI, accuracy, balanced accuracy, training
    time and, for the distilled students, the paired difference to the no-KD student with its 95 % CI."""
    from nnkd.bench.catalogue import KD, PAIRED3D

    rows = [("model", "AUC [95% CI]", "vs no KD: ΔAUC [95% CI]", "accuracy", "bal. acc.", "train min")]
    for m in PAIRED3D.methods:
        rec = bench["runs"].get(m.key, {}).get(seed)
        if rec is None:
            continue
        with open(os.path.join(rec["report"], "metrics.json")) as f:
            metrics = json.load(f)
        auc, ci = metrics["auc"]["value"], metrics["auc"]["ci95"]
        train = rec.get("train_seconds")
        comp = bench.get("comparisons", {}).get(m.key, {}).get(seed) if m.role == KD else None
        delta = (f"{comp['difference']:+.3f} [{comp['ci95'][0]:+.3f}, {comp['ci95'][1]:+.3f}]" if comp else "")
        label = m.label + ("" if rec.get("used_as_teacher", True) else " (left out: not above chance)")
        rows.append((label, f"{auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if auc is not None else "n/a", delta,
                     f"{metrics['accuracy']:.3f}", f"{metrics['balanced_accuracy']:.3f}",
                     f"{train / 60:.1f}" if train is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
