"""CoMoTo's lesion-aware losses (docs/methods.md) and the image-level KD baseline.

* ``"impa"``  teacher training: intra-modal point alignment of lesion keypoint features.
* ``"lskd"``  student training: KL between batch-mean lesion keypoint features of an unpaired
  teacher batch and the student batch.
* ``"image_kd"`` baseline: the same KL over all spatial positions of the stage maps.

Stage choice (``stage``): an int indexes ``NetOutputs.features`` (negative from the deep end);
``"auto"`` (default) takes the deepest stage on which the lesions still span ``min_cells`` (2.5)
cells along every axis: the deepest ``s`` with ``lesion_extent / stage_strides[s] >= min_cells``,
stage 0 if none. nnkd's trainers pass ``stage_strides`` (each stage's cumulative stride per axis,
from the nnU-Net plans) and ``lesion_extent`` (per axis, the 5th percentile over the training
lesions of their bounding-box side in voxels: a single clipped speck does not force the finest
stage); a plan may give ``lesion_extent`` itself. Why: the keypoints of a lesion narrower than a
cell all read the same interpolated vector, so lesion KD degenerates into image-level KD (the
paper's stride-32 map suits its 448-px mammograms, not a 5-10 px lesion on a 64-px patch, where
the stride-16 bottleneck is 4x4). Without strides or extent (direct use of the loss), ``"auto"``
is the code's stride-32 stage, ``min(5, n_stages - 1)``.

Counters: dict keys starting with ``n_`` are detached 0/1 flags (1 = this batch had no lesion on
that side, so the loss term is an input-dependent zero); they are for logging, not loss terms,
and callers summing the loss must skip them.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nnkd.losses.registry import register_loss
from nnkd.ops.keypoints import background_point_features, lesion_boxes, lesion_point_features

Stage = Union[int, str]
_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


def lesion_stage(stage_strides: Sequence[Sequence[int]], lesion_extent: Sequence[float], min_cells: float = 2.5) -> int:
    """The deepest stage whose cells are small enough for the lesions: ``lesion_extent[d] /
    stage_strides[s][d] >= min_cells`` on every axis d; 0 when no stage qualifies."""
    ok = [s for s, st in enumerate(stage_strides)
          if all(float(e) / float(r) >= min_cells for e, r in zip(lesion_extent, st))]
    return max(ok) if ok else 0


def resolve_stage(stage: Stage, num_stages: int) -> int:
    """Index into a ``num_stages``-long feature list for ``stage`` (int or ``"auto"`` without the lesion
    information: the stride-32 stage; see :func:`fix_stage` for the lesion rule)."""
    if stage == "auto":
        return min(5, num_stages - 1)
    if not isinstance(stage, int) or not -num_stages <= stage < num_stages:
        raise ValueError(f"stage must be 'auto' or an int in [{-num_stages}, {num_stages - 1}], got {stage!r}")
    return stage % num_stages


def fix_stage(stage: Stage, stage_strides: Optional[Sequence[Sequence[int]]],
              lesion_extent: Optional[Sequence[float]], min_cells: float) -> Stage:
    """``"auto"`` resolved by the lesion rule when strides and extent are known; otherwise ``stage`` as is."""
    if stage == "auto" and stage_strides is not None and lesion_extent is not None:
        return lesion_stage(stage_strides, lesion_extent, min_cells)
    return stage


def _flag(condition: bool, like: Tensor) -> Tensor:
    return torch.tensor(float(condition), device=like.device)


def _channel_kl(teacher: Tensor, student: Tensor, temperature: float) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T))`` over the last axis, mean over the first (channels)."""
    return F.kl_div(F.log_softmax(student.float() / temperature, -1), F.log_softmax(teacher.float() / temperature, -1),
                    log_target=True, reduction="batchmean")


