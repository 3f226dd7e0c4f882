"""`nnkd demo`: synthetic PET/CT -> nnU-Net planning -> teacher and CT student -> predict -> report."""
from __future__ import annotations


def _demo(args) -> int:
    from dataclasses import replace

    from nnkd.demo import QUICK, DemoSettings, run_demo

    s = QUICK if args.quick else DemoSettings()
    overrides = {k: getattr(args, k) for k in ("epochs", "teacher_epochs", "iterations", "cases")
                 if getattr(args, k) is not None}
    run_demo(args.workspace, replace(s, **overrides))
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole nnkd path on a synthetic dataset (CPU, minutes)",
                       description="Creates a workspace with synthetic paired PET/CT data, runs nnU-Net planning, "
                                   "trains a multi-modal teacher and a CT-only student through nnUNetv2_train, "
                                   "predicts an external test set and writes evaluation reports. Every step streams "
                                   "its output to the console and to its log; at the end the demo prints where each "
                                   "model and log is and the `nnkd env` / `nnkd predict` lines that use them. "
                                   "Re-running resumes.")
    p.add_argument("--workspace", default="nnkd_workspace", help="folder for data, models, reports (%(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a path check: every step once on tiny data; its numbers carry no meaning")
    p.add_argument("--epochs", type=int, metavar="N", help="training epochs of each CT student (default 15)")
    p.add_argument("--teacher-epochs", type=int, metavar="N", help="training epochs of each teacher (default 8)")
    p.add_argument("--iterations", type=int, help="training iterations per epoch")
    p.add_argument("--cases", type=int, help="training cases")
    p.set_defaults(func=_demo)
