"""Feature-map distillation baselines on encoder stages: FitNet hints and attention transfer.

Stages index ``NetOutputs.features`` (shallow to deep, each ``(B, C, *spatial)``; negative =
from the deepest). One implementation for 2D and 3D. Teacher features are detached; the
result is the mean over stages and the mean over teachers weighted by ``teacher_weights`` (the
plan's ``teachers[i].weight``; equal weights when not given). Where the student's stage grid differs from
the teacher's, the student side is resampled (linear interpolation) to the teacher's grid.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnkd.errors import NNKDError
from nnkd.losses.registry import check_teacher_weights, register_loss, teacher_weight_vector, widths_at

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize_to(x: Tensor, size) -> Tensor:
    """Linearly resample ``(B, C, *spatial)`` to ``size`` (no-op when already that size)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=_LINEAR[x.ndim - 2], align_corners=False)


def _check_teachers(name: str, teachers, expected: int) -> None:
    if len(teachers) != expected:
        raise NNKDError(f"loss {name!r} was built for {expected} teacher(s) (teacher_widths) but got "
                        f"{len(teachers)}")


@register_loss("fitnet")
class FitNet(nn.Module):
    """FitNet hint loss: ``MSE(adapter(F_s), F_t)`` at ``stage``, one learnable 1x1 conv
    adapter (student width -> teacher width) per teacher."""

    def __init__(self, student_widths: Sequence[int], teacher_widths: Sequence[Sequence[int]],
                 spatial_dims: int, stage: int = -1, teacher_weights: Optional[Sequence[float]] = None):
        super().__init__()
        self.teacher_weights = check_teacher_weights("fitnet", teacher_weights, teacher_widths)
        if spatial_dims not in _LINEAR:
            raise NNKDError(f"loss 'fitnet': spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        cs, cts = widths_at("fitnet", student_widths, teacher_widths, stage)
        conv = getattr(nn, f"Conv{spatial_dims}d")
        self.stage = stage
        self.adapters = nn.ModuleList(conv(cs, ct, kernel_size=1) for ct in cts)

    def forward(self, student, teachers, batch) -> Tensor:
        fs = student.features[self.stage]
        if len(teachers) == 0:
            return fs.sum() * 0 + sum(p.sum() for p in self.parameters()) * 0
        _check_teachers("fitnet", teachers, len(self.adapters))
        losses = []
        for adapter, t in zip(self.adapters, teachers):  # a loop over the 1-2 teachers
            ft = t.features[self.stage].detach()
            losses.append(F.mse_loss(resize_to(adapter(fs), ft.shape[2:]), ft))
        losses = torch.stack(losses)
        return teacher_weight_vector("fitnet", self.teacher_weights, len(losses), losses) @ losses


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis attention: ``mean_c |F|^p``, ``(B, C, *S) -> (B, 1, *S)``."""
    return f.abs().pow(p).mean(1, keepdim=True)


def at_loss(fs: Tensor, ft: Tensor, p: float = 2.0) -> Tensor:
    """Squared L2 distance between the flattened, L2-normalised attention maps, batch mean."""
    a_t = attention_map(ft, p)
    a_s = resize_to(attention_map(fs, p), a_t.shape[2:])
    a_s, a_t = (F.normalize(a.flatten(1), dim=1) for a in (a_s, a_t))
    return ((a_s - a_t) ** 2).sum(1).mean()


@register_loss("at")
class AttentionTransfer(nn.Module):
    """Attention transfer over ``stages`` (default the three deepest), mean over stages and teachers."""

    def __init__(self, stages: Union[int, Sequence[int]] = (-3, -2, -1), p: float = 2.0,
                 teacher_weights: Optional[Sequence[float]] = None, teacher_widths=None):
        super().__init__()
        self.teacher_weights = check_teacher_weights("at", teacher_weights, teacher_widths)
        self.stages = [stages] if isinstance(stages, int) else list(stages)
        if not self.stages:
            raise NNKDError("loss 'at': stages is empty")
        self.p = float(p)

    def forward(self, student, teachers, batch) -> Tensor:
        if len(teachers) == 0:
            return sum(student.features[s].sum() for s in self.stages) * 0
        per_teacher = torch.stack([torch.stack([at_loss(student.features[s], t.features[s].detach(), self.p)
                                                for s in self.stages]).mean() for t in teachers])
        return teacher_weight_vector("at", self.teacher_weights, len(teachers), per_teacher) @ per_teacher
