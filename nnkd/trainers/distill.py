"""Distillation students: teachers and losses from the plan, on top of nnKDTrainerCls.

Paired teachers read their own channels of the student's augmented patch; the student reads its
own. Teachers run frozen, in eval mode, under ``no_grad`` (and nnU-Net's autocast on CUDA).
Trainable parts of the losses (adapters, projections) live in one ``LossBank`` whose parameters
join the optimizer (or get their own, plan field ``loss_optimizer``) and, under DDP, are wrapped
in their own DDP so their gradients are averaged.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import fields
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnkd.errors import NNKDError
from nnkd.hooks import build_loss, lookup
from nnkd.nets.network import NNKDNetwork
from nnkd.nets.outputs import NetOutputs
from nnkd.teachers import Teacher, load_teachers
from nnkd.trainers.cls import nnKDTrainerCls
from nnkd.trainers.loss_optimizer import build_loss_optimizer, follow_schedule


class LossBank(nn.Module):
    """The plan's distillation losses: ``forward(student, teachers, batch) -> {term: weighted tensor}``.

    A loss returning a tensor gives the term ``<name>``; one returning a dict gives ``<name>/<key>``.
    Keys starting with ``n_`` are counters and stay unweighted (not part of the loss).
    """

    def __init__(self, losses: Dict[str, nn.Module], weights: Dict[str, float]):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(weights)

    def forward(self, student, teachers, batch) -> Dict[str, torch.Tensor]:
        terms = {}
        for name, loss in self.losses.items():
            value = loss(student, teachers, batch)
            w = self.weights[name]
            if isinstance(value, dict):
                for k, v in value.items():
                    terms[f"n_{name}/{k[2:]}" if k.startswith("n_") else f"{name}/{k}"] = \
                        v.detach() if k.startswith("n_") else w * v
            else:
                terms[name] = w * value
        return terms


class _PendingSeg:
    """A teacher's segmentation not decoded yet: the decoder, its input and the autocast to run it under."""

    __slots__ = ("decoder", "skips", "autocast")

    def __init__(self, decoder: nn.Module, skips, autocast: Callable):
        self.decoder, self.skips, self.autocast = decoder, skips, autocast

    def decode(self):
        with torch.no_grad(), self.autocast():
            return self.decoder(self.skips)


class _DeferredDecoder(nn.Module):
    """Stands in for a teacher network's decoder during its forward: keeps the skips, decodes on demand."""

    def __init__(self, decoder: nn.Module, autocast: Callable):
        super().__init__()
        self.__dict__["real"] = decoder  # not a registered submodule
        self.__dict__["autocast"] = autocast

    def forward(self, skips):
        return _PendingSeg(self.real, skips, self.autocast)


class TeacherOutputs(NetOutputs):
    """:class:`NetOutputs` whose ``seg`` runs the teacher's decoder on first access (then cached).

    The decoder (full-resolution stages) is about 60 % of a teacher forward, so it runs only for a
    loss that reads ``.seg`` (of the built-in ones ``seg_kd``); that loss gets the same tensor as an
    eager forward would have given.
    """

    @property
    def seg(self):
        value = self.__dict__["_seg"]
        if isinstance(value, _PendingSeg):
            value = self.__dict__["_seg"] = value.decode()
        return value

    @seg.setter
    def seg(self, value):
        self.__dict__["_seg"] = value


def teacher_forward(network: nn.Module, x: torch.Tensor, autocast: Callable = nullcontext) -> NetOutputs:
    """``network(x, return_all=True)`` of a frozen teacher, with the segmentation decoded lazily.

    Only for :class:`NNKDNetwork` (whose forward computes ``seg = self.decoder(skips)``); other
    networks (plugin teacher loaders) run their plain forward. Call under ``no_grad``.
    """
    if not isinstance(network, NNKDNetwork):
        return network(x, return_all=True)
    decoder = network.decoder
    network.decoder = _DeferredDecoder(decoder, autocast)
    try:
        out = network(x, return_all=True)
    finally:
        network.decoder = decoder
    if not isinstance(out.seg, _PendingSeg):
        return out
    return TeacherOutputs(**{f.name: getattr(out, f.name) for f in fields(out)})


