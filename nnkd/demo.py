"""`nnkd demo`: the whole path on a synthetic paired PET/CT dataset, through nnU-Net's own CLIs.

Synthetic dataset -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train a multi-modal teacher
(nnKDTrainerCls, modality dropout), a dose-aware CT teacher (nnKDTrainerDoseTeacher), a CT-only
student without distillation (nnKDTrainerClsBaseline), a REACT-KD student (nnKDTrainerREACT) and
the four baselines REACT-KD is compared with (logit KD, FitNet, AT, DKD), each with its plan file
shipped with the package (nnkd/plans/) -> nnkd predict on an external synthetic test set (CT-only models see CT files only)
-> nnkd evaluate / compare -> two tables: every model's test AUC, and what each distillation method
buys over the student without it. This is ``nnkd bench quality``'s paired3d benchmark with one seed
and a shorter schedule (:mod:`nnkd.bench.quality`). Steps already done in the workspace are
skipped, so a re-run resumes.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from nnkd.io import write_json


@dataclass(frozen=True)
class DemoSettings:
    cases: int = 36
    test_cases: int = 30
    size: tuple = (16, 32, 32)
    epochs: int = 8
    iterations: int = 20
    val_iterations: int = 2
    seed: int = 0
    jobs: int = 2  # trainings at once: overlaps nnU-Net's single-threaded parts on 2 cores
    methods: Optional[Tuple[str, ...]] = None  # distillation methods (keys of nnkd.bench.quality.PAIRED3D); None = all


# a smoke run: every step once, REACT-KD as the only distilled student
QUICK = DemoSettings(cases=9, test_cases=6, size=(16, 32, 32), epochs=1, iterations=2, val_iterations=1,
                     methods=("react",))


def run_demo(workspace: str, settings: DemoSettings = DemoSettings()) -> Dict:
    from nnkd.bench.quality import PAIRED3D, QualityRun, Schedule

    t0 = time.time()
    schedule = Schedule(cases=settings.cases, test_cases=settings.test_cases, size=tuple(settings.size),
                        epochs=settings.epochs, iterations=settings.iterations, val_iterations=settings.val_iterations)
    run = QualityRun(os.path.join(workspace, "reports"), [settings.seed], workspace=workspace,
                     schedules={PAIRED3D.key: schedule}, jobs=settings.jobs)
    print(f"nnkd demo in {run.ws.root}: teachers, a CT student without and with distillation, on "
          f"{settings.cases} synthetic PET/CT cases ({'x'.join(map(str, settings.size))}); test set of "
          f"{settings.test_cases} external cases")
    report = run.run([PAIRED3D.key], None if settings.methods is None else list(settings.methods))
    bench = report["benchmarks"][PAIRED3D.key]
    table = summary_table(bench, str(settings.seed))
    minutes = round((time.time() - t0) / 60, 1)
    write_json(run.ws.path("reports", "summary.json"), {"table": table, "minutes": minutes,
                                                        "models": bench["runs"]})
    print("\n" + table)
    print(f"\nreports: {run.ws.path('reports')}  (quality.md / .json / .png; per model: "
          f"runs/paired3d/seed{settings.seed}/<model>/report with metrics.json, roc.png, dca.png, calibration.png)")
    print(f"total time: {minutes:.1f} min")
    return bench


def summary_table(bench: Dict, seed: str) -> str:
    """Every model of the demo: test macro AUC with its bootstrap CI, accuracy, balanced accuracy, training time."""
    from nnkd.bench.quality import PAIRED3D

    rows = [("model", "AUC [95% CI]", "accuracy", "bal. acc.", "train min")]
    for m in PAIRED3D.methods:
        rec = bench["runs"].get(m.key, {}).get(seed)
        if rec is None:
            continue
        with open(os.path.join(rec["report"], "metrics.json")) as f:
            metrics = json.load(f)
        auc, ci = metrics["auc"]["value"], metrics["auc"]["ci95"]
        train = rec.get("train_seconds")
        rows.append((m.label, f"{auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if auc is not None else "n/a",
                     f"{metrics['accuracy']:.3f}", f"{metrics['balanced_accuracy']:.3f}",
                     f"{train / 60:.1f}" if train is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
