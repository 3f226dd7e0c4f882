import math

import pytest
import torch
import torch.nn.functional as F

from nnkd.errors import NNKDError
from nnkd.hooks import build_loss
from nnkd.losses.logit import dkd_terms, tempered_kl
from nnkd.nets.outputs import NetOutputs


def _net(logits):
    return NetOutputs(seg=None, logits=logits, features=[])


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kd_by_hand(zs, zt, T):
    """T^2 * KL(p_t || p_s), batch mean, with plain Python floats."""
    total = 0.0
    for rs, rt in zip(zs, zt):
        ps, pt = _softmax(rs, T), _softmax(rt, T)
        total += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    return T * T * total / len(zs)


ZS = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
ZT = [[2.0, 0.5, 0.0], [0.0, 1.0, 1.5]]
ZT2 = [[-1.0, 0.0, 3.0], [1.0, 1.0, 0.0]]


def test_kd_hand_computed_2x3():
    got = build_loss("logit_kd")(_net(torch.tensor(ZS)), [_net(torch.tensor(ZT))], {})
    assert got.item() == pytest.approx(_kd_by_hand(ZS, ZT, 2.0), rel=1e-5)
    got4 = build_loss("logit_kd", T=4.0)(_net(torch.tensor(ZS)), [_net(torch.tensor(ZT))], {})
    assert got4.item() == pytest.approx(_kd_by_hand(ZS, ZT, 4.0), rel=1e-5)


def test_kd_zero_for_identical_logits_and_gradient_only_to_student():
    torch.manual_seed(0)
    z = torch.randn(4, 3)
    assert build_loss("logit_kd")(_net(z), [_net(z.clone())], {}).abs().item() < 1e-6
    zs = torch.randn(4, 3, requires_grad=True)
    zt = torch.randn(4, 3, requires_grad=True)
    build_loss("logit_kd")(_net(zs), [_net(zt)], {}).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None


def test_kd_fusion_modes():
    zs, t1, t2 = torch.tensor(ZS), _net(torch.tensor(ZT)), _net(torch.tensor(ZT2))
    # mean_prob: KL against the weighted mixture of tempered teacher probabilities (weights normalised)
    mixed = build_loss("logit_kd", fusion="mean_prob", teacher_weights=[1.0, 3.0])(_net(zs), [t1, t2], {})
    expected = 0.0
    for rs, r1, r2 in zip(ZS, ZT, ZT2):
        ps = _softmax(rs, 2.0)
        pt = [0.25 * a + 0.75 * b for a, b in zip(_softmax(r1, 2.0), _softmax(r2, 2.0))]
        expected += 4.0 * sum(b * math.log(b / a) for a, b in zip(ps, pt)) / 2
    assert mixed.item() == pytest.approx(expected, rel=1e-5)
    # sum: per-teacher KD times the (unnormalised) weights
    summed = build_loss("logit_kd", fusion="sum", teacher_weights=[1.0, 3.0])(_net(zs), [t1, t2], {})
    assert summed.item() == pytest.approx(_kd_by_hand(ZS, ZT, 2.0) + 3 * _kd_by_hand(ZS, ZT2, 2.0), rel=1e-5)
    # two identical teachers: mean_prob = the single-teacher loss
    same = build_loss("logit_kd")(_net(zs), [t1, t1], {})
    assert same.item() == pytest.approx(_kd_by_hand(ZS, ZT, 2.0), rel=1e-5)


def test_kd_mse_variant():
    zs, zt, zt2 = torch.tensor(ZS), torch.tensor(ZT), torch.tensor(ZT2)
    one = build_loss("logit_kd", variant="mse")(_net(zs), [_net(zt)], {})
    by_hand = sum((a - b) ** 2 for rs, rt in zip(ZS, ZT) for a, b in zip(rs, rt)) / 6
    assert one.item() == pytest.approx(by_hand, rel=1e-6)
    mean = build_loss("logit_kd", variant="mse", teacher_weights=[1, 1])(_net(zs), [_net(zt), _net(zt2)], {})
    torch.testing.assert_close(mean, F.mse_loss(zs, (zt + zt2) / 2))
    summed = build_loss("logit_kd", variant="mse", fusion="sum")(_net(zs), [_net(zt), _net(zt2)], {})
    torch.testing.assert_close(summed, F.mse_loss(zs, zt) + F.mse_loss(zs, zt2))


