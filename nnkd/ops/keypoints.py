"""Lesion keypoints (CoMoTo): points on ground-truth lesion boxes and their encoder-stage features.

Coordinates are voxel indices of the full-resolution patch, in the tensor's spatial axis order
(the axes after ``(B, C)``). A lesion box is the inclusive bounding box ``[lo, hi]`` of a connected
component (full connectivity) of the union of the lesion labels.

Keypoint order: the ``K = 3**D`` points of a box are the grid ``{lo, mid, hi}`` per axis, with
``mid = (lo + hi) / 2``; point ``k`` takes, along axis ``d``, the value selected by the digit
``(k // 3**(D-1-d)) % 3`` (0 = lo, 1 = mid, 2 = hi), i.e. ``itertools.product`` order. In 2D that
is the 4 corners (k = 0, 2, 6, 8), the 4 edge midpoints (k = 1, 3, 5, 7) and the centre (k = 4);
in 3D the 27-point grid with the centre at k = 13.

Sampling convention: a stage map of size ``s`` computed from a patch of size ``S`` has stride
``r = S / s``; its cell ``j`` summarises voxels ``j*r .. (j+1)*r - 1``, so voxel ``i`` sits at
the continuous cell coordinate ``(i + 0.5) / r - 0.5``. That is exactly ``grid_sample`` with
``align_corners=False`` once voxel ``i`` is normalised as ``(2i + 1) / S - 1`` (the same
convention as ``F.interpolate(align_corners=False)``). Points within half a cell of the border
use ``padding_mode="border"`` so they are not blended with zeros.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nnkd.ops.components import component_boxes, regions


def lesion_mask(seg: Tensor, lesion_labels: Optional[Sequence[int]] = None) -> Tensor:
    """``seg`` ``(B, 1, *S)`` or ``(B, *S)`` integer labels -> ``(B, *S)`` bool lesion mask.

    ``lesion_labels=None`` counts every foreground label (> 0) as lesion.
    """
    if seg.dim() >= 3 and seg.shape[1] == 1:
        seg = seg[:, 0]
    if lesion_labels is None:
        return seg > 0
    return torch.isin(seg, torch.as_tensor(list(lesion_labels), device=seg.device, dtype=seg.dtype))


BoxSet = Tuple[Tensor, Tensor, Tensor]


def lesion_boxes(seg: Tensor, lesion_labels: Optional[Sequence[int]] = None) -> BoxSet:
    """Boxes of the lesions of a batch (the costly step: connected components at full resolution).

    Returns ``(boxes (R, 2, D) long, batch_of (R,) long, count (B,) long)``: inclusive
    ``[lo, hi]`` per box, the image of each box (non-decreasing), and the boxes per image.
    Functions below accept this triple as ``boxes=`` so one batch computes it once.
    """
    mask = lesion_mask(seg, lesion_labels)
    index, batch_of, count = regions(mask if mask.device.type == "cpu" else mask.long())
    return component_boxes(index, int(batch_of.numel())), batch_of, count


def box_keypoints(boxes: Tensor) -> Tensor:
    """``(R, 2, D)`` inclusive boxes -> ``(R, 3**D, D)`` float keypoints (order: module docstring)."""
    d = boxes.shape[-1]
    lo, hi = boxes[:, 0].float(), boxes[:, 1].float()
    levels = torch.stack([lo, (lo + hi) / 2, hi], 1)  # (R, 3, D)
    digits = torch.tensor(list(itertools.product(range(3), repeat=d)), device=boxes.device)  # (K, D)
    return levels.gather(1, digits[None].expand(boxes.shape[0], -1, -1))


def pad_per_image(values: Tensor, batch_of: Tensor, count: Tensor, min_len: int = 1) -> Tuple[Tensor, Tensor]:
    """Scatter per-box rows ``(R, ...)`` into ``(B, Rmax, ...)`` with a ``(B, Rmax)`` bool mask.

    ``batch_of`` must be non-decreasing (as :func:`lesion_boxes` returns it). ``Rmax`` is at
    least ``min_len`` so callers always get a (masked) slot to keep the graph connected.
    """
    b = count.shape[0]
    rmax = max(int(count.max()) if b else 0, min_len)
    starts = torch.cumsum(count, 0) - count
    rank = torch.arange(values.shape[0], device=values.device) - starts[batch_of]
    out = values.new_zeros((b, rmax, *values.shape[1:]))
    mask = torch.zeros((b, rmax), dtype=torch.bool, device=values.device)
    out[batch_of, rank] = values
    mask[batch_of, rank] = True
    return out, mask


def sample_points(feature: Tensor, points: Tensor, patch_size: Sequence[int]) -> Tensor:
    """Bilinear (trilinear in 3D) features at voxel coordinates of the full-resolution patch.

    feature: ``(B, C, *s)`` stage map; points: ``(B, P, D)`` voxel coordinates in a patch of
    size ``patch_size`` (``D`` ints). Returns ``(B, C, P)``.
    """
    b, c = feature.shape[:2]
    d, p = points.shape[-1], points.shape[1]
    size = torch.as_tensor(list(patch_size), dtype=torch.float32, device=points.device)
    grid = ((2 * points.float() + 1) / size - 1).flip(-1)  # grid_sample wants the last axis first
    grid = grid.view(b, *([1] * (d - 1)), p, d).to(feature.dtype)
    out = F.grid_sample(feature, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(b, c, p)


def lesion_point_features(feature: Tensor, seg: Tensor, lesion_labels: Optional[Sequence[int]] = None,
                          boxes: Optional[BoxSet] = None) -> Tuple[Tensor, Tensor]:
    """CoMoTo's ``P(x)``: keypoint features averaged over an image's lesion boxes.

    feature: ``(B, C, *s)``; seg: ``(B, 1, *S)`` full-resolution labels.
    Returns ``(P (B, C, K), valid (B,) bool)``; images without lesions have ``valid = False``
    and a zero ``P`` that still depends on ``feature``.
    """
    boxes, batch_of, count = lesion_boxes(seg, lesion_labels) if boxes is None else boxes
    spatial = seg.shape[-boxes.shape[-1]:]
    pts, mask = pad_per_image(box_keypoints(boxes), batch_of, count)  # (B, Rmax, K, D), (B, Rmax)
    b, rmax, k, d = pts.shape
    feats = sample_points(feature, pts.reshape(b, rmax * k, d), spatial).view(b, feature.shape[1], rmax, k)
    summed = (feats * mask[:, None, :, None].to(feats.dtype)).sum(2)
    return summed / count.clamp(min=1).to(feats.dtype)[:, None, None], count > 0


def box_cover(boxes: Tensor, batch_of: Tensor, batch: int, spatial: Sequence[int]) -> Tensor:
    """``(B, *S)`` bool: voxels inside at least one box of their image.

    Paints all boxes at once with a D-dimensional difference array (+-1 at the 2**D corners,
    then a cumulative sum along every axis), O(R * 2**D + B * prod(S)).
    """
    d = len(spatial)
    bits = torch.tensor(list(itertools.product((0, 1), repeat=d)), device=boxes.device)  # (2**D, D)
    corners = torch.where(bits.bool(), boxes[:, None, 1] + 1, boxes[:, None, 0])  # (R, 2**D, D)
    sign = (1 - 2 * (bits.sum(-1) % 2)).to(torch.int32)  # (-1)**(number of hi corners)
    diff = torch.zeros((batch, *[s + 1 for s in spatial]), dtype=torch.int32, device=boxes.device)
    index = (batch_of[:, None].expand_as(corners[..., 0]), *corners.unbind(-1))
    diff.index_put_(index, sign.expand(boxes.shape[0], -1), accumulate=True)
    for axis in range(1, d + 1):  # D (<= 3) axes
        diff = diff.cumsum(axis, dtype=torch.int32)
    return diff[(slice(None), *[slice(0, s) for s in spatial])] > 0


def background_points(seg: Tensor, num_points: int, lesion_labels: Optional[Sequence[int]] = None,
                      generator: Optional[torch.Generator] = None,
                      boxes: Optional[BoxSet] = None) -> Tuple[Tensor, Tensor]:
    """Up to ``num_points`` distinct random voxels per image outside every lesion box.

    Sampling is uniform without replacement over the voxels outside all boxes (random keys,
    top-k). ``generator`` must live on ``seg``'s device. Returns ``(points (B, K, D) long,
    valid (B, K) bool)``; ``valid`` is False where an image has fewer free voxels than K.
    """
    boxes, batch_of, count = lesion_boxes(seg, lesion_labels) if boxes is None else boxes
    b, spatial = count.shape[0], seg.shape[-boxes.shape[-1]:]
    cover = box_cover(boxes, batch_of, b, spatial).reshape(b, -1)
    keys = torch.rand(cover.shape, generator=generator, device=seg.device)
    keys = keys.masked_fill(cover, -1.0)
    vals, idx = keys.topk(min(num_points, cover.shape[1]), dim=1)
    size = torch.tensor(list(spatial), device=idx.device)
    strides = torch.flip(torch.cumprod(torch.flip(size, [0]), 0), [0]) // size  # row-major strides
    points = idx[..., None] // strides % size  # (torch.unravel_index is ~100x slower here on CPU)
    return points, vals >= 0


def background_point_features(feature: Tensor, seg: Tensor, num_points: int,
                              lesion_labels: Optional[Sequence[int]] = None,
                              generator: Optional[torch.Generator] = None,
                              boxes: Optional[BoxSet] = None) -> Tuple[Tensor, Tensor]:
    """Features at :func:`background_points`: ``(B, C, K)`` (zero at invalid points), ``valid (B, K)``."""
    points, valid = background_points(seg, num_points, lesion_labels, generator, boxes)
    feats = sample_points(feature, points, seg.shape[-points.shape[-1]:])
    return feats * valid[:, None].to(feats.dtype), valid


def training_lesion_extent(dataset, max_cases: int = 64, percentile: float = 5.0,
                           lesion_labels: Optional[Sequence[int]] = None) -> Optional[list]:
    """Per axis, the ``percentile`` of the lesion bounding-box sides (voxels) over the first ``max_cases``
    cases of an nnU-Net dataset (``identifiers``, ``load_case(k) -> (data, seg, ...)``); ``None``
    when they hold no lesion. Every foreground label counts as lesion unless ``lesion_labels``."""
    sides = []
    for k in list(dataset.identifiers)[:max_cases]:
        seg = torch.from_numpy(np.asarray(dataset.load_case(k)[1][:]).astype(np.int64))  # (1, *S)
        boxes, _, _ = lesion_boxes(seg[None].clamp_min(0), lesion_labels)
        if boxes.numel():
            sides.append((boxes[:, 1] - boxes[:, 0] + 1).numpy())
    if not sides:
        return None
    return [round(float(v), 2) for v in np.percentile(np.concatenate(sides), percentile, axis=0)]
