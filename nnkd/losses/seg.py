"""Voxel-wise logit distillation on the segmentation outputs (Hu et al. 2020; Fast-nnUNet's KL term).

Student ``student.seg``: ``(B, S, *spatial)`` logits, or nnU-Net's deep-supervision list (full
resolution first, each later entry on a coarser grid). Every teacher gives full-resolution
segmentation logits ``(B, S, *spatial)`` for the same patch (paired setting; a list is read at its
first, full-resolution entry). Reading ``teacher.seg`` is what runs a teacher's decoder
(:func:`nnkd.trainers.distill.teacher_forward` decodes lazily), so teachers decode only when this
loss is in the plan.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnkd.errors import NNKDError
from nnkd.losses.registry import check_teacher_weights, register_loss, teacher_weight_vector
from nnkd.ops.precision import fp32

DEEP_SUPERVISION = ("weighted", "full")


def voxel_kl(student_logits: Tensor, teacher_probs: Tensor, T: float) -> Tensor:
    """``T^2 * KL(p_t || softmax(z_s / T))`` per voxel: ``(B, S, *spatial) x2 -> (B, *spatial)``, class dim 1."""
    logp_s = F.log_softmax(student_logits / T, dim=1)
    return T * T * (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * logp_s).sum(1)


def _pool_to(probs: Tensor, size) -> Tensor:
    """``(n, B, S, *spatial)`` probabilities averaged onto the grid ``size`` (a coarser deep-supervision
    output; nnU-Net's strides divide the patch, so each coarse voxel is the mean of the fine ones it covers)."""
    if tuple(probs.shape[3:]) == tuple(size):
        return probs
    pool = F.adaptive_avg_pool3d if len(size) == 3 else F.adaptive_avg_pool2d
    return pool(probs.flatten(0, 1), tuple(size)).unflatten(0, probs.shape[:2])


def deep_supervision_weights(n: int) -> List[float]:
    """nnU-Net's deep-supervision weights for ``n`` outputs: ``1/2^i``, the coarsest set to 0 when
    ``n > 1``, normalised to sum 1 (what its DeepSupervisionWrapper applies to the seg loss)."""
    w = [0.5 ** i for i in range(n)]
    if n > 1:
        w[-1] = 0.0
    s = sum(w)
    return [x / s for x in w]


@register_loss("seg_kd")
class SegKD(nn.Module):
    """Voxel-wise Hinton KD on segmentation logits: ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))``,
    averaged over cases and voxels.

    fusion: ``"mean_prob"`` distils from the ``teacher_weights``-weighted average (normalised) of the
    teachers' tempered probabilities; ``"sum"`` sums the per-teacher terms times ``teacher_weights``.
    deep_supervision: ``"weighted"`` (default) distils into every student output under deep supervision,
    the teacher's full-resolution tempered probabilities average-pooled to each output's grid, the scales
    weighted as nnU-Net weights its seg loss (:func:`deep_supervision_weights`); ``"full"`` uses the
    full-resolution output only. Computed in float32 under autocast.
    """

    def __init__(self, T: float = 2.0, fusion: str = "mean_prob", deep_supervision: str = "weighted",
                 teacher_weights: Optional[Sequence[float]] = None, teacher_widths=None):
        super().__init__()
        problems = []
        if fusion not in ("mean_prob", "sum"):
            problems.append(f"fusion must be 'mean_prob' or 'sum', got {fusion!r}")
        if deep_supervision not in DEEP_SUPERVISION:
            problems.append(f"deep_supervision must be 'weighted' or 'full', got {deep_supervision!r}")
        if not T > 0:
            problems.append(f"T must be > 0, got {T}")
        if problems:
            raise NNKDError("loss 'seg_kd': " + "; ".join(problems))
        self.T, self.fusion, self.deep_supervision = float(T), fusion, deep_supervision
        self.teacher_weights = check_teacher_weights("seg_kd", teacher_weights, teacher_widths)

    def forward(self, student, teachers, batch) -> Tensor:
        outputs = list(student.seg) if isinstance(student.seg, (list, tuple)) else [student.seg]
        if len(teachers) == 0:
            return sum(o.sum() for o in outputs) * 0
        if self.deep_supervision == "full":
            outputs, scale_w = outputs[:1], [1.0]
        else:
            scale_w = deep_supervision_weights(len(outputs))
        full = outputs[0]
        with torch.autocast(full.device.type, enabled=False):
            zt = []
            for t in teachers:
                seg = t.seg[0] if isinstance(t.seg, (list, tuple)) else t.seg
                if seg.shape != full.shape:
                    raise NNKDError(f"loss 'seg_kd': teacher segmentation logits {tuple(seg.shape)} do not match "
                                    f"the student's {tuple(full.shape)}: teacher and student must segment the "
                                    f"same labels on the same patch")
                zt.append(fp32(seg.detach()))
            pt = F.softmax(torch.stack(zt) / self.T, dim=2)  # (n_teachers, B, S, *spatial)
            w = teacher_weight_vector("seg_kd", self.teacher_weights, len(zt), pt, self.fusion == "mean_prob")
            if self.fusion == "mean_prob":
                pt = torch.einsum("t,t...->...", w, pt)[None]  # one fused teacher
                w = w.new_ones(1)
            total = full.new_zeros((), dtype=pt.dtype)
            for sw, zs in zip(scale_w, outputs):
                zs = fp32(zs)
                p = _pool_to(pt, zs.shape[2:])
                per_teacher = torch.stack([voxel_kl(zs, p[i], self.T).mean() for i in range(len(p))])
                total = total + sw * (w @ per_teacher)
            return total
