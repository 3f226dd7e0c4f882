import math

import pytest
import torch
import torch.nn.functional as F

from nnkd.errors import NNKDError
from nnkd.hooks import build_loss
from nnkd.losses.classification import focal_loss
from nnkd.nets.outputs import NetOutputs


def _student(logits):
    return NetOutputs(seg=None, logits=logits, features=[])


def test_focal_gamma0_equals_ce_with_and_without_weights():
    torch.manual_seed(0)
    z, y = torch.randn(7, 4), torch.randint(0, 4, (7,))
    w = [0.5, 2.0, 1.0, 3.0]
    for kw_ce, kw_focal in [({}, {}), ({"weight": torch.tensor(w)}, {"class_weights": w})]:
        focal = build_loss("focal", gamma=0.0, **kw_focal)(_student(z), [], {"class_target": y})
        torch.testing.assert_close(focal, F.cross_entropy(z, y, **kw_ce))


def test_focal_hand_computed():
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([2, 0])
    e = [math.exp(1), math.exp(2), math.exp(3)]
    p0 = e[2] / sum(e)
    p1 = 1 / 3
    expected = (-(1 - p0) ** 2 * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    got = build_loss("focal")(_student(z), [], {"class_target": y})
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # class weights (alpha_t) as a weighted mean: weights 1 (class 2) and 3 (class 0)
    got_w = build_loss("focal", class_weights=[3.0, 1.0, 1.0])(_student(z), [], {"class_target": y})
    expected_w = (-(1 - p0) ** 2 * math.log(p0) - 3 * (1 - p1) ** 2 * math.log(p1)) / 4
    assert got_w.item() == pytest.approx(expected_w, rel=1e-6)


def test_focal_gradient_matches_finite_differences():
    torch.manual_seed(1)
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (5,))
    assert torch.autograd.gradcheck(lambda t: focal_loss(t, y, gamma=2.0), (z,))


def test_ce_label_smoothing_and_weights_hand_computed():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    lp = torch.log_softmax(z, 1)
    smooth = build_loss("ce", label_smoothing=0.2)(_student(z), [], {"class_target": y})
    expected = -((0.9 * lp[0, 0] + 0.1 * lp[0, 1]) + (0.1 * lp[1, 0] + 0.9 * lp[1, 1])) / 2
    torch.testing.assert_close(smooth, expected)
    weighted = build_loss("ce", class_weights=[1.0, 3.0])(_student(z), [], {"class_target": y})
    torch.testing.assert_close(weighted, -(1.0 * lp[0, 0] + 3.0 * lp[1, 1]) / 4)


def test_class_weights_length_checked_against_num_classes():
    with pytest.raises(NNKDError, match="class_weights has 2 entries but the dataset has 3 classes"):
        build_loss("focal", class_weights=[1.0, 2.0], num_classes=3)
    with pytest.raises(NNKDError, match="non-negative"):
        build_loss("ce", class_weights=[1.0, -2.0])
