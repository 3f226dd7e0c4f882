"""nnkd's hand-written focal loss, calibration binning and Grad-CAM against MONAI's (FROC: test_froc.py).

MONAI is a test dependency only: each module's docstring says why nnkd does not call it.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnkd.evaluation.calibration import reliability
from nnkd.losses.classification import focal_loss
from nnkd.ops.cam import grad_cam


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_is_monai_softmax_focal_summed_over_classes(gamma):
    from monai.losses import FocalLoss

    torch.manual_seed(0)
    logits, target = torch.randn(9, 4), torch.randint(0, 4, (9,))
    ours = focal_loss(logits, target, gamma)
    monai = FocalLoss(use_softmax=True, gamma=gamma, include_background=True, reduction="mean")(
        logits, F.one_hot(target, 4).to(logits.dtype))
    # MONAI averages over the class channel too: ours = K x MONAI's, so that gamma = 0 is cross-entropy
    torch.testing.assert_close(ours, 4 * monai)
    if gamma == 0:
        torch.testing.assert_close(ours, F.cross_entropy(logits, target))


def test_reliability_bins_equal_monai_calibration_binning():
    from monai.metrics import calibration_binning

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3) * 0.7, size=200)
    probs[:3] = [[0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.0, 0.0, 1.0]]  # confidences on bin edges
    y = rng.integers(0, 3, 200)
    ours = reliability(probs, y, n_bins=10)
    confidence = torch.as_tensor(probs.max(1), dtype=torch.float32).view(1, 1, -1)
    correct = torch.as_tensor(probs.argmax(1) == y, dtype=torch.float32).view(1, 1, -1)
    # torch.bucketize's right=False puts an edge value into the bin below, as nnkd's (lo, hi] bins
    mean_p, mean_acc, counts = (t.view(-1).double().numpy() for t in calibration_binning(confidence, correct, 10))
    np.testing.assert_array_equal(ours["count"], counts)
    np.testing.assert_allclose(ours["confidence"], mean_p, rtol=1e-6)
    np.testing.assert_allclose(ours["accuracy"], mean_acc, rtol=1e-6)
    ece = np.nansum(counts / counts.sum() * np.abs(mean_acc - mean_p))
    assert ours["ece"] == pytest.approx(ece, rel=1e-6)


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_grad_cam_equals_monai_gradcam_on_a_pooled_head(spatial):
    from monai.visualize import GradCAM

    torch.manual_seed(0)
    c, k = 6, 3
    head = torch.nn.Linear(c, k)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Identity()
            self.head = head

        def forward(self, x):
            return self.head(self.features(x).flatten(2).mean(-1))

    net = Net()
    feats = torch.randn(2, c, *spatial)
    target = torch.tensor([2, 0])
    ours = grad_cam(feats, head, target)
    cam = GradCAM(net, target_layers="features")
    for b in range(2):  # MONAI takes one class index per call
        ref = cam(feats[b:b + 1].clone().requires_grad_(True), class_idx=int(target[b]))
        # MONAI's default normaliser maps (min, max) to (1, 0); nnkd's to (0, 1)
        torch.testing.assert_close(ours[b:b + 1], 1 - ref, atol=1e-5, rtol=1e-4)
