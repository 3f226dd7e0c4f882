import itertools

import pytest
import torch

from nnkd.ops.keypoints import (background_point_features, background_points, box_cover, box_keypoints,
                                lesion_boxes, lesion_point_features, sample_points)


def test_box_keypoints_2d_hand_computed():
    boxes = torch.tensor([[[2, 3], [4, 8]]])  # rows 2..4, cols 3..8
    expected = torch.tensor([[2, 3], [2, 5.5], [2, 8],
                             [3, 3], [3, 5.5], [3, 8],
                             [4, 3], [4, 5.5], [4, 8]])
    pts = box_keypoints(boxes)
    assert pts.shape == (1, 9, 2)
    torch.testing.assert_close(pts[0], expected)
    # corners 0, 2, 6, 8; centre 4; edge midpoints 1, 3, 5, 7
    assert pts[0, 4].tolist() == [3.0, 5.5]


def test_box_keypoints_3d_hand_computed():
    boxes = torch.tensor([[[1, 2, 3], [3, 6, 9]], [[0, 0, 0], [0, 0, 0]]])
    pts = box_keypoints(boxes)
    assert pts.shape == (2, 27, 3)
    assert pts[0, 0].tolist() == [1, 2, 3]
    assert pts[0, 13].tolist() == [2, 4, 6]  # centre
    assert pts[0, 26].tolist() == [3, 6, 9]
    assert pts[0, 5].tolist() == [1, 4, 9]  # digits (0, 1, 2)
    assert pts[0, 9].tolist() == [2, 2, 3]  # digits (1, 0, 0)
    levels = [(1, 2, 3), (2, 4, 6), (3, 6, 9)]
    ref = [[levels[i][0], levels[j][1], levels[k][2]] for i, j, k in itertools.product(range(3), repeat=3)]
    assert pts[0].tolist() == ref
    assert (pts[1] == 0).all()


def _seg():
    seg = torch.zeros(3, 1, 16, 16, dtype=torch.long)
    seg[0, 0, 2:5, 3:9] = 1
    seg[0, 0, 10:12, 10:15] = 2
    seg[2, 0, 6:9, 6:7] = 1
    seg[2, 0, 9, 7] = 1  # diagonal neighbour: same component (full connectivity)
    return seg


def test_lesion_boxes_and_label_filter():
    boxes, batch_of, count = lesion_boxes(_seg())
    assert count.tolist() == [2, 0, 1]
    assert batch_of.tolist() == [0, 0, 2]
    assert boxes.tolist() == [[[2, 3], [4, 8]], [[10, 10], [11, 14]], [[6, 6], [9, 7]]]
    boxes, _, count = lesion_boxes(_seg(), lesion_labels=[2])
    assert count.tolist() == [1, 0, 0] and boxes.tolist() == [[[10, 10], [11, 14]]]


