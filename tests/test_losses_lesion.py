import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnkd.hooks import build_loss
from nnkd.losses.lesion import resolve_stage
from nnkd.nets.outputs import NetOutputs
from nnkd.ops.keypoints import box_keypoints

S = 8  # patch size; the single stage has stride 1, so sampled values are exact


def _out(*features):
    return NetOutputs(seg=None, logits=None, features=list(features))


def _box_images(inside, outside, has_lesion):
    """(B, C, S, S) maps equal to inside[b] in the box (2..4, 3..5) and outside[b] elsewhere, + seg."""
    inside, outside = torch.tensor(inside, dtype=torch.float32), torch.tensor(outside, dtype=torch.float32)
    b, c = inside.shape
    feat = outside[:, :, None, None].repeat(1, 1, S, S)
    seg = torch.zeros(b, 1, S, S, dtype=torch.long)
    for i in range(b):
        if has_lesion[i]:
            feat[i, :, 2:5, 3:6] = inside[i][:, None, None]
            seg[i, 0, 2:5, 3:6] = 1
    return feat.requires_grad_(), seg


def test_resolve_stage():
    assert resolve_stage("auto", 8) == 5  # stride 32 of a deep 2D encoder
    assert resolve_stage("auto", 5) == 4  # deepest stride 16: the deepest stage
    assert resolve_stage(-1, 4) == 3 and resolve_stage(2, 4) == 2
    with pytest.raises(ValueError, match="stage"):
        resolve_stage(4, 4)


def test_impa_zero_for_identical_lesions_and_orthogonal_background():
    feat, seg = _box_images([[1, 0], [1, 0]], [[0, 1], [0, 2]], [True, True])
    out = build_loss("impa")(_out(feat), [], {"seg_target": seg})
    assert out["impa_align"].item() == pytest.approx(0, abs=1e-6)
    assert out["impa_background"].item() == pytest.approx(0, abs=1e-6)
    assert out["n_impa_no_lesion"].item() == 0 and not out["n_impa_no_lesion"].requires_grad


def test_impa_known_cosines_and_gradient():
    r = 1 / math.sqrt(2)
    inside = [[1, 0], [0, 1], [1, 1], [5, 5]]
    outside = [[1, 0], [-1, 0], [0, 1], [0, -1]]
    feat, seg = _box_images(inside, outside, [True, True, True, False])  # image 3: no lesion
    out = build_loss("impa", beta=2.0)(_out(feat), [], {"seg_target": seg})
    # lesion images 0..2: cos(a0,a1)=0, cos(a0,a2)=cos(a1,a2)=r; 6 ordered pairs b != b'
    align = (2 * 1 + 4 * (1 - r)) / 6
    # relu(cos(a_b, o_b')) for b in 0..2, b' in 0..3: a0 -> 1,0,0,0; a1 -> 0,0,1,0; a2 -> r,0,r,0
    background = (1 + 1 + 2 * r) / 12
    assert out["impa_align"].item() == pytest.approx(2 * align, rel=1e-5)
    assert out["impa_background"].item() == pytest.approx(2 * background, rel=1e-5)
    (out["impa_align"] + out["impa_background"]).backward()
    assert feat.grad[:3].abs().sum() > 0


def test_impa_without_lesions_is_a_connected_zero_and_counted():
    feat = torch.randn(2, 3, S, S, requires_grad=True)
    out = build_loss("impa")(_out(feat), [], {"seg_target": torch.zeros(2, 1, S, S, dtype=torch.long)})
    assert out["n_impa_no_lesion"].item() == 1
    total = out["impa_align"] + out["impa_background"]
    assert total.item() == 0 and total.requires_grad
    total.backward()


def _ramp_images(coefs, boxes, b_lesion):
    """Stride-1 maps c0 + a*y + b*x per channel; lesion boxes given per image (or none)."""
    y, x = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    feat = torch.stack([c0 + a * y + b * x for c0, a, b in coefs])[None].repeat(len(b_lesion), 1, 1, 1)
    seg = torch.zeros(len(b_lesion), 1, S, S, dtype=torch.long)
    for i, (lo, hi) in enumerate(boxes):
        if b_lesion[i]:
            seg[i, 0, lo[0]:hi[0] + 1, lo[1]:hi[1] + 1] = 1
    return feat, seg


def _hand_kl(p_t, p_s, t, alpha):
    p = np.exp(p_t / t) / np.exp(p_t / t).sum(-1, keepdims=True)
    q = np.exp(p_s / t) / np.exp(p_s / t).sum(-1, keepdims=True)
    return alpha * t * t * np.mean(np.sum(p * np.log(p / q), -1))


