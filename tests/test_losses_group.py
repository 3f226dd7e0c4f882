"""PaGKD group losses (GKD-Pro, GKD-Den), Grad-CAM and pixel-adaptive refinement."""
import pytest
import torch
import torch.nn.functional as F

from nnkd.errors import NNKDError
from nnkd.hooks import build_loss
from nnkd.losses import BUILTIN_LOSSES
from nnkd.losses.group_dense import (GroupDenseLoss, mask_relations, masked_relation_attention, relation_mask,
                                     threshold_relations)
from nnkd.losses.group_pro import prototype_contrastive, prototype_similarity
from nnkd.nets.outputs import NetOutputs
from nnkd.ops.cam import grad_cam, refine_cam

K, CS, CT, D = 3, 8, 6, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _head(c_in, seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(c_in, 10), torch.nn.ReLU(), torch.nn.Linear(10, K))


HEAD_S, HEAD_T = _head(CS, 1), _head(CT, 2)
for p in HEAD_T.parameters():
    p.requires_grad_(False)


def _outs(feats, head):
    return NetOutputs(seg=None, logits=None, features=[feats], extras={"classify": head})


def _data(y_s, y_t, size=(4, 4), seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    f_s = torch.randn(len(y_s), CS, *size, generator=g) + y_s.view(-1, 1, *[1] * len(size)).float()
    f_t = torch.randn(len(y_t), CT, *size, generator=g) - y_t.view(-1, 1, *[1] * len(size)).float()
    return f_s.requires_grad_(grad), f_t


def _loss(name, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("embed_dim", D)
    kw.setdefault("warmup_epochs", 0)
    if name != "gkd_den":
        kw.setdefault("num_heads", 4)
    return build_loss(name, student_widths=[4, CS], teacher_widths=[[3, CT]], num_classes=K, **kw)


def _batch(y_s, y_t, epoch=10, **extra):
    return {"class_target": y_s, "teacher_class_target": [y_t], "epoch": epoch, **extra}


def _total(out):
    return sum(v for k, v in out.items() if not k.startswith("n_"))


Y_S = torch.tensor([0, 1, 2, 0, 1, 2, 0])
Y_T = torch.tensor([2, 2, 1, 0, 0, 1, 0])


def test_registered():
    assert {"pagkd", "gkd_pro", "gkd_den"} <= set(BUILTIN_LOSSES)
    out = _loss("pagkd")(_outs(*_data(Y_S, Y_T)[:1], HEAD_S), [_outs(_data(Y_S, Y_T)[1], HEAD_T)], _batch(Y_S, Y_T))
    assert set(out) == {"pro", "pcls", "den", "n_skipped_classes"}
    assert all(torch.isfinite(v) for v in out.values())


def test_unknown_option_lists_known_names():
    with pytest.raises(TypeError, match="qk_projections"):  # gkd_pro does not know den options
        _loss("gkd_pro", qk_projections=True)
    with pytest.raises(TypeError, match="num_queries"):
        _loss("pagkd", num_querys=3)


# ---------------------------------------------------------------- GKD-Pro

def _naive_cos(a, b):
    return sum(F.cosine_similarity(a[i], b[i], dim=0) for i in range(a.shape[0])) / a.shape[0]


def _naive_code(a, b):
    an = a / a.pow(2).sum(0, keepdim=True).sqrt()
    bn = b / b.pow(2).sum(0, keepdim=True).sqrt()
    return sum(an[i, j] * bn[i, j] for i in range(a.shape[0]) for j in range(a.shape[1])) / 20


@pytest.mark.parametrize("kind,naive", [("cos", _naive_cos), ("code", _naive_code)])
def test_similarity_formulas(kind, naive):
    torch.manual_seed(0)
    a, b = torch.randn(3, 12, 5), torch.randn(4, 12, 5)
    got = prototype_similarity(a, b, kind)
    want = torch.stack([torch.stack([naive(a[i], b[j]) for j in range(4)]) for i in range(3)])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("softmax_one", [False, True])
def test_contrastive_matches_formula(softmax_one):
    torch.manual_seed(0)
    p_s, p_t, tau = torch.randn(3, 4, 5), torch.randn(3, 4, 5), 0.7
    s = lambda a, b: _naive_cos(a, b) / tau  # noqa: E731
    want = 0.0
    for c in range(3):
        pos = torch.exp(s(p_s[c], p_t[c]))
        neg = sum(torch.exp(s(p_s[c], p[o])) for o in range(3) if o != c for p in (p_s, p_t))
        want = want - torch.log(pos / (pos + neg + (1.0 if softmax_one else 0.0)))
    torch.testing.assert_close(prototype_contrastive(p_s, p_t, "cos", tau, softmax_one), want)


def test_padded_groups_equal_separate_groups():
    """One padded attention call over all groups == each group alone without padding."""
    loss = _loss("gkd_pro")
    torch.manual_seed(3)
    tok, y = torch.randn(7, 5, D), torch.tensor([0, 1, 1, 2, 1, 0, 1])
    classes = torch.tensor([0, 1, 2])
    seq, pad = loss.pro.group_tokens(tok, y, classes)
    batched = loss.pro.prototypes(seq, pad)
    for g, c in enumerate(classes):
        own = tok[y == c] + loss.pro.slots[: int((y == c).sum()), None]
        alone = loss.pro.prototypes(own.reshape(1, -1, D), torch.zeros(1, own.shape[0] * 5, dtype=torch.bool))
        torch.testing.assert_close(batched[g], alone[0], atol=1e-5, rtol=1e-5)


def test_pro_identical_tokens_beat_shuffled_classes():
    loss = _loss("gkd_pro", w_pro=1.0)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    f, _ = _data(y, y, grad=False)
    loss.embed_t = loss.embed_s  # same width-8 maps on both sides -> identical tokens
    same = loss(_outs(f, HEAD_S), [_outs(f, HEAD_S)], _batch(y, y))["pro"]
    shuffled = loss(_outs(f, HEAD_S), [_outs(f, HEAD_S)], _batch(y, (y + 1) % K))["pro"]
    assert same < shuffled - 0.1


def test_pro_drops_when_student_features_are_optimised():
    loss = _loss("gkd_pro", w_pro=1.0)
    for p in loss.parameters():
        p.requires_grad_(False)
    f_s, f_t = _data(Y_S, Y_T)
    f_s = f_s.detach().requires_grad_(True)
    opt = torch.optim.Adam([f_s], lr=0.2)
    values = []
    for _ in range(8):
        out = loss(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(Y_S, Y_T))
        values.append(out["pro"].item())
        opt.zero_grad()
        out["pro"].backward()
        opt.step()
    assert values[-1] < 0.8 * values[0]


def test_pro_weight_applies_to_both_terms():
    f_s, f_t = _data(Y_S, Y_T)
    args = (_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(Y_S, Y_T))
    one, small = _loss("gkd_pro", w_pro=1.0)(*args), _loss("gkd_pro")(*args)
    for k in ("pro", "pcls"):
        torch.testing.assert_close(small[k], 0.1 * one[k])


def test_pro_permutation_invariant_without_identity_encoding():
    loss = _loss("gkd_pro", equal_groups=False)  # equal groups keep the first k images: order matters there
    with torch.no_grad():
        loss.pro.slots.zero_()
    f_s, f_t = _data(Y_S, Y_T)
    perm = torch.randperm(len(Y_S), generator=torch.Generator().manual_seed(1))
    a = loss(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(Y_S, Y_T))
    b = loss(_outs(f_s[perm], HEAD_S), [_outs(f_t, HEAD_T)], _batch(Y_S[perm], Y_T))
    torch.testing.assert_close(a["pro"], b["pro"], atol=1e-6, rtol=1e-5)


def test_slots_beyond_table_wrap_around():
    loss = _loss("gkd_pro", max_group_slots=2)
    y = torch.zeros(5, dtype=torch.long)
    seq, pad = loss.pro.group_tokens(torch.zeros(5, 1, D), y, torch.tensor([0]))
    torch.testing.assert_close(seq[0, 4], loss.pro.slots[0].detach())
    assert not pad.any()


# ---------------------------------------------------------------- GKD-Den

def test_relation_mask_values():
    lab_q, lab_k = torch.tensor([[1, 0, -1]]), torch.tensor([[1, 0, -1, 1]])
    want = torch.tensor([[[1, 0, .5, 1], [0, 1, .5, 0], [.5, .5, .5, .5]]])
    torch.testing.assert_close(relation_mask(lab_q, lab_k), want)
    maps = torch.tensor([[[[0.8, 0.5], [0.1, 0.7]]]])
    assert threshold_relations(maps).tolist() == [[1, -1, 0, -1]]


def test_masked_attention_half_weight_and_reference():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 3), torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    mask = relation_mask(torch.randint(-1, 2, (2, 4)), torch.randint(-1, 2, (2, 5)))
    r, valid = masked_relation_attention(q, k, v, mask, scale=0.5)
    for p in range(2):
        for u in range(4):
            w = torch.tensor([torch.exp(0.5 * mask[p, u, j] * (q[p, u] @ k[p, j])) if mask[p, u, j] > 0 else 0.0
                              for j in range(5)])
            want = (w[:, None] * v[p]).sum(0) / w.sum() if w.sum() > 0 else torch.zeros(3)
            torch.testing.assert_close(r[p, u], want, atol=1e-5, rtol=1e-5)
            assert bool(valid[p, u]) == bool(w.sum() > 0)


def test_masked_positions_are_ignored_and_empty_rows_give_zero():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4, requires_grad=True)
    mask = relation_mask(torch.tensor([[1, 0, 1]]), torch.tensor([[1, 1, 1]]))  # row 1: nothing admissible
    r, valid = masked_relation_attention(q, k, v, mask)
    v2 = v.detach().clone()
    v2[0, 0] += 100.0  # position 0 is M=0 for row 1 only
    r2, _ = masked_relation_attention(q, k, v2, mask)
    assert valid.tolist() == [[True, False, True]]
    torch.testing.assert_close(r[0, 1], torch.zeros(4))
    torch.testing.assert_close(r2[0, 1], r[0, 1])
    assert not torch.allclose(r2[0, 0], r[0, 0])
    r.sum().backward()
    assert torch.isfinite(v.grad).all()
    # changing v at an M=0 position leaves the rows that exclude it unchanged
    mask = relation_mask(torch.tensor([[1, 0]]), torch.tensor([[1, 0, 0]]))
    a, _ = masked_relation_attention(q[:, :2], k, v.detach(), mask)
    b, _ = masked_relation_attention(q[:, :2], k, v2, mask)
    torch.testing.assert_close(a[0, 1], b[0, 1])


