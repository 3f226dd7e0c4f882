"""Class activation maps on an encoder stage whose head is global average pooling + ``classify``.

All functions are ndim-generic (2D and 3D feature maps) and return detached maps: CAMs are
targets for relation labels, never part of the training graph.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nnkd.ops.precision import fp32


def minmax_normalise(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-image min-max scaling of ``(B, 1, *s)`` maps to [0, 1]; constant maps become 0."""
    flat = maps.flatten(1)
    lo = flat.min(1, keepdim=True).values
    rng = flat.max(1, keepdim=True).values - lo
    out = torch.where(rng > eps, (flat - lo) / rng.clamp_min(eps), torch.zeros_like(flat))
    return out.view_as(maps)


def grad_cam(features: Tensor, classify: Callable[[Tensor], Tensor], target: Tensor) -> Tensor:
    """Grad-CAM of class ``target`` on the stage that feeds a global-average-pooling head.

    features: ``(B, C, *s)``; classify: pooled ``(B, C)`` -> logits ``(B, K)``; target: ``(B,)``.
    Returns ``(B, 1, *s)`` in [0, 1]: ReLU(sum_k alpha_k A_k), min-max normalised per image.

    With a pooled head ``dy/dA_k(u) = dy/dpool_k / N`` for all N positions u, so the Grad-CAM
    weight ``alpha_k = mean_u dy/dA_k(u)`` is ``dy/dpool_k / N``. The gradient is taken on a
    detached pooled copy: cheap, independent of the caller's graph and of ``no_grad`` contexts,
    and valid for frozen (teacher) heads. Equals MONAI's ``GradCAM`` on that stage (whose default
    normaliser maps (min, max) to (1, 0); tests/test_monai_reference.py), which instead runs the
    whole network forward and backward through hooks: relation maps need it every training step,
    from features already computed.
    """
    # float32, outside autocast: the map is a sum of C signed products that mostly cancel, and its
    # min-max normalisation then magnifies what float16 rounding leaves
    with torch.autocast(features.device.type, enabled=False):
        feats = fp32(features.detach())
        n = feats[0, 0].numel()
        with torch.enable_grad():
            pooled = feats.flatten(2).mean(-1).requires_grad_(True)
            score = fp32(classify(pooled)).gather(1, target.long().view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, pooled)
        alpha = (grad.to(feats.dtype) / n).view(*grad.shape, *([1] * (feats.ndim - 2)))
        cam = F.relu((alpha * feats).sum(1, keepdim=True))
        return minmax_normalise(cam)


def _offsets(spatial_dims: int, dilations: Sequence[int]) -> Tensor:
    """``(K, D)`` long: every non-zero neighbour direction in {-1,0,1}^D times every dilation."""
    dirs = [o for o in itertools.product((-1, 0, 1), repeat=spatial_dims) if any(o)]
    return torch.tensor([[d * c for c in o] for d in dilations for o in dirs], dtype=torch.long)


def _neighbours(x: Tensor, offsets: Tensor) -> Tensor:
    """``(B, C, *s)`` -> ``(B, C, K, *s)``: value at ``u + offset_k`` (edges replicated)."""
    spatial = x.shape[2:]
    m = int(offsets.abs().max())
    padded = F.pad(x, [m] * (2 * len(spatial)), mode="replicate")
    views = []
    for off in offsets.tolist():  # a few dozen shifted views, not a loop over voxels
        idx = tuple(slice(m + o, m + o + s) for o, s in zip(off, spatial))
        views.append(padded[(slice(None), slice(None), *idx)])
    return torch.stack(views, 2)


def refine_cam(cam: Tensor, image: Tensor, dilations: Sequence[int] = (1, 2, 4, 8), iterations: int = 10,
               image_scale: float = 0.3, position_weight: float = 0.01) -> Tensor:
    """Pixel-adaptive refinement: propagate a CAM along image-intensity affinities.

    cam: ``(B, 1, *s)`` in [0, 1]; image: ``(B, C_img, *S)``, area-resampled to ``s`` (the
    refinement runs at the CAM's resolution). For each position u and each neighbour v at the
    given dilations, the affinity is ``softmax_v(-(|I_u - I_v| / (std_v I_v * image_scale))^2)``
    (averaged over image channels) plus ``position_weight`` times a softmax favouring near
    neighbours, renormalised to sum to 1; the CAM is then averaged ``iterations`` times with
    these weights (a convex combination, so values stay in [0, 1]) and min-max normalised again.
    """
    spatial = cam.shape[2:]
    img = F.interpolate(image.float(), size=tuple(spatial), mode="area")
    offsets = _offsets(len(spatial), dilations).to(cam.device)
    nb = _neighbours(img, offsets)  # (B, C, K, *s)
    std = nb.std(2, keepdim=True)
    aff = -((nb - img.unsqueeze(2)).abs() / (std + 1e-8) / image_scale).pow(2).mean(1)  # (B, K, *s)
    dist = offsets.float().norm(dim=1)
    pos = torch.softmax(-(dist / (dist.std() + 1e-8) / image_scale).pow(2), 0)
    kernel = torch.softmax(aff, 1) + position_weight * pos.view(1, -1, *([1] * len(spatial)))
    kernel = (kernel / kernel.sum(1, keepdim=True)).unsqueeze(1)  # (B, 1, K, *s)
    out = cam.detach().float()
    for _ in range(iterations):
        out = (_neighbours(out, offsets) * kernel).sum(2)
    return minmax_normalise(out)
