"""Shapes for synthetic cases, in voxel coordinates of the numpy array (any number of axes).

Ellipsoid masks and their boxes are computed for all L objects at once by broadcasting.
Boxes are inclusive ``[min, max]`` per axis, the convention of ``nnkd.ops.components``.
"""
from __future__ import annotations

import numpy as np


def ellipsoid_masks(shape: tuple[int, ...], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``(L, *shape)`` bool: voxel ``x`` is in ellipsoid l when ``sum_d ((x_d - c_ld) / r_ld)^2 <= 1``.

    centres, radii: ``(L, D)`` in voxels (D = len(shape)).
    """
    centres, radii = np.atleast_2d(centres).astype(float), np.atleast_2d(radii).astype(float)
    dist = np.zeros((len(centres), *shape))
    for d, n in enumerate(shape):  # one broadcast per axis (D <= 3)
        axis = np.arange(n).reshape((1,) + (1,) * d + (n,) + (1,) * (len(shape) - d - 1))
        dist = dist + ((axis - centres[:, d].reshape((-1,) + (1,) * len(shape)))
                       / radii[:, d].reshape((-1,) + (1,) * len(shape))) ** 2
    return dist <= 1.0


def normalised_distance(shape: tuple[int, ...], centre, radii) -> np.ndarray:
    """``shape`` float: the ellipsoid "radius" ``sqrt(sum_d ((x_d - c_d) / r_d)^2)`` of every voxel
    (1 on the surface of the ellipsoid with this centre and radii)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """``(L, 2, D)`` int inclusive boxes of ``(L, *spatial)`` masks; every mask must be non-empty."""
    n, *spatial = masks.shape
    boxes = np.zeros((n, 2, len(spatial)), dtype=int)
    for d in range(len(spatial)):
        present = masks.any(axis=tuple(a for a in range(1, masks.ndim) if a != d + 1))  # (L, S_d)
        boxes[:, 0, d] = present.argmax(axis=1)
        boxes[:, 1, d] = spatial[d] - 1 - present[:, ::-1].argmax(axis=1)
    return boxes


def uniform_in_ellipsoid(rng: np.random.Generator, n: int, centre, radii) -> np.ndarray:
    """``(n, D)`` points drawn uniformly inside the ellipsoid (centre, radii)."""
    centre, radii = np.asarray(centre, float), np.asarray(radii, float)
    direction = rng.normal(size=(n, len(centre)))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    scale = rng.random((n, 1)) ** (1.0 / len(centre))
    return centre + direction * scale * radii


def pick_separated(candidates: np.ndarray, radii: np.ndarray, gap: float) -> np.ndarray:
    """Indices of candidate centres kept greedily (in order) so that any two kept spheres,
    ``candidates[i]`` with radius ``radii[i]``, are at least ``gap`` voxels apart.

    candidates ``(K, D)``, radii ``(K,)``. Separated objects stay separate connected components.
    """
    dist = np.linalg.norm(candidates[:, None] - candidates[None], axis=-1)
    clear = dist >= radii[:, None] + radii[None] + gap  # (K, K) pairwise, computed once
    kept: list[int] = []
    for k in range(len(candidates)):  # greedy selection over a few dozen candidates, not a hot path
        if clear[k, kept].all():
            kept.append(k)
    return np.asarray(kept, dtype=int)