def _naive_den(tok_s, y_s, rel_s, tok_t, y_t, rel_t):
    total = 0.0
    for c in sorted(set(y_s.tolist()) & set(y_t.tolist())):
        for q_tok, k_tok, q_lab, k_lab, y_q, y_k in ((tok_s, tok_t, rel_s, rel_t, y_s, y_t),
                                                     (tok_t, tok_s, rel_t, rel_s, y_t, y_s)):
            losses = []
            for a in (y_q == c).nonzero().view(-1):
                for b in (y_k == c).nonzero().view(-1):
                    mask = relation_mask(q_lab[a][None], k_lab[b][None])
                    r, valid = masked_relation_attention(q_tok[a][None], k_tok[b][None], k_tok[b][None], mask)
                    if valid.any():
                        keep = valid[0, :, None].float()
                        losses.append(1 - F.cosine_similarity((r[0] * keep).flatten(), (q_tok[a] * keep).flatten(),
                                                              dim=0))
            total = total + sum(losses) / max(len(losses), 1)
    return total


def test_dense_matches_loop_reference():
    torch.manual_seed(0)
    den = GroupDenseLoss(D)
    y_s, y_t = torch.tensor([0, 1, 0, 2, 0]), torch.tensor([1, 0, 0, 1, 3])
    tok_s, tok_t = torch.randn(5, 6, D), torch.randn(5, 4, D)
    rel_s, rel_t = torch.randint(-1, 2, (5, 6)), torch.randint(-1, 2, (5, 4))
    rel_t[1] = 0  # teacher image with background only: some student rows have no partner
    got = den(tok_s, y_s, rel_s, tok_t, y_t, rel_t, torch.tensor([0, 1]))["den"]
    torch.testing.assert_close(got, _naive_den(tok_s, y_s, rel_s, tok_t, y_t, rel_t))


