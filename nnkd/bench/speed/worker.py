"""``python -m nnkd.bench.speed.worker SPEC.json``: one process per teacher build or measured case of ``nnkd bench
speed`` (a fresh process: its own peak RSS, nnU-Net's paths from the environment). Internal; use ``nnkd bench speed``.

The spec (JSON) names the task (``teachers`` or ``measure``), the trainer(s), dataset id, configuration and
device; the result goes to the spec's ``result`` path as JSON.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict


def main(spec_path: str) -> None:
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
        from nnkd.bench.speed.measure import measure

        result = measure(_make_trainer(spec), spec)
    write_json(spec["result"], result)


def _make_trainer(spec: Dict[str, Any]):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnkd.dataset_folders import PREPROCESSED, dataset_folder
    from nnkd.hooks import lookup

    folder = dataset_folder(int(spec["dataset_id"]), PREPROCESSED)
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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m nnkd.bench.speed.worker SPEC.json  (internal; use `nnkd bench speed`)")
    main(sys.argv[1])
