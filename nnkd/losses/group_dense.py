"""GKD-Den (PaGKD): relation-masked cross-attention reconstruction between same-class images.

Every ordered pair (m student image, n teacher image) of the same class is one batch entry:
all pairs of all classes go through one batched matmul per direction. Registration lives in
:mod:`nnkd.losses.group`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nnkd.ops.cam import grad_cam, refine_cam as pixel_adaptive_refinement

IGNORE, BACKGROUND, LESION = -1, 0, 1
RELATION_SOURCES = ("cam", "mask")


def threshold_relations(maps: Tensor, lesion: float = 0.7, background: float = 0.3) -> Tensor:
    """``(B, 1, *s)`` maps in [0, 1] -> ``(B, N)`` long: 1 above ``lesion``, 0 below
    ``background``, -1 (ignore) in between."""
    flat = maps.flatten(1)
    # background wins where both hold (only with lesion < background), as in sequential assignment
    label = torch.where(flat > lesion, LESION, IGNORE)
    return torch.where(flat < background, BACKGROUND, label).long()


def mask_relations(seg: Tensor, spatial) -> Tensor:
    """Lesion masks ``(B, 1, *S)`` nearest-downsampled to ``spatial`` -> ``(B, N)`` long in {0, 1}."""
    small = F.interpolate(seg.float(), size=tuple(spatial), mode="nearest")
    return (small.flatten(1) > 0).long()


def relation_mask(lab_q: Tensor, lab_k: Tensor) -> Tensor:
    """``M`` ``(P, N, M)``: 1 where labels agree (neither ignore), 0.5 where either is ignore, else 0.

    lab_q ``(P, N)``, lab_k ``(P, M)`` with values in {-1 ignore, 0, 1}.
    """
    q, k = lab_q[:, :, None], lab_k[:, None, :]
    ignore = (q == IGNORE) | (k == IGNORE)
    return torch.where(ignore, 0.5, (q == k).to(torch.float32))


def masked_relation_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float = 1.0):
    """``r = softmax_v(M * (q k^T) * scale) v`` with ``M == 0`` entries excluded (-inf).

    q ``(P, N, d)``, k/v ``(P, M, d)``, mask ``(P, N, M)``. A row u with no admissible key
    (all ``M[u, :] == 0``) gets ``r_u = 0`` and ``row_valid[u] = False`` instead of NaN.
    Returns ``r`` ``(P, N, d)`` and ``row_valid`` ``(P, N)``.
    """
    mask = mask.float()
    allowed = mask > 0
    row_valid = allowed.any(-1)
    # float32 even under autocast: unscaled dot products of d=128 tokens overflow float16
    with torch.autocast(q.device.type, enabled=False):
        q = q.float() if scale == 1 else q.float() * scale
        # -inf on excluded entries; fully masked rows keep finite logits (their weights are zeroed
        # below): no NaN in value or grad. One fused pass: logits = fill + (q k^T) * M.
        fill = torch.where(allowed | ~row_valid[..., None], 0.0, float("-inf"))
        logits = torch.addcmul(fill, torch.bmm(q, k.float().transpose(1, 2)), mask)
        r = torch.bmm(torch.softmax(logits, -1), v.float()) * row_valid[..., None]
    return r, row_valid


def reconstruction_loss(r: Tensor, target: Tensor, row_valid: Tensor) -> Tensor:
    """``1 - cos(vec r, vec target)`` per pair over its valid rows: ``(P, N, d)`` -> ``(P,)``."""
    keep = row_valid[..., None].float()
    return 1 - F.cosine_similarity((r.float() * keep).flatten(1), (target.float() * keep).flatten(1), dim=1)


class GroupDenseLoss(nn.Module):
    """Relation labels per modality + both-direction masked reconstruction (GKD-Den).

    Options (plan params of ``pagkd`` / ``gkd_den``):
    relation_source ("cam": Grad-CAM of the true class on the distilled stage | "mask": lesion
    masks, nearest-downsampled), lesion_threshold (0.7), background_threshold (0.3),
    refine_cam (False: pixel-adaptive refinement of the CAMs, needs the images in the batch),
    refine_dilations ((1, 2, 4, 8)), refine_iterations (10), scale_logits (False: 1/sqrt(d)),
    qk_projections (False: learnable W_q, W_k shared by both directions; the reconstruction
    target stays the unprojected token map, the space of v), w_den (1.0: weight applied here).
    """

    def __init__(self, embed_dim: int, relation_source: str = "cam", lesion_threshold: float = 0.7,
                 background_threshold: float = 0.3, refine_cam: bool = False,
                 refine_dilations=(1, 2, 4, 8), refine_iterations: int = 10, scale_logits: bool = False,
                 qk_projections: bool = False, w_den: float = 1.0):
        super().__init__()
        if relation_source not in RELATION_SOURCES:
            raise ValueError(f"relation_source {relation_source!r}; known: {', '.join(RELATION_SOURCES)}")
        self.relation_source = relation_source
        self.lesion_threshold, self.background_threshold = lesion_threshold, background_threshold
        self.refine_cam, self.refine_dilations = refine_cam, tuple(refine_dilations)
        self.refine_iterations = refine_iterations
        self.scale = 1 / math.sqrt(embed_dim) if scale_logits else 1.0
        self.w_q = nn.Linear(embed_dim, embed_dim) if qk_projections else nn.Identity()
        self.w_k = nn.Linear(embed_dim, embed_dim) if qk_projections else nn.Identity()
        self.weight = w_den

    def relations(self, features: Tensor, classify, target: Tensor, seg: Optional[Tensor],
                  image: Optional[Tensor]) -> Tensor:
        """Relation labels ``(B, N)`` in {-1, 0, 1} of one modality's map of the distilled stage ``(B, C, *s)``."""
        if self.relation_source == "mask":
            return mask_relations(seg, features.shape[2:])
        cam = grad_cam(features, classify, target)
        if self.refine_cam:
            cam = pixel_adaptive_refinement(cam, image, self.refine_dilations, self.refine_iterations)
        return threshold_relations(cam, self.lesion_threshold, self.background_threshold)

    def _direction(self, q: Tensor, k: Tensor, v: Tensor, target: Tensor, mask: Tensor, cls_idx: Tensor,
                   num_groups: int) -> Tensor:
        """Sum over classes of the mean reconstruction loss over the class's pairs (those with a valid row)."""
        r, row_valid = masked_relation_attention(q, k, v, mask, self.scale)
        loss = reconstruction_loss(r, target, row_valid)
        valid = row_valid.any(1).to(loss.dtype)
        total = loss.new_zeros(num_groups).index_add(0, cls_idx, loss * valid)
        count = loss.new_zeros(num_groups).index_add(0, cls_idx, valid)
        return (total / count.clamp_min(1)).sum()

    def forward(self, tok_s: Tensor, y_s: Tensor, rel_s: Tensor, tok_t: Tensor, y_t: Tensor,
                rel_t: Tensor, classes: Tensor) -> dict:
        """Weighted ``{"den"}``: tokens ``(B, N, d)`` / ``(B_t, M, d)``, labels, relations ``(., N)``."""
        keep = torch.isin(y_s, classes)
        m, n = ((y_s[:, None] == y_t[None, :]) & keep[:, None]).nonzero(as_tuple=True)
        cls_idx = (y_s[m, None] == classes[None, :]).long().argmax(1)  # pair -> group index
        mask = relation_mask(rel_s[m], rel_t[n])  # (P, N, M)
        g = classes.numel()
        q_s, k_s, q_t, k_t = self.w_q(tok_s), self.w_k(tok_s), self.w_q(tok_t), self.w_k(tok_t)
        # student image m queries teacher image n (reconstructs m from n), then the reverse
        student_queries = self._direction(q_s[m], k_t[n], tok_t[n], tok_s[m], mask, cls_idx, g)
        # (the transposed mask, laid out contiguously: element-wise passes over strided memory are slow)
        teacher_queries = self._direction(q_t[n], k_s[m], tok_s[m], tok_t[n], mask.transpose(1, 2).contiguous(),
                                          cls_idx, g)
        return {"den": self.weight * (student_queries + teacher_queries)}