def test_dense_zero_for_perfect_reconstruction():
    """Teacher == student with one-hot-like tokens: each row attends to its own copy only."""
    den = GroupDenseLoss(D, scale_logits=False)
    tok = 50 * torch.eye(D)[:4][None]  # 4 orthogonal tokens: softmax is essentially one-hot
    lab = torch.tensor([[1, 0, 1, 0]])
    y = torch.tensor([0])
    out = den(tok, y, lab, tok, y, lab, torch.tensor([0]))["den"]
    assert float(out) < 1e-4


def test_mask_relations_nearest():
    seg = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    seg[0, 0, 4:, :4] = 1
    assert mask_relations(seg, (2, 2)).tolist() == [[0, 0, 1, 0]]


def test_gkd_den_with_masks_runs_without_classify():
    y = torch.tensor([0, 1, 0])
    f_s, f_t = _data(y, y, size=(4, 4))
    seg = (torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5).long()
    loss = _loss("gkd_den", relation_source="mask")
    out = loss(NetOutputs(None, None, [f_s]), [NetOutputs(None, None, [f_t])],
               _batch(y, y, seg_target=seg, teacher_seg_target=[seg]))
    # the same value through the loop reference: embedded tokens, relations from the masks on the 4x4 grid
    rel = mask_relations(seg, (4, 4))
    tok_s, tok_t = (emb(f.flatten(2).transpose(1, 2)) for emb, f in ((loss.embed_s, f_s), (loss.embed_t, f_t)))
    torch.testing.assert_close(out["den"], _naive_den(tok_s, y, rel, tok_t, y, rel))
    assert out["den"] > 0 and set(out) == {"den", "n_skipped_classes"} and out["n_skipped_classes"] == 0


