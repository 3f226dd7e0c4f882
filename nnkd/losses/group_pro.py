"""GKD-Pro (PaGKD): group prototypes from learnable queries, contrasted across modalities.

Groups are given as embedded tokens ``(B, N, d)`` with class labels ``(B,)`` per modality and
the list of G classes to use; both modalities' groups of all classes go through ONE padded
attention call. Registration lives in :mod:`nnkd.losses.group`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nnkd.ops.precision import fp32

SIMILARITIES = ("cos", "code")
# The reference code divides its query-normalised similarity by 20 (not by N_q = 12).
_CODE_DIVISOR = 20.0


def prototype_similarity(anchor: Tensor, others: Tensor, kind: str = "cos") -> Tensor:
    """Similarity of every anchor prototype to every other one.

    anchor: ``(G, N_q, d)``, others: ``(H, N_q, d)`` -> ``(G, H)``.
    ``"cos"`` (paper): ``mean_i cos(a_i, b_i)``, cosine over d per query i.
    ``"code"``: normalise each prototype over the query axis (per channel), then
    ``sum_{i,j} a_ij b_ij / 20``.
    In float32 also under autocast (which would run the einsum in float16).
    """
    with torch.autocast(anchor.device.type, enabled=False):
        return _similarity(fp32(anchor), fp32(others), kind)


def _similarity(anchor: Tensor, others: Tensor, kind: str) -> Tensor:
    if kind == "cos":
        a, b = F.normalize(anchor, dim=-1), F.normalize(others, dim=-1)
        return torch.einsum("gid,hid->gh", a, b) / anchor.shape[1]
    if kind == "code":
        a, b = F.normalize(anchor, dim=-2), F.normalize(others, dim=-2)
        return torch.einsum("gid,hid->gh", a, b) / _CODE_DIVISOR
    raise ValueError(f"similarity {kind!r}; known: {', '.join(SIMILARITIES)}")


def prototype_contrastive(p_s: Tensor, p_t: Tensor, similarity: str = "cos", tau: float = 1.0,
                          softmax_one: bool = False) -> Tensor:
    """``-sum_c log softmax`` of the positive pair, anchored on the student prototypes.

    p_s, p_t: ``(G, N_q, d)``, row c of both = class c. Logits of anchor ``p_s[c]``: its
    similarity to ``p_t[c]`` (positive) and to ``p_s[c'], p_t[c']`` for every ``c' != c``
    (negatives), divided by ``tau``. ``softmax_one`` adds 1 (a zero logit) to the denominator.
    """
    g = p_s.shape[0]
    logits = prototype_similarity(p_s, torch.cat([p_s, p_t]), similarity) / tau  # (G, 2G)
    eye = torch.eye(g, dtype=torch.bool, device=p_s.device)
    logits = logits.masked_fill(torch.cat([eye, torch.zeros_like(eye)], 1), float("-inf"))
    target = torch.arange(g, 2 * g, device=p_s.device)
    if softmax_one:
        logits = torch.cat([logits.new_zeros(g, 1), logits], 1)
        target = target + 1
    return F.cross_entropy(logits, target, reduction="sum")


def first_in_group(labels: Tensor, classes: Tensor, k: Optional[int] = None) -> Tensor:
    """``(B,)`` mask of the first ``k`` images (batch order) of each group in ``classes``; every
    image of those groups for ``k=None``.

    Deterministic, so every DDP rank keeps the same images of the gathered batch."""
    member = labels[:, None] == classes[None, :]  # (B, G)
    return (member if k is None else member & (member.long().cumsum(0) <= k)).any(1)


class _QueryBlock(nn.Module):
    """Pre-norm block: [self-attention over queries], cross-attention to tokens, [MLP].

    ``nn.TransformerDecoderLayer`` always includes self-attention, which the default
    (code) block has not; hence this block.
    """

    def __init__(self, dim: int, heads: int, self_attention: bool, mlp_ratio: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True) if self_attention else None
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim)) if hidden > 0 else None

    def forward(self, q: Tensor, tokens: Tensor, pad: Tensor) -> Tensor:
        if self.self_attn is not None:
            x = self.norm_self(q)
            q = q + self.self_attn(x, x, x, need_weights=False)[0]
        kv = self.norm_kv(tokens)
        q = q + self.cross_attn(self.norm_q(q), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        return q + self.mlp(q) if self.mlp is not None else q


class GroupPrototypeLoss(nn.Module):
    """Prototype extractor + contrastive and prototype-classification terms (GKD-Pro).

    Options (plan params of ``pagkd`` / ``gkd_pro``):
    num_queries (N_q, 12), num_heads (16), num_blocks (T, 1), self_attention (False: the code's
    single cross-attention block; True with T blocks: the paper), mlp_ratio (4; 0 drops the MLP),
    max_group_slots (64: size of the learnable image-identity table; image slot s of a group
    uses entry ``s % max_group_slots``, so larger groups share identities instead of failing
    mid-training), similarity ("cos" | "code"), tau (1), softmax_one (False),
    center_tokens (True: each modality's tokens minus their mean over the grouped images and
    positions, before grouping; False: the paper), equal_groups (True: every group keeps its first
    k images in batch order, k = the smallest group of either modality; False: all images),
    w_pro (0.1: weight applied here to both terms).
    Why equal groups: the class-matched teacher stream gives both modalities the same group sizes,
    and the per-image identity encodings let the prototypes read a group's size. Measured on the
    benchmark's trained GKD-Pro: contrast 0.23 for groups of 2/4/6 images in both modalities, 0.48
    (uniform) for groups of 4/4/4 and 0.63 for mismatched sizes, the prototype CE at chance in all:
    it matched sizes, not classes. Batches with equal class counts are left as they are.
    Why centre: nnU-Net's encoder ends in instance normalisation, so every image's last-stage tokens
    share one large mean vector (measured on the synthetic unpaired benchmark: the class-mean tokens
    of the three classes have cosine 0.9999 with each other, in both modalities), and a group's
    attention-weighted mean is that vector whatever the class. The official code's 0.001 makes GKD-Pro 0.1-0.4 %
    of the student's loss, so under nnU-Net's SGD (the loss bank's parameters are one more group of
    its optimiser, at the same poly learning rate) the queries and attention barely learn; at 0.1
    the contrast (about 3 x log 5 = 4.8 for three classes at the start) and the prototype CE (log 3)
    are about 0.6, the order of the student's CE, and their parameters get 100x the code's gradient.

    Prototype classification (``pcls``): each prototype is averaged over its N_q queries, one
    ``Linear(d, K)`` shared by both modalities maps it to logits, and the cross-entropy against
    the group's class is averaged over the 2G prototypes (student and teacher).
    """

    def __init__(self, embed_dim: int, num_classes: int, num_queries: int = 12, num_heads: int = 16,
                 num_blocks: int = 1, self_attention: bool = False, mlp_ratio: float = 4.0,
                 max_group_slots: int = 64, similarity: str = "cos", tau: float = 1.0,
                 softmax_one: bool = False, center_tokens: bool = True, equal_groups: bool = True,
                 w_pro: float = 0.1):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity {similarity!r}; known: {', '.join(SIMILARITIES)}")
        self.queries = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
        self.slots = nn.Parameter(torch.randn(max_group_slots, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(_QueryBlock(embed_dim, num_heads, self_attention, mlp_ratio)
                                    for _ in range(num_blocks))
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.similarity, self.tau, self.softmax_one, self.weight = similarity, tau, softmax_one, w_pro
        self.center_tokens, self.equal_groups = center_tokens, equal_groups

    def group_tokens(self, tokens: Tensor, labels: Tensor, classes: Tensor,
                     slots: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """Concatenate each class's images into one padded token sequence.

        tokens ``(B, N, d)``, labels ``(B,)``, classes ``(G,)`` -> sequences ``(G, S*N, d)``
        (image slot s of group g at ``[g, s*N:(s+1)*N]``, plus the slot's identity encoding)
        and the padding mask ``(G, S*N)`` (True = padding). S = largest group, or ``slots``.
        Images whose label is not in ``classes`` are left out.
        """
        _, n, d = tokens.shape
        member = labels[:, None] == classes[None, :]  # (B, G)
        img, grp = member.nonzero(as_tuple=True)
        slot = (member.long().cumsum(0) - 1)[img, grp]  # rank of the image within its group
        s = int(slot.max()) + 1 if slots is None else slots
        values = tokens[img] + self.slots[slot % self.slots.shape[0]][:, None]  # (n_img, N, d)
        seq = values.new_zeros(classes.numel(), s, n, d).index_put((grp, slot), values)
        valid = torch.zeros(classes.numel(), s, dtype=torch.bool, device=tokens.device)
        valid[grp, slot] = True
        return seq.view(-1, s * n, d), ~valid.repeat_interleave(n, 1)

    def prototypes(self, tokens: Tensor, pad: Tensor) -> Tensor:
        """Padded group sequences ``(G, L, d)`` + mask ``(G, L)`` -> prototypes ``(G, N_q, d)``."""
        q = self.queries.expand(tokens.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, tokens, pad)
        return q

    def forward(self, tok_s: Tensor, y_s: Tensor, tok_t: Tensor, y_t: Tensor, classes: Tensor,
                group_classes: Optional[Tensor] = None) -> dict:
        """Weighted ``{"pro", "pcls"}`` for the G groups ``classes`` present in both modalities.

        ``y_s``/``y_t`` are group ids (the class, for group-level KD); ``group_classes`` (default:
        ``classes``) is each group's class, the target of the prototype classification."""
        g = classes.numel()
        count_s, count_t = (torch.bincount(y, minlength=int(classes.max()) + 1)[classes] for y in (y_s, y_t))
        # only the grouped images go on (a skipped class has no effect at all, centring included): with
        # equal groups the first k of each group, k = the smallest group of either modality
        k = int(torch.minimum(count_s, count_t).min()) if self.equal_groups else None
        keep_s, keep_t = first_in_group(y_s, classes, k), first_in_group(y_t, classes, k)
        tok_s, y_s, tok_t, y_t = tok_s[keep_s], y_s[keep_s], tok_t[keep_t], y_t[keep_t]
        if self.center_tokens:
            tok_s, tok_t = tok_s - tok_s.mean((0, 1)), tok_t - tok_t.mean((0, 1))
        slots = k if self.equal_groups else int(torch.maximum(count_s, count_t).max())
        seq_s, pad_s = self.group_tokens(tok_s, y_s, classes, slots)
        seq_t, pad_t = self.group_tokens(tok_t, y_t, classes, slots)
        if seq_s.shape[1] != seq_t.shape[1]:  # different token counts per image: pad the shorter
            length = max(seq_s.shape[1], seq_t.shape[1])
            seq_s, seq_t = (F.pad(x, (0, 0, 0, length - x.shape[1])) for x in (seq_s, seq_t))
            pad_s, pad_t = (F.pad(m, (0, length - m.shape[1]), value=True) for m in (pad_s, pad_t))
        protos = self.prototypes(torch.cat([seq_s, seq_t]), torch.cat([pad_s, pad_t])).float()
        p_s, p_t = protos[:g], protos[g:]
        pro = prototype_contrastive(p_s, p_t, self.similarity, self.tau, self.softmax_one)
        target = classes if group_classes is None else group_classes
        pcls = F.cross_entropy(self.classifier(protos.mean(1)), target.repeat(2))
        return {"pro": self.weight * pro, "pcls": self.weight * pcls}