def test_lskd_equals_hand_computed_kl_with_identity_w():
    boxes = [((1, 1), (3, 5)), ((2, 0), (6, 2))]
    t_coefs, s_coefs = [(0.0, 1.0, 2.0), (1.0, -3.0, 0.5)], [(0.0, 2.0, -1.0), (0.0, 0.0, 4.0)]
    ft, seg_t = _ramp_images(t_coefs, boxes, [True, True])
    fs, seg_s = _ramp_images(s_coefs, boxes[::-1], [True, False])  # student image 1: no lesion, left out
    fs.requires_grad_()
    ft.requires_grad_()
    loss = build_loss("lskd", spatial_dims=2)
    out = loss(_out(fs), [_out(ft)], {"seg_target": seg_s, "teacher_seg_target": [seg_t]})
    kp = [box_keypoints(torch.tensor([b]))[0].numpy() for b in boxes]  # (9, 2) each
    teacher_pts = (kp[0] + kp[1]) / 2
    student_pts = kp[1]
    p_t = np.stack([c0 + a * teacher_pts[:, 0] + b * teacher_pts[:, 1] for c0, a, b in t_coefs])
    p_s = np.stack([c0 + a * student_pts[:, 0] + b * student_pts[:, 1] for c0, a, b in s_coefs])
    assert out["lskd"].item() == pytest.approx(_hand_kl(p_t, p_s, 4.0, 2.0), rel=1e-5)
    assert out["n_lskd_no_lesion_student"].item() == 0 and out["n_lskd_no_lesion_teacher"].item() == 0
    out["lskd"].backward()
    assert fs.grad.abs().sum() > 0
    assert loss.point_map.weight.grad.abs().sum() > 0
    assert ft.grad is None


def test_lskd_zero_when_student_equals_teacher():
    feat, seg = _ramp_images([(0.0, 1.0, 2.0), (1.0, -1.0, 0.0)], [((1, 1), (3, 5)), ((2, 2), (5, 6))], [True, True])
    loss = build_loss("lskd", spatial_dims=2)
    out = loss(_out(feat), [_out(feat.clone())], {"seg_target": seg, "teacher_seg_target": [seg]})
    assert out["lskd"].item() == pytest.approx(0, abs=1e-6)


def test_lskd_projection_when_widths_differ_and_no_lesion_zero():
    fs = torch.randn(2, 3, S, S, requires_grad=True)
    ft = torch.randn(2, 2, 4, 4)
    seg = torch.zeros(2, 1, S, S, dtype=torch.long)
    seg[0, 0, 2:5, 2:6] = 1
    loss = build_loss("lskd", spatial_dims=2, stage=-1, student_widths=[3], teacher_widths=[[2]])
    assert loss.proj is not None and loss.proj.weight.shape == (2, 3)
    out = loss(_out(fs), [_out(ft)], {"seg_target": seg, "teacher_seg_target": [seg]})
    out["lskd"].backward()
    assert loss.proj.weight.grad.abs().sum() > 0
    empty = torch.zeros_like(seg)
    out = loss(_out(fs), [_out(ft)], {"seg_target": seg, "teacher_seg_target": [empty]})
    assert out["lskd"].item() == 0 and out["lskd"].requires_grad
    assert out["n_lskd_no_lesion_teacher"].item() == 1 and out["n_lskd_no_lesion_student"].item() == 0


def test_lskd_width_mismatch_without_widths_is_a_clear_error():
    seg = torch.zeros(1, 1, S, S, dtype=torch.long)
    seg[0, 0, 2:5, 2:6] = 1
    loss = build_loss("lskd", spatial_dims=2)
    with pytest.raises(ValueError, match="student_widths"):
        loss(_out(torch.randn(1, 3, S, S)), [_out(torch.randn(1, 2, S, S))],
             {"seg_target": seg, "teacher_seg_target": [seg]})


def test_lskd_3d_point_count():
    seg = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    seg[0, 0, 2:5, 2:6, 1:4] = 1
    loss = build_loss("lskd", spatial_dims=3)
    assert loss.point_map.weight.shape == (27, 27)
    out = loss(_out(torch.randn(1, 2, 4, 4, 4)), [_out(torch.randn(1, 2, 2, 2, 2))],
               {"seg_target": seg, "teacher_seg_target": [seg]})
    assert out["lskd"].item() > 0


def test_image_kd_hand_computed_with_resampling():
    g = torch.Generator().manual_seed(0)
    ft = torch.randn(2, 2, 2, 2, generator=g)
    fs = torch.randn(3, 2, 4, 4, generator=g, requires_grad=True)
    out = build_loss("image_kd")(_out(fs), [_out(ft)], {})
    # bilinear 4 -> 2 with align_corners=False averages 2x2 blocks
    m_s = F.avg_pool2d(fs.detach().mean(0, keepdim=True), 2)[0].flatten(1).numpy()
    m_t = ft.mean(0).flatten(1).numpy()
    assert out["image_kd"].item() == pytest.approx(_hand_kl(m_t, m_s, 4.0, 2.0), rel=1e-5)
    out["image_kd"].backward()
    assert fs.grad.abs().sum() > 0
    same = build_loss("image_kd")(_out(ft), [_out(ft.clone())], {})
    assert same["image_kd"].item() == pytest.approx(0, abs=1e-6)
