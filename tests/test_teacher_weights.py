"""The plan's per-teacher ``weight`` reaches every multi-teacher loss (hand-computed values)."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nnkd.errors import NNKDError
from nnkd.hooks import build_loss, lookup
from nnkd.nets.outputs import NetOutputs
from nnkd.plan import validate_plan
from nnkd.trainers.distill import nnKDTrainerDistill

ZS = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
ZT1 = [[2.0, 0.5, 0.0], [0.0, 1.0, 1.5]]
ZT2 = [[-1.0, 0.0, 3.0], [1.0, 1.0, 0.0]]


def _net(logits=None, features=None):
    return NetOutputs(seg=None, logits=logits, features=features or [])


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _fused_kd_by_hand(zs, zts, weights, T):
    """T^2 KL(sum_i w_i softmax(z_ti/T) || softmax(z_s/T)) with normalised weights, batch mean, plain floats."""
    w = [x / sum(weights) for x in weights]
    total = 0.0
    for b, rs in enumerate(zs):
        ps = _softmax(rs, T)
        pt = [sum(wi * _softmax(zt[b], T)[k] for wi, zt in zip(w, zts)) for k in range(len(rs))]
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    return T * T * total / len(zs)


def _trainer_context(weights):
    """What nnKDTrainerDistill passes to loss constructors for a plan with these teacher weights."""
    plan = {"teachers": [{"weight": w} for w in weights]}
    fake = SimpleNamespace(teachers=[SimpleNamespace(stage_widths=[4, 8])] * len(weights), kd_plan=plan,
                           _bare_network=lambda: SimpleNamespace(stage_widths=[4, 8]), _lesion_context=lambda: {})
    return nnKDTrainerDistill.loss_context_extras(fake)


def _build_like_trainer(name, weights, **params):
    """Build a loss the way the trainer does: context filtered by the factory's signature, plan params on top."""
    import inspect

    factory = lookup("losses", name)
    ctx = dict(_trainer_context(weights), num_classes=3, spatial_dims=2)
    named = set(inspect.signature(factory).parameters)
    return build_loss(name, **{k: v for k, v in ctx.items() if k in named}, **params)


def test_trainer_passes_plan_teacher_weights():
    assert _trainer_context([0.3, 0.7])["teacher_weights"] == [0.3, 0.7]


def test_logit_kd_uses_plan_weights_hand_computed():
    zs, t1, t2 = torch.tensor(ZS), torch.tensor(ZT1), torch.tensor(ZT2)
    loss = _build_like_trainer("logit_kd", [0.3, 0.7], T=2.0)
    got = float(loss(_net(zs), [_net(t1), _net(t2)], {}))
    assert got == pytest.approx(_fused_kd_by_hand(ZS, [ZT1, ZT2], [0.3, 0.7], 2.0), rel=1e-5)
    # the equal-weight value differs: a loss that ignored the weights would fail the line above
    assert abs(got - _fused_kd_by_hand(ZS, [ZT1, ZT2], [1, 1], 2.0)) > 1e-3


def test_dkd_weighted_mean_over_teachers():
    from nnkd.losses.logit import dkd_terms

    zs, zt = torch.tensor(ZS), torch.tensor([ZT1, ZT2])
    y = torch.tensor([0, 2])
    loss = _build_like_trainer("dkd", [0.3, 0.7])
    out = loss(_net(zs), [_net(zt[0]), _net(zt[1])], {"class_target": y})
    per = [dkd_terms(zs, zt[i], y, 4.0) for i in range(2)]
    torch.testing.assert_close(out["tckd"], 0.3 * per[0][0].mean() + 0.7 * per[1][0].mean())
    torch.testing.assert_close(out["nckd"], 8.0 * (0.3 * per[0][1].mean() + 0.7 * per[1][1].mean()))


def test_fitnet_and_at_weighted_mean_over_teachers():
    torch.manual_seed(0)
    fs, t1, t2 = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    fit = _build_like_trainer("fitnet", [0.3, 0.7])
    got = fit(_net(features=[None, fs]), [_net(features=[None, t1]), _net(features=[None, t2])], {})
    expected = 0.3 * F.mse_loss(fit.adapters[0](fs), t1) + 0.7 * F.mse_loss(fit.adapters[1](fs), t2)
    torch.testing.assert_close(got, expected)
    at = _build_like_trainer("at", [0.3, 0.7], stages=[-1])
    single = [build_loss("at", stages=[-1])(_net(features=[None, fs]), [_net(features=[None, t])], {}) for t in (t1, t2)]
    got = at(_net(features=[None, fs]), [_net(features=[None, t1]), _net(features=[None, t2])], {})
    torch.testing.assert_close(got, 0.3 * single[0] + 0.7 * single[1])


def test_region_graph_weighted_mean_of_teacher_losses():
    torch.manual_seed(1)
    seg = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    seg[:, :, 2:7, 2:7], seg[:, :, 9:14, 3:8], seg[:, :, 4:12, 10:15] = 1, 2, 1
    fs, t1, t2 = (torch.randn(2, 8, 16, 16) for _ in range(3))
    loss = _build_like_trainer("region_graph", [0.3, 0.7], stage=-1)
    out = loss(_net(features=[None, fs]), [_net(features=[None, t1]), _net(features=[None, t2])], {"seg_target": seg})
    for i, t in enumerate((t1, t2)):
        one = build_loss("region_graph", student_widths=[4, 8], teacher_widths=[[4, 8]], stage=-1)
        one.projections[0].load_state_dict(loss.projections[i].state_dict())
        single = one(_net(features=[None, fs]), [_net(features=[None, t])], {"seg_target": seg})
        if i == 0:
            expected = {k: 0.3 * single[k] for k in ("node", "edge", "gw")}
        else:
            expected = {k: expected[k] + 0.7 * single[k] for k in expected}
    for k in expected:
        torch.testing.assert_close(out[k], expected[k])


def test_weights_must_be_positive_and_one_per_teacher():
    with pytest.raises(NNKDError, match="teacher_weights must be > 0"):
        build_loss("fitnet", student_widths=[4], teacher_widths=[[4], [4]], spatial_dims=2, teacher_weights=[1, 0])
    with pytest.raises(NNKDError, match="teacher_weights has 1 entries for 2 teachers"):
        build_loss("at", teacher_weights=[1.0], teacher_widths=[[4], [4]])
    plan = {"name": "x", "teachers": [{"name": "a", "model_folder": "/nowhere", "weight": 0}]}
    with pytest.raises(NNKDError, match=r"teachers\[0\]\.weight': must be > 0"):
        validate_plan(plan, "p.json")
