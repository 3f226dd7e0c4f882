"""GKD-Den has no trivial minimum: constant tokens cannot drive it to ~0, matching features can lower it."""
import pytest
import torch

from nnkd.hooks import build_loss
from nnkd.nets.outputs import NetOutputs

Y = torch.tensor([0, 1, 0, 1])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(cs=8, **kw):
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(4, cs, 4, 4, generator=g)
    # post-activation teacher features with a class-specific spatial pattern (same-class images alike)
    pattern = torch.randn(2, 6, 4, 4, generator=g)
    f_t = 4 * (pattern[Y] + 0.3 * torch.randn(4, 6, 4, 4, generator=g)).relu()
    seg = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).long()[Y]  # lesion layout per class
    torch.manual_seed(0)
    loss = build_loss("gkd_den", student_widths=[cs], teacher_widths=[[6]], num_classes=2, embed_dim=16,
                      warmup_epochs=0, relation_source="mask", **kw)
    batch = {"class_target": Y, "teacher_class_target": [Y], "epoch": 9, "seg_target": seg,
             "teacher_seg_target": [seg]}
    return loss, f_s, f_t, batch


def _den(loss, f_s, f_t, batch):
    return loss(NetOutputs(None, None, [f_s]), [NetOutputs(None, None, [f_t])], batch)["den"]


def _minimise(loss, f_s, f_t, batch, steps=150, student="fixed"):
    """Adam on every trainable parameter of the loss and, with ``student="constant"``, on a student map that
    is one vector per image at every position (constant tokens), with ``"free"`` on the whole student map;
    returns the final loss."""
    if student == "constant":
        free = torch.nn.Parameter(f_s.mean((2, 3), keepdim=True).clone())
    else:
        free = torch.nn.Parameter(f_s.clone()) if student == "free" else None

    def value():
        return _den(loss, f_s if free is None else free.expand_as(f_s), f_t, batch)

    opt = torch.optim.Adam([p for p in loss.parameters() if p.requires_grad] + ([] if free is None else [free]), 0.05)
    for _ in range(steps):
        v = value()
        opt.zero_grad()
        v.backward()
        opt.step()
    return float(value().detach())


def test_paper_code_embeddings_collapse_to_zero():
    """The failure being guarded against: biased, trainable embeddings reach ~0 on unrelated features
    (weights -> 0, every token = its bias, all cosines -> 1)."""
    loss, f_s, f_t, batch = _setup(embed_bias=True, teacher_embedding="trainable")
    assert _minimise(loss, f_s, f_t, batch) < 0.02


def test_default_embeddings_keep_constant_tokens_far_from_zero():
    loss, f_s, f_t, batch = _setup()
    assert not loss.embed_t.weight.requires_grad and loss.embed_s.bias is None and loss.embed_t.bias is None
    start = float(_den(loss, f_s, f_t, batch).detach())
    # constant student tokens, their vector and the student embedding optimised freely: no collapse
    constant = _minimise(loss, f_s, f_t, batch, student="constant")
    assert constant > 0.5, constant
    # unrelated student features: the loss can fall by learning the embedding, but not to ~0
    loss, f_s, f_t, batch = _setup()
    assert 0.5 < _minimise(loss, f_s, f_t, batch) < start


def test_term_stays_informative():
    """Student maps that carry spatial structure reach a far lower value than any constant tokens, and the
    gradient reaches the student features: the term rewards structure, not a degenerate embedding."""
    loss, f_s, f_t, batch = _setup()
    constant = _minimise(loss, f_s, f_t, batch, student="constant")
    loss, f_s, f_t, batch = _setup()
    structured = _minimise(loss, f_s, f_t, batch, student="free")
    assert structured < 0.5 * constant, (structured, constant)
    loss, f_s, f_t, batch = _setup()
    f_s.requires_grad_(True)
    _den(loss, f_s, f_t, batch).backward()
    assert f_s.grad.abs().sum() > 0


def test_teacher_embedding_option_checked():
    with pytest.raises(ValueError, match="teacher_embedding 'free'; known: frozen, trainable"):
        _setup(teacher_embedding="free")