def _ramp(coefs, patch, stride):
    """(1, C, *s) stage map whose cell value is linear in the voxel coordinate of the cell centre."""
    axes = [(torch.arange(p // r) + 0.5) * r - 0.5 for p, r in zip(patch, stride)]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([c0 + sum(c * g for c, g in zip(cs, grids)) for c0, *cs in coefs])[None]


def test_sampled_features_of_a_linear_ramp_2d_anisotropic_stride():
    patch, stride = (32, 16), (4, 2)
    coefs = [(1.0, 2.0, 0.0), (3.0, 0.0, -1.0)]  # channel c = c0 + a*y + b*x
    feat = _ramp(coefs, patch, stride).repeat(2, 1, 1, 1)
    seg = torch.zeros(2, 1, *patch, dtype=torch.long)
    seg[0, 0, 4:9, 3:8] = 1  # box (4,3)-(8,7)
    seg[0, 0, 20:27, 10:13] = 1  # box (20,10)-(26,12)
    p, valid = lesion_point_features(feat, seg)
    assert valid.tolist() == [True, False]
    pts = (box_keypoints(torch.tensor([[[4, 3], [8, 7]]])) + box_keypoints(torch.tensor([[[20, 10], [26, 12]]]))) / 2
    y, x = pts[0, :, 0], pts[0, :, 1]
    expected = torch.stack([1 + 2 * y, 3 - x])
    torch.testing.assert_close(p[0], expected)
    assert (p[1] == 0).all()


def test_sampled_features_of_a_linear_ramp_3d():
    patch, stride = (16, 16, 16), (2, 4, 4)
    feat = _ramp([(0.5, 1.0, -2.0, 3.0)], patch, stride)
    seg = torch.zeros(1, 1, *patch, dtype=torch.long)
    seg[0, 0, 3:8, 4:10, 5:12] = 1
    p, valid = lesion_point_features(feat, seg)
    pts = box_keypoints(torch.tensor([[[3, 4, 5], [7, 9, 11]]]))[0]
    expected = 0.5 + pts[:, 0] - 2 * pts[:, 1] + 3 * pts[:, 2]
    assert valid.tolist() == [True] and p.shape == (1, 1, 27)
    torch.testing.assert_close(p[0, 0], expected)


def test_sample_points_matches_interpolate_convention():
    # Sampling every voxel of the patch equals bilinear upsampling with align_corners=False.
    feat = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    grid = torch.stack(torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij"), -1).view(1, -1, 2)
    ref = torch.nn.functional.interpolate(feat, size=(16, 16), mode="bilinear", align_corners=False)
    out = sample_points(feat, grid, (16, 16)).view(1, 3, 16, 16)
    torch.testing.assert_close(out, ref)


def test_box_cover_matches_loop_reference():
    g = torch.Generator().manual_seed(1)
    for spatial in [(9, 7), (5, 6, 4)]:
        d = len(spatial)
        size = torch.tensor(spatial)
        lo = (torch.rand(6, d, generator=g) * size).long()
        hi = torch.minimum(lo + (torch.rand(6, d, generator=g) * 4).long(), size - 1)
        boxes = torch.stack([lo, hi], 1)
        batch_of = torch.tensor([0, 0, 0, 2, 2, 2])
        ref = torch.zeros(3, *spatial, dtype=torch.bool)
        for (l, h), b in zip(boxes.tolist(), batch_of.tolist()):
            ref[(b, *[slice(a, e + 1) for a, e in zip(l, h)])] = True
        assert torch.equal(box_cover(boxes, batch_of, 3, spatial), ref)


def test_background_points_outside_every_box_distinct_and_seeded():
    seg = _seg()
    pts, valid = background_points(seg, 9, generator=torch.Generator().manual_seed(3))
    assert pts.shape == (3, 9, 2) and valid.all()
    boxes, batch_of, _ = lesion_boxes(seg)
    for (lo, hi), b in zip(boxes.tolist(), batch_of.tolist()):
        inside = ((pts[b] >= torch.tensor(lo)) & (pts[b] <= torch.tensor(hi))).all(-1)
        assert not inside.any()
    for b in range(3):
        assert len({tuple(p) for p in pts[b].tolist()}) == 9
    again, _ = background_points(seg, 9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(pts, again)


def test_background_points_up_to_k_when_few_free_voxels():
    seg = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    seg[0, 0, :, :3] = 1  # box covers columns 0..2: 4 free voxels
    pts, valid = background_points(seg, 9, generator=torch.Generator().manual_seed(0))
    assert valid.sum().item() == 4
    assert sorted(map(tuple, pts[0][valid[0]].tolist())) == [(0, 3), (1, 3), (2, 3), (3, 3)]
    feat = torch.ones(1, 2, 4, 4)
    f, v = background_point_features(feat, seg, 9, generator=torch.Generator().manual_seed(0))
    assert f.shape == (1, 2, 9) and f.sum().item() == pytest.approx(8.0)  # zeros at the 5 missing points


def test_gradient_reaches_features_and_empty_batch_stays_connected():
    feat = torch.randn(3, 2, 4, 4, requires_grad=True)
    p, _ = lesion_point_features(feat, _seg())
    p.sum().backward()
    assert feat.grad[0].abs().sum() > 0 and feat.grad[1].abs().sum() == 0
    feat.grad = None
    p, valid = lesion_point_features(feat, torch.zeros(3, 1, 16, 16, dtype=torch.long))
    assert not valid.any() and (p == 0).all() and p.requires_grad


def test_background_points_3d_outside_the_box():
    seg = torch.zeros(1, 1, 5, 6, 7, dtype=torch.long)
    seg[0, 0, 1:5, 0:6, 2:7] = 1  # box covers all but 5*6*7 - 4*6*5 = 90 voxels
    pts, valid = background_points(seg, 27, generator=torch.Generator().manual_seed(0))
    assert pts.shape == (1, 27, 3) and valid.all()
    inside = ((pts[0] >= torch.tensor([1, 0, 2])) & (pts[0] <= torch.tensor([4, 5, 6]))).all(-1)
    assert not inside.any() and (pts[0] < torch.tensor([5, 6, 7])).all()
    assert len({tuple(p) for p in pts[0].tolist()}) == 27
