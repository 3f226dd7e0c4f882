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
from nnkd import strict_json
from nnkd.errors import NNKDError
from nnkd.name_table import NameTable


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_pin(spec: Dict[str, Any], path: str) -> str:
    """``path``'s sha256; NNKDError naming the file and both hashes when the plan pins another one
    (``teachers[i].sha256``): a changed or corrupted checkpoint must not train silently."""
    digest = sha256(path)
    pinned = spec.get("sha256")
    if pinned is not None and digest != pinned.lower():
        raise NNKDError(f"teacher '{spec['name']}': checkpoint {path} has sha256 {digest}, but the plan pins "
                        f"{pinned.lower()} (field 'sha256'): the file changed or is another one; refusing to "
                        f"train with it")
    return digest


def _model_json(folder: str, name: str, where: str) -> Dict[str, Any]:
    """plans.json / dataset.json of a model folder, read strictly; NNKDError naming the file."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise NNKDError(f"{where}: {folder} has no {name} (an nnU-Net model folder holds plans.json, "
                        f"dataset.json and fold_k/)")
    try:
        doc = strict_json.load(path, name)
    except NNKDError as e:
        raise NNKDError(f"{where}: {e}") from None
    if not isinstance(doc, dict):
        raise NNKDError(f"{where}: {path} must hold a JSON object")
    return doc


def input_channel_names(channel_names: Dict[str, str]) -> List[str]:
    """A dataset.json ``channel_names`` ({"0": "CT", ...}) as names in input-channel order."""
    return [str(channel_names[k]) for k in sorted(channel_names, key=int)]


def match_channels(i: int, spec: Dict[str, Any], teacher_names: List[str],
                   student_channel_names: Dict[str, str]) -> List[int]:
    """Student channel indices feeding a paired teacher's inputs, in the teacher's input order.

    Channels are matched by name: the teacher's own ``channel_names`` (its dataset.json) against the
    student's. ``teachers[i].channels`` (student channels, names or indices) must name the same
    channels in the same order; feeding differently named channels needs an explicit
    ``teachers[i].channel_map`` {teacher channel name: student channel name or index}.
    """
    f = f"teachers[{i}]"
    student_names = input_channel_names(student_channel_names)
    if spec.get("channel_map") is not None:
        cmap = spec["channel_map"]
        unknown = [k for k in cmap if k not in teacher_names]
        missing = [n for n in teacher_names if n not in cmap]
        if unknown or missing:
            raise NNKDError(f"{f}.channel_map: the teacher's input channels are {teacher_names}; "
                            + "; ".join(part for part in (
                                f"not among them: {unknown}" if unknown else "",
                                f"not mapped: {missing}" if missing else "") if part))
        return resolve_channels([cmap[n] for n in teacher_names], student_channel_names, f"{f}.channel_map")
    wanted = spec["channels"] if spec.get("channels") is not None else teacher_names
    channels = resolve_channels(wanted, student_channel_names, f"{f}.channels")
    if len(channels) != len(teacher_names):
        raise NNKDError(f"{f}.channels names {len(channels)} channel(s), but the teacher reads {len(teacher_names)}: "
                        f"{teacher_names}")
    fed = [student_names[c] for c in channels]
    if fed != teacher_names:
        how = "the same channels in another order" if sorted(fed) == sorted(teacher_names) else "other channels"
        example = ", ".join(f'"{t}": "{s}"' for t, s in zip(teacher_names, fed))
        raise NNKDError(f"{f}.channels feeds the teacher {fed}, but its input channels are {teacher_names} "
                        f"(its dataset.json): {how}. To feed these channels on purpose, replace 'channels' by "
                        f"an explicit \"channel_map\": {{{example}}}")
    return channels


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
    plans, dataset_json = (_model_json(folder, n, where) for n in ("plans.json", "dataset.json"))
    if not isinstance(plans.get("nnkd"), dict) or "network" not in plans["nnkd"]:
        raise NNKDError(f"{where}: {folder} was not trained by an nnkd classification trainer (no 'nnkd' entry "
                        f"in {os.path.join(folder, 'plans.json')})")
    if not isinstance(dataset_json.get("channel_names"), dict) or not dataset_json["channel_names"]:
        raise NNKDError(f"{where}: {os.path.join(folder, 'dataset.json')} has no 'channel_names'")
    digest = check_pin(spec, ckpt_path)  # before the file is unpickled at all
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
                     "sha256": digest, "trainer": checkpoint.get("trainer_name"),
                     "configuration": configuration, "channel_names": dataset_json["channel_names"],
                     "class_names": plans["nnkd"]["class_names"], "spatial_dims": len(cm.patch_size)}


BUILTIN_TEACHER_LOADERS = NameTable("teacher loader")
BUILTIN_TEACHER_LOADERS.register("nnunet")(load_nnunet_teacher)


def load_teachers(specs: List[Dict[str, Any]], student_channel_names: Dict[str, str], student_classes: List[str],
                  spatial_dims: int, device: torch.device) -> List[Teacher]:
    """Load every teacher of the plan and check it against the student, before the first iteration.

    One NNKDError lists the problems of every teacher."""
    from nnkd.hooks import lookup

    teachers, problems = [], []
    for i, spec in enumerate(specs):
        try:
            teachers.append(_load_teacher(i, spec, lookup("teacher_loaders", spec["loader"]), student_channel_names,
                                          student_classes, spatial_dims, device))
        except NNKDError as e:
            problems.append(str(e))
    if len(problems) == 1:
        raise NNKDError(problems[0])
    if problems:
        raise NNKDError(f"{len(problems)} teachers are refused:\n" + "\n".join(f"  - {p}" for p in problems))
    return teachers


def _load_teacher(i: int, spec: Dict[str, Any], loader, student_channel_names: Dict[str, str],
                  student_classes: List[str], spatial_dims: int, device: torch.device) -> Teacher:
    network, meta = loader(spec, device)
    t = Teacher(spec["name"], network, meta["channel_names"], list(meta["class_names"]), meta["spatial_dims"],
                meta)
    where = f"teacher '{t.name}' ({meta.get('model_folder', spec['loader'])})"
    if spec.get("sha256") is not None and meta.get("sha256") != spec["sha256"].lower():
        raise NNKDError(f"{where}: the plan pins sha256 {spec['sha256'].lower()}, the loader reports "
                        f"{meta.get('sha256') or 'no hash'} for {meta.get('checkpoint', 'its checkpoint')}")
    if t.spatial_dims != spatial_dims:
        raise NNKDError(f"{where} is {t.spatial_dims}D but the student is {spatial_dims}D")
    if student_classes is not None and t.class_names != list(student_classes):  # None: a student without classes
        raise NNKDError(f"{where} predicts classes {t.class_names}, the student {list(student_classes)}")
    if spec["paired"]:
        try:
            t.channels = match_channels(i, spec, input_channel_names(t.channel_names), student_channel_names)
        except NNKDError as e:
            raise NNKDError(f"{where}: {e}") from None
    return t