@register_loss("impa")
class ImPALoss(nn.Module):
    """Intra-modal point alignment on the network being trained (``student``; teachers unused).

    ``L = beta * [mean_{b != b'} relu(1 - cos(u_b, u_b')) + mean_{b, b'} relu(cos(u_b, n_b'))]``
    with ``u_b`` the flattened ``P(x_b)`` ``(C*K)`` of the images with lesions and ``n_b'`` the
    same for up to K random background points of every image (missing points contribute zeros).
    The first mean leaves out ``b = b'``: those terms are identically zero with zero gradient,
    so including them would only shrink the loss by ``(n-1)/n`` and make its weight depend on
    how many lesion images a batch happens to hold. The second mean keeps ``b = b'`` (lesion vs.
    background of the same image is informative). Returns ``impa_align``, ``impa_background``
    (already times beta) and the counter ``n_impa_no_lesion``.
    """

    def __init__(self, beta: float = 2.0, stage: Stage = "auto", lesion_labels: Optional[Sequence[int]] = None,
                 seed: int = 0, stage_strides: Optional[Sequence[Sequence[int]]] = None,
                 lesion_extent: Optional[Sequence[float]] = None, min_cells: float = 2.5):
        super().__init__()
        stage = fix_stage(stage, stage_strides, lesion_extent, min_cells)
        self.beta, self.stage, self.lesion_labels, self.seed = beta, stage, lesion_labels, seed
        self._generator: Optional[torch.Generator] = None

    def _rng(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def forward(self, student, teachers, batch) -> Dict[str, Tensor]:
        feature = student.features[resolve_stage(self.stage, len(student.features))]
        seg = batch["seg_target"]
        boxes = lesion_boxes(seg, self.lesion_labels)
        p, valid = lesion_point_features(feature, seg, boxes=boxes)
        bg, bg_valid = background_point_features(feature, seg, p.shape[-1], generator=self._rng(seg.device),
                                                 boxes=boxes)
        u = F.normalize(p[valid].flatten(1).float(), dim=1)  # (n, C*K)
        nb = F.normalize(bg[bg_valid.any(1)].flatten(1).float(), dim=1)  # (m, C*K)
        zero = feature.sum() * 0
        n = u.shape[0]
        with torch.autocast(u.device.type, enabled=False):  # cosines in float32 (autocast: float16 matmuls)
            cos_uu = u @ u.T
            off_diag = ~torch.eye(n, dtype=torch.bool, device=u.device)
            align = torch.relu(1 - cos_uu[off_diag]).mean() if n >= 2 else zero
            background = torch.relu(u @ nb.T).mean() if n >= 1 and nb.shape[0] else zero
        return {"impa_align": self.beta * align, "impa_background": self.beta * background,
                "n_impa_no_lesion": _flag(n == 0, feature)}


class _StageKD(nn.Module):
    """Shared parts of the teacher -> student stage losses: stage choice and width projection.

    The projection (student channels -> teacher channels, a 1x1 convolution written as a
    bias-free Linear over the channel axis) exists only when the widths differ; a bias would be
    useless since the softmax over points/positions of a channel ignores a per-channel shift.
    """

    def __init__(self, alpha: float, temperature: float, stage: Stage, teacher_stage: Optional[Stage],
                 student_widths: Optional[Sequence[int]], teacher_widths: Optional[Sequence[Sequence[int]]],
                 stage_strides=None, lesion_extent=None, min_cells: float = 2.5):
        super().__init__()
        stage = fix_stage(stage, stage_strides, lesion_extent, min_cells)
        if teacher_stage is not None:
            teacher_stage = fix_stage(teacher_stage, stage_strides, lesion_extent, min_cells)
        self.alpha, self.temperature = alpha, temperature
        self.stage, self.teacher_stage = stage, stage if teacher_stage is None else teacher_stage
        self.proj: Optional[nn.Linear] = None
        if student_widths is not None and teacher_widths:
            cs = student_widths[resolve_stage(self.stage, len(student_widths))]
            ct = teacher_widths[0][resolve_stage(self.teacher_stage, len(teacher_widths[0]))]
            if cs != ct:
                self.proj = nn.Linear(cs, ct, bias=False)

    def stage_maps(self, student, teachers):
        """``(student map (B, C_S, *s), teacher map (B_T, C_T, *s_T), detached)``."""
        if not teachers:
            raise ValueError(f"{type(self).__name__} needs a teacher batch (teachers[0]); got none")
        fs = student.features[resolve_stage(self.stage, len(student.features))]
        ft = teachers[0].features[resolve_stage(self.teacher_stage, len(teachers[0].features))].detach()
        return fs, ft

    def to_teacher_width(self, x: Tensor, teacher_channels: int) -> Tensor:
        """``(C_S, ...)`` -> ``(C_T, ...)`` through the projection (identity when widths match)."""
        if self.proj is None:
            if x.shape[0] != teacher_channels:
                raise ValueError(f"{type(self).__name__}: student stage has {x.shape[0]} channels, teacher "
                                 f"{teacher_channels}; build the loss with student_widths/teacher_widths so it "
                                 "creates a projection")
            return x
        return self.proj(x.movedim(0, -1)).movedim(-1, 0)

    def zero(self, fs: Tensor) -> Tensor:
        """A zero that depends on the student map and every parameter (graph and DDP stay whole)."""
        return (fs.sum() + sum(p.sum() for p in self.parameters())) * 0


@register_loss("lskd")
class LsKDLoss(_StageKD):
    """Lesion-specific KD from an unpaired teacher batch.

    ``P_T`` = mean of ``P(x)`` over the teacher batch's lesion images (no grad), ``P_S`` the same
    over the student batch, ``L = alpha * T**2 * KL(softmax(P_T/T) || softmax(P_S W/T))`` with
    the softmax over the K points of each channel and the mean over channels. ``W`` (K x K,
    ``point_map``) starts at the identity so training starts by matching point k to point k.
    Returns ``lskd`` and the counters ``n_lskd_no_lesion_student`` / ``..._teacher``.
    """

    def __init__(self, spatial_dims: int, alpha: float = 2.0, temperature: float = 4.0, stage: Stage = "auto",
                 teacher_stage: Optional[Stage] = None, lesion_labels: Optional[Sequence[int]] = None,
                 student_widths: Optional[Sequence[int]] = None,
                 teacher_widths: Optional[Sequence[Sequence[int]]] = None,
                 stage_strides: Optional[Sequence[Sequence[int]]] = None,
                 lesion_extent: Optional[Sequence[float]] = None, min_cells: float = 2.5):
        super().__init__(alpha, temperature, stage, teacher_stage, student_widths, teacher_widths,
                         stage_strides, lesion_extent, min_cells)
        self.lesion_labels = lesion_labels
        k = 3 ** spatial_dims
        self.point_map = nn.Linear(k, k, bias=False)
        with torch.no_grad():
            self.point_map.weight.copy_(torch.eye(k))

    def forward(self, student, teachers, batch) -> Dict[str, Tensor]:
        fs, ft = self.stage_maps(student, teachers)
        ps, vs = lesion_point_features(fs, batch["seg_target"], self.lesion_labels)
        with torch.no_grad():
            pt, vt = lesion_point_features(ft, batch["teacher_seg_target"][0], self.lesion_labels)
        flags = {"n_lskd_no_lesion_student": _flag(not bool(vs.any()), fs),
                 "n_lskd_no_lesion_teacher": _flag(not bool(vt.any()), fs)}
        if not (vs.any() and vt.any()):
            return {"lskd": self.zero(fs), **flags}
        p_t = pt[vt].mean(0)  # (C_T, K)
        p_s = self.point_map(self.to_teacher_width(ps[vs].mean(0), p_t.shape[0]))
        loss = self.alpha * self.temperature ** 2 * _channel_kl(p_t, p_s, self.temperature)
        return {"lskd": loss, **flags}


@register_loss("image_kd")
class ImageKDLoss(_StageKD):
    """Image-level KD baseline: the LsKD KL over all positions of the batch-mean stage maps.

    Batches are unpaired, so (as for LsKD) each side is averaged over its batch first: ``(C, *s)``.
    When the stage sizes differ the projected student map is resampled to the teacher's size
    with (bi/tri)linear interpolation (``align_corners=False``). Softmax over positions per
    channel, mean over channels. Returns ``image_kd``.
    """

    def __init__(self, alpha: float = 2.0, temperature: float = 4.0, stage: Stage = "auto",
                 teacher_stage: Optional[Stage] = None, student_widths: Optional[Sequence[int]] = None,
                 teacher_widths: Optional[Sequence[Sequence[int]]] = None,
                 stage_strides: Optional[Sequence[Sequence[int]]] = None,
                 lesion_extent: Optional[Sequence[float]] = None, min_cells: float = 2.5):
        super().__init__(alpha, temperature, stage, teacher_stage, student_widths, teacher_widths,
                         stage_strides, lesion_extent, min_cells)

    def forward(self, student, teachers, batch) -> Dict[str, Tensor]:
        fs, ft = self.stage_maps(student, teachers)
        m_t = ft.float().mean(0)
        m_s = self.to_teacher_width(fs.float().mean(0), m_t.shape[0])
        if m_s.shape[1:] != m_t.shape[1:]:
            m_s = F.interpolate(m_s[None], size=m_t.shape[1:], mode=_INTERP[m_t.dim() - 1], align_corners=False)[0]
        kl = _channel_kl(m_t.flatten(1), m_s.flatten(1), self.temperature)
        return {"image_kd": self.alpha * self.temperature ** 2 * kl}
