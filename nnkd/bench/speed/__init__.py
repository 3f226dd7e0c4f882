"""`nnkd bench speed`: cost per training step of every method, against plain student + teacher forwards.

For each case of :data:`nnkd.bench.catalogue.SPEED_CASES` (a method trainer on a synthetic benchmark dataset) and for plain
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

Modules: :mod:`.runner` prepares the workspace (through :class:`nnkd.pipeline.Workspace`) and starts
one :mod:`.worker` process per teacher build and per case; the worker times with :mod:`.measure`;
:mod:`.report` turns the timings into the table, markdown and plot.
"""
from __future__ import annotations

import argparse

import os
import time

from nnkd.bench.catalogue import SPEED_CASES, speed_cases
from nnkd.errors import NNKDError

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
                        help=f"method labels to run (default all: {', '.join(repr(c.label) for c in SPEED_CASES)})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads in each measuring process (default 1: reproducible on a shared "
                             "machine, where several threads per process oversubscribe the cores; 0 = torch's "
                             "default, all cores as nnUNetv2_train uses them)")


def run(args) -> int:
    from nnkd.bench.speed.report import build_report, environment, format_table, write_outputs
    from nnkd.bench.speed.runner import SpeedRun

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
    cases = speed_cases(args.methods)
    settings = {"device": args.device, "quick": bool(args.quick), "iters": iters, "warmup": warmup,
                "threads": args.threads, "workspace": workspace}
    t0 = time.time()
    bench = SpeedRun(workspace, args.device, args.quick, iters, warmup, args.threads)
    print(f"[bench speed] workspace {workspace}; device {args.device}; {warmup} warm-up + {iters} timed "
          f"batches per case; {len(cases)} cases", flush=True)
    results = bench.run(cases)
    report = build_report(results, cases, settings, environment(args.device))
    report["minutes"] = round((time.time() - t0) / 60, 2)
    write_outputs(report, out)
    print("\n" + format_table(report))
    print(f"\nwritten: {os.path.join(out, 'speed.json')}, speed.md, speed.png  ({report['minutes']:.1f} min)")
    return 0


