import pytest
import torch
import torch.nn.functional as F

from nnkd.errors import NNKDError
from nnkd.hooks import build_loss
from nnkd.nets.outputs import NetOutputs


def _net(features):
    return NetOutputs(seg=None, logits=None, features=features)


def _identity_fitnet(width, spatial_dims, n_teachers=1):
    loss = build_loss("fitnet", student_widths=[4, width], teacher_widths=[[4, width]] * n_teachers,
                      spatial_dims=spatial_dims)
    with torch.no_grad():
        for a in loss.adapters:
            a.weight.copy_(torch.eye(width).view(width, width, *[1] * spatial_dims))
            a.bias.zero_()
    return loss


@pytest.mark.parametrize("dims", [2, 3])
def test_fitnet_zero_when_identical_and_gradient_reaches_student(dims):
    torch.manual_seed(0)
    shape = (2, 6) + (5,) * dims
    f = torch.randn(*shape)
    loss = _identity_fitnet(6, dims)
    assert loss(_net([None, f]), [_net([None, f.clone()])], {}).item() == pytest.approx(0.0, abs=1e-12)
    fs = torch.randn(*shape, requires_grad=True)
    ft = torch.randn(*shape, requires_grad=True)
    value = loss(_net([None, fs]), [_net([None, ft])], {})
    torch.testing.assert_close(value, F.mse_loss(fs, ft))
    value.backward()
    assert fs.grad.abs().sum() > 0 and loss.adapters[0].weight.grad.abs().sum() > 0 and ft.grad is None


def test_fitnet_widths_grid_mismatch_and_teacher_mean():
    torch.manual_seed(1)
    loss = build_loss("fitnet", student_widths=[3], teacher_widths=[[5], [5]], spatial_dims=2)
    fs, t1, t2 = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    got = loss(_net([fs]), [_net([t1]), _net([t2])], {})
    expected = sum(F.mse_loss(F.interpolate(a(fs), size=(4, 4), mode="bilinear"), t)
                   for a, t in zip(loss.adapters, (t1, t2))) / 2
    torch.testing.assert_close(got, expected)
    with pytest.raises(NNKDError, match=r"built for 2 teacher\(s\) \(teacher_widths\) but got 1"):
        loss(_net([fs]), [_net([t1])], {})
    with pytest.raises(NNKDError, match="stage -3 does not exist"):
        build_loss("fitnet", student_widths=[3, 4], teacher_widths=[[5, 6]], spatial_dims=2, stage=-3)


def _at_naive(fs, ft):
    total = 0.0
    for a, b in zip(fs, ft):
        qa = (a**2).mean(0).flatten()
        qb = (b**2).mean(0).flatten()
        total += ((qa / qa.norm() - qb / qb.norm()) ** 2).sum()
    return total / len(fs)


@pytest.mark.parametrize("dims", [2, 3])
def test_at_value_zero_scale_invariance_and_gradient(dims):
    torch.manual_seed(2)
    s = [torch.randn(2, 3, *(6,) * dims, requires_grad=True), torch.randn(2, 4, *(3,) * dims, requires_grad=True)]
    t = [torch.randn(2, 5, *(6,) * dims), torch.randn(2, 8, *(3,) * dims)]
    loss = build_loss("at", stages=[0, 1])
    value = loss(_net(s), [_net(t)], {})
    torch.testing.assert_close(value, (_at_naive(s[0], t[0]) + _at_naive(s[1], t[1])) / 2)
    value.backward()
    assert all(x.grad.abs().sum() > 0 for x in s)
    same = [x.detach() for x in s]
    assert loss(_net(same), [_net([3 * x for x in same])], {}).item() == pytest.approx(0.0, abs=1e-10)
    assert loss(_net(same), [_net(t)], {}).item() > 1e-3


def test_at_grid_mismatch_and_no_teachers():
    torch.manual_seed(3)
    fs, ft = torch.randn(1, 2, 8, 8, requires_grad=True), torch.randn(1, 3, 4, 4)
    got = build_loss("at", stages=0)(_net([fs]), [_net([ft])], {})
    a_s = F.interpolate((fs**2).mean(1, keepdim=True), size=(4, 4), mode="bilinear")
    a_t = (ft**2).mean(1, keepdim=True)
    expected = ((F.normalize(a_s.flatten(1)) - F.normalize(a_t.flatten(1))) ** 2).sum()
    torch.testing.assert_close(got, expected)
    zero = build_loss("at", stages=0)(_net([fs]), [], {})
    zero.backward()
    assert zero.item() == 0 and fs.grad is not None