def test_kd_teacher_weights_checked_and_no_teacher_zero():
    with pytest.raises(NNKDError, match="teacher_weights has 1 entries for 2 teachers"):
        build_loss("logit_kd", teacher_weights=[1.0])(_net(torch.zeros(1, 3)), [_net(torch.zeros(1, 3))] * 2, {})
    with pytest.raises(NNKDError, match="teacher_weights has 3 entries for 2 teachers"):
        build_loss("logit_kd", teacher_weights=[1, 1, 1], teacher_widths=[[8], [8]])
    with pytest.raises(NNKDError, match="fusion must be"):
        build_loss("logit_kd", fusion="max")
    zs = torch.randn(2, 3, requires_grad=True)
    zero = build_loss("logit_kd")(_net(zs), [], {})
    zero.backward()
    assert zero.item() == 0 and zs.grad is not None


def _dkd_naive(zs, zt, y, alpha, beta, T):
    """DKD written directly from the paper, one case at a time."""
    total = 0.0
    for rs, rt, t in zip(zs.tolist(), zt.tolist(), y.tolist()):
        ps, pt = _softmax(rs, T), _softmax(rt, T)
        bs, bt = [ps[t], 1 - ps[t]], [pt[t], 1 - pt[t]]
        tckd = sum(b * math.log(b / a) for a, b in zip(bs, bt))
        hs = [p / (1 - ps[t]) for k, p in enumerate(ps) if k != t]
        ht = [p / (1 - pt[t]) for k, p in enumerate(pt) if k != t]
        nckd = sum(b * math.log(b / a) for a, b in zip(hs, ht))
        total += T * T * (alpha * tckd + beta * nckd)
    return total / len(y)


def test_dkd_matches_naive_implementation():
    torch.manual_seed(0)
    zs, zt, y = torch.randn(6, 5), torch.randn(6, 5) * 2, torch.randint(0, 5, (6,))
    out = build_loss("dkd")(_net(zs), [_net(zt)], {"class_target": y})
    assert set(out) == {"tckd", "nckd"}
    assert (out["tckd"] + out["nckd"]).item() == pytest.approx(_dkd_naive(zs, zt, y, 1.0, 8.0, 4.0), rel=1e-5)
    out2 = build_loss("dkd", alpha=0.5, beta=2.0, T=1.0)(_net(zs), [_net(zt)], {"class_target": y})
    assert (out2["tckd"] + out2["nckd"]).item() == pytest.approx(_dkd_naive(zs, zt, y, 0.5, 2.0, 1.0), rel=1e-5)


def test_dkd_decomposition_identity_and_gradient():
    """KD = TCKD + (1 - p_t[y]) * NCKD per case, so DKD(alpha=beta=1) >= KD, not equal."""
    torch.manual_seed(1)
    zs = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    zt, y, T = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 4, (8,)), 3.0
    tckd, nckd = dkd_terms(zs, zt, y, T)
    pt = F.softmax(zt / T, 1)
    kd = tempered_kl(zs, pt, T)
    pt_gt = pt.gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(kd, tckd + (1 - pt_gt) * nckd)
    assert ((tckd + nckd) > kd).all()
    (tckd + nckd).sum().backward()
    assert torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0


def test_dkd_stable_for_confident_logits_and_two_teachers_average():
    zs = torch.tensor([[40.0, 0.0, 0.0]], requires_grad=True)
    zt = torch.tensor([[50.0, -10.0, 0.0]])
    out = build_loss("dkd")(_net(zs), [_net(zt)], {"class_target": torch.tensor([0])})
    sum(out.values()).backward()
    assert all(torch.isfinite(v) for v in out.values()) and torch.isfinite(zs.grad).all()
    torch.manual_seed(2)
    zs, t1, t2, y = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), torch.randint(0, 3, (4,))
    both = build_loss("dkd")(_net(zs), [_net(t1), _net(t2)], {"class_target": y})
    single = [build_loss("dkd")(_net(zs), [_net(t)], {"class_target": y}) for t in (t1, t2)]
    for k in both:
        torch.testing.assert_close(both[k], (single[0][k] + single[1][k]) / 2)


def test_teacher_class_count_mismatch_is_a_clear_error():
    batch = {"class_target": torch.zeros(2).long()}
    for name in ("logit_kd", "dkd"):
        msg = rf"loss '{name}': teacher logits \(2, 4\) do not match the student's \(2, 3\)"
        with pytest.raises(NNKDError, match=msg):
            build_loss(name)(_net(torch.zeros(2, 3)), [_net(torch.zeros(2, 4))], batch)
