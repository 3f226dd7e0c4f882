"""GKD-Pro's prototype extractor learns class-specific prototypes where the benchmark's did not.

The failure measured on the synthetic unpaired benchmark: tokens of nnU-Net's instance-normalised
last stage share one large mean vector, and the from-scratch queries and attention, trained by the
student's SGD, never left the uniform values (contrast 3 x log 5, prototype CE log 3).
"""
import math

import pytest
import torch

from nnkd.hooks import build_loss
from nnkd.nets.outputs import NetOutputs
from nnkd.trainers.loss_optimizer import build_loss_optimizer, follow_schedule

K = 3
Y = torch.arange(K).repeat(4)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _features(seed: int, separation: float, step: int) -> torch.Tensor:
    """(12, 8, 4, 4) post-activation maps: one large pattern shared by every image, a small class
    pattern, noise that changes every step."""
    g = torch.Generator().manual_seed(seed)
    common, per_class = 3.0 + torch.randn(1, 8, 4, 4, generator=g), torch.randn(K, 8, 4, 4, generator=g)
    noise = torch.randn(len(Y), 8, 4, 4, generator=torch.Generator().manual_seed(1000 * seed + step))
    return (common + separation * per_class[Y] + 0.05 * noise).relu()


def _loss(**kw):
    torch.manual_seed(0)
    return build_loss("gkd_pro", student_widths=[8], teacher_widths=[[8]], num_classes=K, embed_dim=32,
                      num_heads=4, warmup_epochs=0, **kw)


def _terms(loss, f_s, f_t):
    return loss(NetOutputs(None, None, [f_s]), [NetOutputs(None, None, [f_t])],
                {"class_target": Y, "teacher_class_target": [Y], "epoch": 9})


def _train(spec, steps=150):
    """Relative (pro, pcls) after training the loss's parameters alone: 1 = the uniform value."""
    loss = _loss()
    params = [p for p in loss.parameters() if p.requires_grad]
    opt = build_loss_optimizer(params, spec) or torch.optim.SGD(params, 0.01, momentum=0.99, nesterov=True)
    for step in range(steps):
        out = _terms(loss, _features(1, 0.1, step), _features(2, 0.3, step))
        opt.zero_grad()
        (out["pro"] + out["pcls"]).backward()
        opt.step()
    return (float(out["pro"].detach()) / (0.1 * K * math.log(2 * K - 1)),
            float(out["pcls"].detach()) / (0.1 * math.log(K)))


def test_student_sgd_leaves_prototypes_uniform():
    """The failure guarded against, at nnU-Net's rate (0.01, momentum 0.99)."""
    pro, pcls = _train({"name": "sgd"})
    assert pro > 0.95


def test_own_adamw_learns_class_specific_prototypes():
    pro, pcls = _train({"name": "adamw", "lr": 1e-3, "weight_decay": 0.0})
    assert pro < 0.6 and pcls < 0.1, (pro, pcls)


def test_centred_tokens_ignore_a_shared_offset():
    """Adding one vector to every teacher feature vector (a shift instance normalisation would put
    in every image) changes nothing with ``center_tokens``; it does change the paper's form."""
    f_s, f_t = _features(1, 0.3, 0), _features(2, 0.3, 0)
    shifted = f_t + torch.randn(1, 8, 1, 1, generator=torch.Generator().manual_seed(5)) * 3
    centred = _loss()
    a, b = _terms(centred, f_s, f_t), _terms(centred, f_s, shifted)
    assert torch.allclose(a["pro"], b["pro"], atol=1e-5) and torch.allclose(a["pcls"], b["pcls"], atol=1e-5)
    plain = _loss(center_tokens=False)
    assert not torch.allclose(_terms(plain, f_s, f_t)["pro"], _terms(plain, f_s, shifted)["pro"], atol=1e-3)


def test_loss_optimizer_follows_the_students_poly_factor():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_loss_optimizer([p], {"name": "adamw", "lr": 2e-3, "weight_decay": 0.0})
    follow_schedule(opt, 2e-3, student_lr=0.005, student_initial_lr=0.01)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert build_loss_optimizer([p], {"name": "sgd", "lr": 1e-3, "weight_decay": 0.0}) is None


def test_first_in_group_keeps_the_first_k_of_each_group():
    from nnkd.losses.group_pro import first_in_group
    y = torch.tensor([2, 0, 2, 1, 0, 2, 0, 3])
    keep = first_in_group(y, torch.tensor([0, 2]), 2)
    assert keep.tolist() == [True, True, True, False, True, False, False, False]


@pytest.mark.parametrize("equal_groups", [False, True])
def test_group_sizes_are_no_shortcut(equal_groups):
    """Features without any class information, groups of 2/4/6 images in both modalities (as the
    class-matched teacher stream draws them). Reading the sizes (through the per-image identity
    encodings) lowers the contrast without any class content; equal groups leave it at chance."""
    y = torch.tensor([0] * 2 + [1] * 4 + [2] * 6)
    loss = _loss(equal_groups=equal_groups)
    opt = build_loss_optimizer([p for p in loss.parameters() if p.requires_grad],
                               {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0})
    for step in range(150):
        g = torch.Generator().manual_seed(step)
        f_s, f_t = (3 + torch.randn(12, 8, 4, 4, generator=g)).relu(), (3 + torch.randn(12, 8, 4, 4, generator=g)).relu()
        out = loss(NetOutputs(None, None, [f_s]), [NetOutputs(None, None, [f_t])],
                   {"class_target": y, "teacher_class_target": [y], "epoch": 9})
        opt.zero_grad()
        (out["pro"] + out["pcls"]).backward()
        opt.step()
    relative = float(out["pro"].detach()) / (0.1 * K * math.log(2 * K - 1))
    if equal_groups:
        assert relative > 0.85, relative
    else:
        assert relative < 0.7, relative  # the shortcut guarded against