# ---------------------------------------------------------------- shared behaviour

def test_gradients_reach_student_and_teacher_embedding_not_teacher_features():
    f_s, f_t = _data(Y_S, Y_T)
    f_t.requires_grad_(True)
    loss = _loss("pagkd")
    _total(loss(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(Y_S, Y_T))).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert loss.embed_t.weight.grad is None  # frozen by default (no collapse, see test_losses_group_collapse)
    assert f_t.grad is None
    trainable = _loss("pagkd", teacher_embedding="trainable")
    _total(trainable(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(Y_S, Y_T))).backward()
    assert trainable.embed_t.weight.grad.abs().sum() > 0 and f_t.grad is None
    assert all(p.grad is None for p in HEAD_T.parameters())


def test_class_on_one_side_is_skipped_and_counted():
    y_s, y_t = torch.tensor([0, 1, 2, 2, 0]), torch.tensor([0, 1, 1, 0, 0])
    f_s, f_t = _data(y_s, y_t)
    loss = _loss("pagkd", w_pro=1.0)
    full = loss(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(y_s, y_t))
    keep = y_s != 2
    without = loss(_outs(f_s[keep], HEAD_S), [_outs(f_t, HEAD_T)], _batch(y_s[keep], y_t))
    assert float(full["n_skipped_classes"]) == 1 and float(without["n_skipped_classes"]) == 0
    assert not full["n_skipped_classes"].requires_grad
    for k in ("pro", "pcls", "den"):
        torch.testing.assert_close(full[k], without[k])


def test_no_common_class_gives_zero_that_depends_on_inputs():
    y_s, y_t = torch.tensor([0, 0]), torch.tensor([1, 1])
    f_s, f_t = _data(y_s, y_t)
    out = _loss("pagkd")(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(y_s, y_t))
    assert float(out["n_skipped_classes"]) == 2
    assert all(out[k].item() == 0 and out[k].requires_grad for k in ("pro", "pcls", "den"))


def test_warmup_gives_input_dependent_zeros():
    f_s, f_t = _data(Y_S, Y_T)
    loss = _loss("pagkd", warmup_epochs=5)
    out = loss(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(Y_S, Y_T, epoch=4))
    assert all(out[k].item() == 0 for k in out)
    _total(out).backward()
    assert torch.equal(f_s.grad, torch.zeros_like(f_s))
    assert all(p.grad is not None and not p.grad.any() for p in loss.parameters() if p.requires_grad)
    assert _total(loss(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(Y_S, Y_T, epoch=5))).item() > 0


def test_missing_classify_or_images_is_a_clear_error():
    f_s, f_t = _data(Y_S, Y_T)
    with pytest.raises(NNKDError, match=r"teacher network's outputs have no extras\['classify'\]"):
        _loss("gkd_den")(_outs(f_s, HEAD_S), [NetOutputs(None, None, [f_t])], _batch(Y_S, Y_T))
    with pytest.raises(NNKDError, match="refine_cam needs the student images"):
        _loss("gkd_den", refine_cam=True)(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(Y_S, Y_T))


