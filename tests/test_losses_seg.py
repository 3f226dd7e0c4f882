"""seg_kd: voxel-wise tempered KL on segmentation logits, against a numpy computation."""
import numpy as np
import pytest
import torch

from nnkd.errors import NNKDError
from nnkd.hooks import build_loss
from nnkd.losses.seg import deep_supervision_weights
from nnkd.nets.outputs import NetOutputs


def _net(seg):
    return NetOutputs(seg=seg, logits=None, features=[])


def _np_softmax(z, T):
    e = np.exp(z / T - (z / T).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _np_kd(zs, pt, T):
    """T^2 * KL(p_t || softmax(z_s/T)) per voxel (class axis 1), mean over cases and voxels, in float64."""
    ps = _np_softmax(zs, T)
    return T * T * float((pt * (np.log(pt) - np.log(ps))).sum(1).mean())


def _np_pool(p, factor):
    """(B, S, X, Y) -> mean over factor x factor blocks."""
    b, s, x, y = p.shape
    return p.reshape(b, s, x // factor, factor, y // factor, factor).mean((3, 5))


RNG = np.random.default_rng(0)
ZS = RNG.normal(size=(2, 3, 4, 4))
ZT = RNG.normal(size=(2, 3, 4, 4)) * 2
ZT2 = RNG.normal(size=(2, 3, 4, 4))


def test_voxel_kd_matches_numpy():
    for T in (1.0, 2.0, 4.0):
        got = build_loss("seg_kd", T=T)(_net(torch.tensor(ZS)), [_net(torch.tensor(ZT))], {})
        assert got.item() == pytest.approx(_np_kd(ZS, _np_softmax(ZT, T), T), rel=1e-10)


def test_3d_and_float32():
    zs, zt = RNG.normal(size=(1, 2, 2, 3, 4)), RNG.normal(size=(1, 2, 2, 3, 4))
    got = build_loss("seg_kd")(_net(torch.tensor(zs, dtype=torch.float32)),
                               [_net(torch.tensor(zt, dtype=torch.float32))], {})
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_np_kd(zs, _np_softmax(zt, 2.0), 2.0), rel=1e-5)


def test_zero_when_student_equals_teacher_and_positive_otherwise():
    loss = build_loss("seg_kd")
    assert loss(_net(torch.tensor(ZT)), [_net(torch.tensor(ZT))], {}).item() == pytest.approx(0.0, abs=1e-12)
    assert loss(_net(torch.tensor(ZS)), [_net(torch.tensor(ZT))], {}).item() > 0.01


def test_gradient_reaches_student_only():
    zs = torch.tensor(ZS, requires_grad=True)
    zt = torch.tensor(ZT, requires_grad=True)
    build_loss("seg_kd")(_net(zs), [_net(zt)], {}).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None  # the teacher is detached
    # descending the gradient lowers the loss
    loss = build_loss("seg_kd")
    before = loss(_net(torch.tensor(ZS)), [_net(torch.tensor(ZT))], {}).item()
    after = loss(_net(torch.tensor(ZS) - 0.5 * zs.grad), [_net(torch.tensor(ZT))], {}).item()
    assert after < before


def test_deep_supervision_weighting():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])  # nnU-Net: 1, 1/2, (1/4 -> 0)
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    T = 2.0
    zs_half = RNG.normal(size=(2, 3, 2, 2))
    zs_quarter = RNG.normal(size=(2, 3, 1, 1))
    pt = _np_softmax(ZT, T)
    want = 4 / 7 * _np_kd(ZS, pt, T) + 2 / 7 * _np_kd(zs_half, _np_pool(pt, 2), T) \
        + 1 / 7 * _np_kd(zs_quarter, _np_pool(pt, 4), T)
    coarsest = RNG.normal(size=(2, 3, 1, 1))  # weight 0, as in nnU-Net
    student = _net([torch.tensor(a) for a in (ZS, zs_half, zs_quarter, coarsest)])
    got = build_loss("seg_kd", T=T)(student, [_net(torch.tensor(ZT))], {})
    assert got.item() == pytest.approx(want, rel=1e-10)
    full = build_loss("seg_kd", T=T, deep_supervision="full")(student, [_net(torch.tensor(ZT))], {})
    assert full.item() == pytest.approx(_np_kd(ZS, pt, T), rel=1e-10)
    # a teacher with deep supervision on is read at its full resolution
    teacher_ds = _net([torch.tensor(ZT), torch.tensor(zs_half)])
    assert build_loss("seg_kd", T=T)(student, [teacher_ds], {}).item() == pytest.approx(want, rel=1e-10)


def test_teacher_weights_fuse_tempered_probabilities():
    T = 2.0
    p1, p2 = _np_softmax(ZT, T), _np_softmax(ZT2, T)
    teachers = [_net(torch.tensor(ZT)), _net(torch.tensor(ZT2))]
    got = build_loss("seg_kd", T=T, teacher_weights=[3.0, 1.0])(_net(torch.tensor(ZS)), teachers, {})
    assert got.item() == pytest.approx(_np_kd(ZS, 0.75 * p1 + 0.25 * p2, T), rel=1e-10)
    summed = build_loss("seg_kd", T=T, fusion="sum", teacher_weights=[3.0, 1.0])(_net(torch.tensor(ZS)), teachers, {})
    assert summed.item() == pytest.approx(3 * _np_kd(ZS, p1, T) + _np_kd(ZS, p2, T), rel=1e-10)
    equal = build_loss("seg_kd", T=T)(_net(torch.tensor(ZS)), teachers, {})
    assert equal.item() == pytest.approx(_np_kd(ZS, 0.5 * p1 + 0.5 * p2, T), rel=1e-10)


def test_no_teacher_gives_a_connected_zero():
    zs = torch.tensor(ZS, requires_grad=True)
    got = build_loss("seg_kd")(_net([zs, zs[:, :, ::2, ::2]]), [], {})
    assert got.item() == 0.0 and got.requires_grad


def test_refusals():
    with pytest.raises(NNKDError) as e:
        build_loss("seg_kd", T=0, fusion="max", deep_supervision="all")
    msg = str(e.value)
    assert "'seg_kd'" in msg and "T must be > 0" in msg and "fusion" in msg and "deep_supervision" in msg
    with pytest.raises(NNKDError, match="teacher_weights must be > 0"):
        build_loss("seg_kd", teacher_weights=[1.0, 0.0])
    with pytest.raises(NNKDError, match=r"teacher segmentation logits \(2, 2, 4, 4\) do not match the student's"):
        build_loss("seg_kd")(_net(torch.tensor(ZS)), [_net(torch.tensor(ZT[:, :2]))], {})


def test_autocast_runs_in_float32():
    zs = torch.tensor(ZS, dtype=torch.float32)
    zt = torch.tensor(ZT, dtype=torch.float32)
    ref = build_loss("seg_kd")(_net(zs), [_net(zt)], {})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = build_loss("seg_kd")(_net(zs), [_net(zt)], {})
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=1e-6)