def _channels(data: torch.Tensor, channels: List[int]) -> torch.Tensor:
    """``data[:, channels]``: a view when the channels are a contiguous ascending range."""
    if channels and list(channels) == list(range(channels[0], channels[-1] + 1)):
        return data[:, channels[0]:channels[-1] + 1]
    return data[:, channels]


class nnKDTrainerDistill(nnKDTrainerCls):
    """Student distilled from the plan's paired teachers with any combination of registered losses."""

    #: which teachers this trainer distils from: True = paired (channels of the student's patch),
    #: False = unpaired (their own datasets, see nnkd.trainers.unpaired)
    paired_teachers: bool = True
    #: whether the plan must name at least one teacher
    requires_teachers: bool = True
    distils = True

    def plan_problems(self) -> List[str]:
        problems = super().plan_problems()
        if self.kd_plan["student"]["init_from_teacher"] is not False and not self.kd_plan["teachers"]:
            problems.append("field 'student.init_from_teacher': the plan names no teacher to start from")
        return problems

    def initialize(self):
        super().initialize()
        plan = self.kd_plan
        if self.paired_teachers and plan["modality_dropout"] is not None and plan["teachers"]:
            raise NNKDError(f"{self.kd_plan_source}: field 'modality_dropout': paired teachers read the same "
                            f"augmented patch, so dropping channels there would blind the teacher too; train "
                            f"the multi-modal teacher with modality dropout (nnKDTrainerCls) instead")
        if self.requires_teachers and not plan["teachers"]:
            raise NNKDError(f"{self.__class__.__name__} needs teachers: the plan {self.kd_plan_source} has none "
                            f"(see nnkd/plans/README.md, field 'teachers')")
        wrong = [t["name"] for t in plan["teachers"] if t["paired"] != self.paired_teachers]
        if wrong:
            kind, other = ("paired", "unpaired") if self.paired_teachers else ("unpaired", "paired")
            raise NNKDError(f"{self.kd_plan_source}: {self.__class__.__name__} distils from {kind} teachers; "
                            f"{other} teacher(s) {wrong} need a{'n' if other == 'unpaired' else ''} {other} trainer "
                            f"(field 'teachers[i].paired')")
        self.teachers: List[Teacher] = load_teachers(
            plan["teachers"], self.full_dataset_json["channel_names"], self.class_names or None,  # []: no classes
            len(self.configuration_manager.patch_size), self.device)
        for t in self.teachers:
            self.print_to_log_file(f"teacher '{t.name}': {t.meta.get('model_folder')} fold {t.meta.get('fold')} "
                                   f"sha256 {t.meta.get('sha256', '?')[:16]}..., channels {t.channels}")
        losses, weights = {}, {}
        for i, spec in enumerate(plan["losses"]):
            name = spec["name"] if spec["name"] not in losses else f"{spec['name']}{i}"
            losses[name] = build_loss(spec["name"], **self._loss_context(lookup("losses", spec["name"]),
                                                                        spec["params"]))
            weights[name] = float(spec["weight"])
        self.loss_bank = LossBank(losses, weights).to(self.device)
        params = [p for p in self.loss_bank.parameters() if p.requires_grad]
        loss_optimizer = build_loss_optimizer(params, plan["loss_optimizer"]) if params else None
        self.loss_optimizer = None if loss_optimizer is None else self.guard_steps(loss_optimizer)
        if params and self.loss_optimizer is None:
            self.optimizer.add_param_group({"params": params})
        self.loss_bank_call = DDP(self.loss_bank, device_ids=[self.local_rank]) if self.is_ddp and params \
            else self.loss_bank
        self._init_from_teacher()

    def _init_from_teacher(self) -> None:
        """``student.init_from_teacher``: copy teacher 0's weights when the architectures match
        (``"auto"``: only then; ``true``: refuse otherwise). A later ``--c`` overrides them."""
        mode = self.kd_plan["student"]["init_from_teacher"]
        if mode is False:
            return
        teacher = self.teachers[0]
        src, dst = teacher.network.state_dict(), self._bare_network().state_dict()
        if getattr(self._bare_network(), "head", True) is None:  # a student without head takes all but the head
            src = {k: v for k, v in src.items() if not k.startswith("head.")}
        mismatch = sorted(k for k in dst if k not in src or src[k].shape != dst[k].shape)
        if mismatch or set(src) != set(dst):
            msg = (f"student.init_from_teacher: teacher '{teacher.name}' has another architecture "
                   f"({len(mismatch)} differing tensor(s), e.g. {', '.join(mismatch[:3]) or 'extra keys'})")
            if mode is True:
                raise NNKDError(f"{self.kd_plan_source}: {msg}; set it to \"auto\" or false")
            self.print_to_log_file(f"{msg}: the student starts from nnU-Net's initialisation")
            return
        self._bare_network().load_state_dict(src)
        self.print_to_log_file(f"student initialised from teacher '{teacher.name}' ({teacher.meta.get('checkpoint')})")

    def loss_context_extras(self) -> Dict[str, Any]:
        ctx = self._lesion_context()
        if not getattr(self, "teachers", None):
            return ctx
        # teacher_weights: the plan's teachers[i].weight, for every loss that fuses several teachers
        return dict(ctx, student_widths=list(self._bare_network().stage_widths),
                    teacher_widths=[list(t.stage_widths) for t in self.teachers],
                    teacher_weights=[float(t["weight"]) for t in self.kd_plan["teachers"]])

    def _lesion_context(self) -> Dict[str, Any]:
        """``stage_strides`` and ``lesion_extent`` for losses whose ``stage="auto"`` follows the lesion size
        (:mod:`nnkd.losses.lesion`); the training masks are read only when such a loss is in the plan."""
        import inspect

        specs = [s for s in self.kd_plan["losses"]
                 if "lesion_extent" in inspect.signature(lookup("losses", s["name"])).parameters
                 and "lesion_extent" not in s["params"]]
        if not specs or getattr(self, "dataset_class", None) is None:
            return {}
        if not hasattr(self, "_lesion_extent"):
            from nnkd.ops.keypoints import training_lesion_extent

            keys = sorted(self.do_split()[0])
            self._lesion_extent = training_lesion_extent(self.dataset_class(self.preprocessed_dataset_folder, keys))
            self.print_to_log_file(f"lesion extent (5th percentile of the training lesions' box sides, voxels "
                                   f"per axis): {self._lesion_extent}")
        strides = np.cumprod(np.asarray(self.configuration_manager.pool_op_kernel_sizes, dtype=int), axis=0)
        return {"stage_strides": strides.tolist(), "lesion_extent": self._lesion_extent}

    def teacher_outputs(self, b: Dict[str, Any]):
        """Every teacher's :class:`NetOutputs` on its channels of the batch.

        Frozen and in eval mode, under ``no_grad`` (not ``inference_mode``: losses save teacher
        tensors for their backward, which inference tensors refuse) and inside the step's autocast
        (nnU-Net's, on CUDA). The teachers' decoders run only if a loss reads ``.seg`` (see
        :func:`teacher_forward`); a plain channel range is a view, not a copy.
        """
        with torch.no_grad():
            return [teacher_forward(t.network, _channels(b["data"], t.channels), self._autocast)
                    for t in self.teachers]

    def compute_losses(self, out, b: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        terms = super().compute_losses(out, b)
        terms.update(self.distillation_terms(out, b))
        return terms

    def distillation_terms(self, out, b: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """The loss bank's weighted terms for the student's outputs ``out`` on batch ``b``."""
        if not self.loss_bank.losses:  # e.g. a teacher-initialised baseline without KD: no teacher forward
            return {}
        teacher_out = self.teacher_outputs(b)
        n = len(teacher_out)
        # paired teachers see the student's patch, so they share its targets; unpaired batches bring their own
        b = {"teacher_class_target": [b["class_target"]] * n, "teacher_seg_target": [b["seg_target"]] * n, **b}
        return self.loss_bank_call(out, teacher_out, b)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # nnU-Net's poly schedule sets the student's rate
        if self.loss_optimizer is not None:
            follow_schedule(self.loss_optimizer, self.kd_plan["loss_optimizer"]["lr"],
                            self.optimizer.param_groups[0]["lr"], self.initial_lr)

    def nnkd_checkpoint_entry(self) -> Dict[str, Any]:
        entry = super().nnkd_checkpoint_entry()
        entry["loss_bank"] = self.loss_bank.state_dict()
        if self.loss_optimizer is not None:
            entry["loss_optimizer"] = self.loss_optimizer.state_dict()
        entry["teachers"] = [{k: t.meta.get(k) for k in ("model_folder", "fold", "checkpoint", "sha256")}
                             | {"name": t.name} for t in self.teachers]
        return entry

    def restore_nnkd_checkpoint_entry(self, entry: Dict[str, Any]) -> None:
        super().restore_nnkd_checkpoint_entry(entry)
        if "loss_bank" in entry:
            self.loss_bank.load_state_dict(entry["loss_bank"])
        if self.loss_optimizer is not None and "loss_optimizer" in entry:
            self.loss_optimizer.load_state_dict(entry["loss_optimizer"])
        for old, t in zip(entry.get("teachers", []), self.teachers):
            if old.get("sha256") != t.meta.get("sha256"):
                self.print_to_log_file(f"WARNING: teacher '{t.name}' checkpoint changed since this run started "
                                       f"({old.get('sha256', '?')[:16]} -> {t.meta.get('sha256', '?')[:16]})")


class nnKDTrainerREACT(nnKDTrainerDistill):
    """REACT-KD student: dual teachers, Hinton logit KD + region-graph KD, focal loss (docs/methods.md)."""

    plan_defaults = {
        "name": "react_kd",
        "classification": {"loss": "focal", "params": {"gamma": 2.0}, "select_best_by": "auc"},
        "losses": [{"name": "logit_kd", "weight": 0.7, "params": {"T": 2.0, "fusion": "mean_prob"}},
                   {"name": "region_graph", "weight": 1.0, "params": {"stage": -3, "eps": 0.05, "iters": 100}}],
    }


class nnKDTrainerLogitKD(nnKDTrainerDistill):
    """Baseline: Hinton logit KD only (T=2, weight 0.7) from the plan's teachers."""

    plan_defaults = {"name": "logit_kd", "classification": {"select_best_by": "auc"},
                     "losses": [{"name": "logit_kd", "weight": 0.7, "params": {"T": 2.0}}]}


class nnKDTrainerRegionGraph(nnKDTrainerDistill):
    """Ablation: REACT-KD's region-graph KD alone (same weight and stage, no logit KD)."""

    plan_defaults = {"name": "region_graph", "classification": {"select_best_by": "auc"},
                     "losses": [dict(nnKDTrainerREACT.plan_defaults["losses"][1])]}


class nnKDTrainerFitNet(nnKDTrainerDistill):
    """Baseline: FitNet bottleneck feature regression with a 1x1 adapter."""

    plan_defaults = {"name": "fitnet", "classification": {"select_best_by": "auc"},
                     "losses": [{"name": "fitnet", "weight": 1.0, "params": {"stage": -1}}]}


class nnKDTrainerAT(nnKDTrainerDistill):
    """Baseline: attention transfer on the three deepest encoder stages."""

    plan_defaults = {"name": "at", "classification": {"select_best_by": "auc"},
                     "losses": [{"name": "at", "weight": 1.0, "params": {}}]}


class nnKDTrainerDKD(nnKDTrainerDistill):
    """Baseline: decoupled KD (TCKD + NCKD; alpha 1, beta 8, T 4)."""

    plan_defaults = {"name": "dkd", "classification": {"select_best_by": "auc"},
                     "losses": [{"name": "dkd", "weight": 1.0, "params": {"alpha": 1.0, "beta": 8.0, "T": 4.0}}]}
