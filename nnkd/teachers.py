"""Teachers from nnU-Net model folders: safe loading, freezing, and checks against the student.

Teacher checkpoints often come from another site, so they are read with :mod:`nnkd.checkpoints`
(``torch.load(weights_only=True)``, nnU-Net's few non-tensor globals allowlisted): code that would
run while unpickling, truncated, corrupt or non-checkpoint files are refused, naming the file.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from nnkd.channels import resolve_channels
from nnkd.checkpoints import load_checkpoint as safe_load_checkpoint
from nnkd.errors import NNKDError
from nnkd.name_table import NameTable


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Teacher:
    """A frozen teacher network and what the student trainer needs to know about it."""
    name: str
    network: nn.Module
    channel_names: Dict[str, str]
    class_names: List[str]
    spatial_dims: int
    meta: Dict[str, Any] = field(default_factory=dict)
    channels: List[int] = field(default_factory=list)  # indices into the student dataset's channels (paired)

    @property
    def stage_widths(self) -> List[int]:
        return self.network.stage_widths


def load_nnunet_teacher(spec: Dict[str, Any], device: torch.device) -> Tuple[nn.Module, Dict[str, Any]]:
    """The ``nnunet`` teacher loader: a trained nnkd classification model folder."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnkd.nets.network import build_network

    folder = os.path.expandvars(os.path.expanduser(spec["model_folder"]))
    where = f"teacher '{spec['name']}'"
    if not os.path.isdir(folder):
        raise NNKDError(f"{where}: model folder not found: {folder}")
    fold_dir = os.path.join(folder, f"fold_{spec['fold']}")
    if not os.path.isdir(fold_dir):
        folds = sorted(d for d in os.listdir(folder) if d.startswith("fold_"))
        raise NNKDError(f"{where}: {folder} has no fold_{spec['fold']} (present: {', '.join(folds) or 'none'})")
    ckpt_path = os.path.join(fold_dir, spec["checkpoint"])
    if not os.path.isfile(ckpt_path):
        present = sorted(f for f in os.listdir(fold_dir) if f.endswith(".pth"))
        raise NNKDError(f"{where}: checkpoint {ckpt_path} not found (present: {', '.join(present) or 'none'})")
    plans, dataset_json = (load_json(os.path.join(folder, n)) for n in ("plans.json", "dataset.json"))
    if "nnkd" not in plans or "network" not in plans["nnkd"]:
        raise NNKDError(f"{where}: {folder} was not trained by an nnkd classification trainer (no 'nnkd' entry "
                        f"in plans.json)")
    configuration = os.path.basename(folder.rstrip(os.sep)).split("__")[-1]
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    network = build_network(pm, cm, len(dataset_json["channel_names"]),
                            pm.get_label_manager(dataset_json).num_segmentation_heads, False)
    checkpoint = safe_load_checkpoint(ckpt_path)
    try:
        network.load_state_dict(checkpoint["network_weights"])
    except (KeyError, RuntimeError) as e:
        raise NNKDError(f"{where}: {ckpt_path} does not fit the network in {folder}: {e}") from None
    network.to(device).eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return network, {"model_folder": folder, "fold": spec["fold"], "checkpoint": ckpt_path,
                     "sha256": sha256(ckpt_path), "trainer": checkpoint.get("trainer_name"),
                     "configuration": configuration, "channel_names": dataset_json["channel_names"],
                     "class_names": plans["nnkd"]["class_names"], "spatial_dims": len(cm.patch_size)}


BUILTIN_TEACHER_LOADERS = NameTable("teacher loader")
BUILTIN_TEACHER_LOADERS.register("nnunet")(load_nnunet_teacher)


def load_teachers(specs: List[Dict[str, Any]], student_channel_names: Dict[str, str], student_classes: List[str],
                  spatial_dims: int, device: torch.device) -> List[Teacher]:
    """Load every teacher of the plan and check it against the student, before the first iteration."""
    from nnkd.hooks import lookup

    teachers = []
    for i, spec in enumerate(specs):
        network, meta = lookup("teacher_loaders", spec["loader"])(spec, device)
        t = Teacher(spec["name"], network, meta["channel_names"], list(meta["class_names"]), meta["spatial_dims"],
                    meta)
        where = f"teacher '{t.name}' ({meta.get('model_folder', spec['loader'])})"
        if t.spatial_dims != spatial_dims:
            raise NNKDError(f"{where} is {t.spatial_dims}D but the student is {spatial_dims}D")
        if t.class_names != list(student_classes):
            raise NNKDError(f"{where} predicts classes {t.class_names}, the student {list(student_classes)}")
        if spec["paired"]:
            wanted = spec["channels"] if spec["channels"] is not None else list(t.channel_names.values())
            t.channels = resolve_channels(wanted, student_channel_names, f"teachers[{i}].channels")
            if len(t.channels) != len(t.channel_names):
                raise NNKDError(f"{where} reads {len(t.channel_names)} channel(s) {list(t.channel_names.values())}, "
                                f"teachers[{i}].channels names {len(t.channels)}")
        teachers.append(t)
    return teachers
