"""`nnkd plans`: the distillation plans shipped with nnkd (``NNKD_PLAN=<name>`` uses one)."""
from __future__ import annotations

import argparse
import json

from nnkd.plan import plan_path, read_plan_file, shipped_plans


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plans", help="list the distillation plans shipped with nnkd (use one with NNKD_PLAN=<name>)",
        description="Without NAME: every shipped plan with its trainer(s) and one-line description. With NAME: "
                    "that plan's file path and content. A trainer fills in what a plan leaves out from its own "
                    "defaults (see nnkd/plans/README.md).")
    p.add_argument("name", nargs="?", help="a shipped plan's name (e.g. react_kd) or a plan file")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    if args.name:
        path = plan_path(args.name)
        print(f"# {path}")
        print(json.dumps(read_plan_file(path), indent=2))
        return 0
    rows = []
    for name, path in shipped_plans().items():
        raw = read_plan_file(path)
        rows.append((name, ", ".join(raw.get("trainers") or ["(any)"]), str(raw.get("description", ""))))
    w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
    for name, trainers, description in rows:
        print(f"{name:<{w0}}  {trainers:<{w1}}  {description}")
    print('\nTrain with one:  NNKD_PLAN=<name> nnUNetv2_train DATASET CONFIG FOLD -tr <trainer>')
    return 0