def test_pagkd_3d_and_unequal_token_counts():
    y = torch.tensor([0, 1, 1])
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(3, CS, 2, 3, 2, generator=g, requires_grad=True)
    f_t = torch.randn(3, CT, 2, 2, 2, generator=g)
    out = _loss("pagkd")(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(y, y))
    _total(out).backward()
    assert all(torch.isfinite(out[k]) for k in out) and f_s.grad.abs().sum() > 0


# ---------------------------------------------------------------- Grad-CAM

def _naive_grad_cam(features, head, target):
    feats = features.detach().clone().requires_grad_(True)
    logits = head(feats.flatten(2).mean(-1))
    logits[torch.arange(len(target)), target].sum().backward()
    alpha = feats.grad.flatten(2).mean(-1)
    cam = F.relu((alpha.view(*alpha.shape, *[1] * (feats.ndim - 2)) * feats).sum(1, keepdim=True)).detach()
    lo = cam.flatten(1).min(1).values.view(-1, *[1] * (cam.ndim - 1))
    hi = cam.flatten(1).max(1).values.view(-1, *[1] * (cam.ndim - 1))
    return (cam - lo) / (hi - lo)


@pytest.mark.parametrize("spatial", [(5, 4), (3, 4, 2)])
def test_grad_cam_matches_naive(spatial):
    torch.manual_seed(0)
    head = _head(CS, 5)
    feats, target = torch.randn(4, CS, *spatial), torch.tensor([0, 2, 1, 2])
    with torch.no_grad():  # works inside no_grad, like the frozen teacher
        got = grad_cam(feats, head, target)
    assert got.shape == (4, 1, *spatial)
    assert all(p.grad is None for p in head.parameters())  # the head's weights are not touched
    torch.testing.assert_close(got, _naive_grad_cam(feats, head, target))


def test_grad_cam_constant_map_is_zero():
    cam = grad_cam(torch.zeros(2, CS, 3, 3), HEAD_S, torch.tensor([0, 1]))
    assert torch.equal(cam, torch.zeros(2, 1, 3, 3))


def test_refine_cam_respects_image_edges():
    cam = torch.zeros(1, 1, 8, 8)
    cam[..., 3] = 1.0  # hot column just left of the edge between columns 3 and 4
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 1.0
    flat = refine_cam(cam, torch.zeros(1, 3, 8, 8), dilations=(1, 2), iterations=3)
    sharp = refine_cam(cam, edge, dilations=(1, 2), iterations=3)
    assert 0 <= float(sharp.min()) and float(sharp.max()) <= 1
    leak = lambda m: float(m[..., 4:].mean() / m[..., :4].mean())  # noqa: E731
    assert leak(sharp) < 0.5 * leak(flat)


def test_image_level_pairs_images_by_index():
    """level='image': pair j is its own group; equals group level when every class has one image per side."""
    y = torch.tensor([0, 1, 2])
    f_s, f_t = _data(y, y)
    batch = _batch(y, y)
    group = _loss("pagkd", level="group")(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], batch)
    image = _loss("pagkd", level="image")(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], batch)
    for term in ("pro", "pcls", "den"):
        assert torch.allclose(group[term], image[term], atol=1e-6), term

    y2 = torch.tensor([0, 0, 1, 1])  # two images per class: the levels differ, gradients still reach the student
    f_s, f_t = _data(y2, y2, seed=3)
    group = _loss("pagkd", level="group")(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(y2, y2))
    image = _loss("pagkd", level="image")(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(y2, y2))
    assert not torch.allclose(group["pro"], image["pro"])
    (image["pro"] + image["pcls"] + image["den"]).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0


def test_image_level_needs_index_matched_classes():
    y_s, y_t = torch.tensor([0, 1]), torch.tensor([1, 0])
    f_s, f_t = _data(y_s, y_t)
    with pytest.raises(NNKDError, match="level='image' needs the teacher batch matched"):
        _loss("pagkd", level="image")(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(y_s, y_t))
    with pytest.raises(ValueError, match="level 'pixel'"):
        _loss("pagkd", level="pixel")


@pytest.mark.parametrize("name,kw", [("pagkd", {}), ("gkd_pro", {}), ("gkd_den", {}),
                                     ("pagkd", {"self_attention": True, "num_blocks": 2, "qk_projections": True})])
def test_every_parameter_gets_a_gradient_when_classes_are_shared(name, kw):
    """DDP (without find_unused_parameters) needs every parameter in every step's graph."""
    loss = _loss(name, **kw)
    f_s, f_t = _data(Y_S, Y_T)
    out = loss(_outs(f_s, HEAD_S), [_outs(f_t, HEAD_T)], _batch(Y_S, Y_T))
    _total(out).backward()
    assert [n for n, p in loss.named_parameters() if p.requires_grad and p.grad is None] == []


def _two_stage_outs(shallow, deep, seed):
    """NetOutputs of a network whose head pools both stages (as NNKDNetwork's ``extras`` give them)."""
    from functools import partial

    from nnkd.nets.head import ClassificationHead

    torch.manual_seed(seed)
    head = ClassificationHead([shallow.shape[1], deep.shape[1]], K, hidden=10, pool="avgmax")
    stages = [shallow, deep]
    return NetOutputs(None, None, stages, extras={"classify": head.classify_last_average(stages),
                                                  "classify_stage": partial(head.classify_stage_average, stages)}), head


@pytest.mark.parametrize("name", ["pagkd", "gkd_pro", "gkd_den"])
def test_stage_option_distils_that_stage(name):
    """``stage=0`` on [shallow, deep] is the default loss on a network whose deepest stage is the shallow map:
    same value, gradient into the shallow map only, embeddings sized by the shallow widths."""
    g = torch.Generator().manual_seed(3)
    s0 = torch.randn(len(Y_S), 4, 6, 6, generator=g).requires_grad_(True)
    s1 = torch.randn(len(Y_S), CS, 3, 3, generator=g).requires_grad_(True)
    t0, t1 = torch.randn(len(Y_T), 3, 6, 6, generator=g), torch.randn(len(Y_T), CT, 3, 3, generator=g)
    out_s, head_s = _two_stage_outs(s0, s1, 1)
    out_t, head_t = _two_stage_outs(t0, t1, 2)
    staged = _loss(name, seed=4, stage=0)
    assert (staged.embed_s.in_features, staged.embed_t.in_features) == (4, 3)
    got = staged(out_s, [out_t], _batch(Y_S, Y_T))
    torch.manual_seed(4)
    kw = {"embed_dim": D, "warmup_epochs": 0, **({} if name == "gkd_den" else {"num_heads": 4})}
    ref_loss = build_loss(name, student_widths=[4], teacher_widths=[[3]], num_classes=K, **kw)
    ref = ref_loss(NetOutputs(None, None, [s0], extras={"classify": head_s.classify_stage_average([s0, s1], 0)}),
                   [NetOutputs(None, None, [t0], extras={"classify": head_t.classify_stage_average([t0, t1], 0)})],
                   _batch(Y_S, Y_T))
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
    _total(got).backward()
    assert s0.grad.abs().sum() > 0 and s1.grad is None


def test_stage_errors_name_the_loss_and_stage():
    with pytest.raises(NNKDError, match=r"loss 'pagkd': stage 2 does not exist"):
        _loss("pagkd", stage=2)
    with pytest.raises(ValueError, match="stage must be an integer"):
        _loss("gkd_den", stage="last")
    # Grad-CAM needs a head that pools the stage: the last-stage-only head cannot give stage 0's CAM
    g = torch.Generator().manual_seed(0)
    s0, s1 = torch.randn(len(Y_S), 4, 4, 4, generator=g), torch.randn(len(Y_S), CS, 2, 2, generator=g)
    t0, t1 = torch.randn(len(Y_T), 3, 4, 4, generator=g), torch.randn(len(Y_T), CT, 2, 2, generator=g)
    from functools import partial

    from nnkd.nets.head import ClassificationHead
    head = ClassificationHead(CS, K, hidden=10)
    outs = NetOutputs(None, None, [s0, s1], extras={"classify_stage": partial(head.classify_stage_average, [s0, s1])})
    with pytest.raises(NNKDError, match=r"Grad-CAM relation maps at stage 0 of the student network: stage 0: "
                                        r"the head pools encoder stages 1\.\.1"):
        _loss("gkd_den", stage=0)(outs, [_two_stage_outs(t0, t1, 2)[0]], _batch(Y_S, Y_T))
    # in the warm-up too, both sides in one refusal
    t_outs = NetOutputs(None, None, [t0, t1], extras={"classify_stage": partial(head.classify_stage_average, [t0, t1])})
    with pytest.raises(NNKDError, match=r"(?s)stage 0 of the student network.*stage 0 of the teacher network"):
        _loss("pagkd", stage=0, warmup_epochs=5)(outs, [t_outs], _batch(Y_S, Y_T, epoch=0))
