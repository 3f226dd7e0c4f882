"""PaGKD group-level distillation on unpaired batches: ``pagkd``, and ``gkd_pro`` / ``gkd_den``.

``teachers[0]`` ran on its own batch with labels ``batch["teacher_class_target"][0]``; images are
matched by class, never by index. Both networks' maps of one encoder stage (the deepest by default,
option ``stage``) are embedded by 1x1 convolutions (a per-token ``nn.Linear``, ndim-generic) to
d = 128; the teacher-side embedding is frozen by default (see below), and the teacher's features
themselves never receive gradients. Under torch.distributed the tokens, labels and relation labels
are all-gathered (differentiably) so groups span the global batch; every rank then computes the same loss (see :mod:`nnkd.distributed`).

Returned dict: the weighted terms ``pro``, ``pcls`` (both times ``w_pro``, default 0.1) and
``den`` (times ``w_den``, default 1), plus counters. **Convention: keys starting with ``n_``
are detached counters for the log, not loss terms**; the trainer sums only the other keys.
``n_skipped_classes`` counts the classes present in only one modality's (global) batch: they
are skipped entirely (neither anchors nor negatives). Before ``warmup_epochs`` every term is a
zero that depends on the inputs and on every parameter of the loss, so DDP sees the same
parameters used in every step.

``level`` ("group", the paper; "image": the paper's image-level ablation): each student image j
forms a group with teacher image j alone, which the class-matched teacher stream guarantees to
have the same class; prototypes, contrast negatives (the other pairs) and dense pairs are then
per image pair, and GKD-Den sums over pairs instead of classes.

Embeddings and the collapse they must not allow: with biased embeddings and a trainable teacher
embedding, GKD-Den has a trivial minimum, both weight matrices at 0 so that every token is its
embedding's bias (all cosines 1, loss 0 whatever the features; measured on the synthetic unpaired
benchmark: 0.78 -> 0.001 within three epochs after the warm-up, the student's CE at chance). So by
default both embeddings are bias-free (a token is a linear function of its feature vector; zero
features give zero tokens, which the cosine loss scores 1, not 0) and the teacher's embedding is a
frozen random orthogonal projection (``teacher_embedding="frozen"``): the teacher tokens keep
the teacher's spatial structure, which the student tokens can only reconstruct by carrying it.
``teacher_embedding="trainable"`` (the paper) and ``embed_bias=True`` (the paper's code) are options.

``stage`` (-1: the deepest, the paper's backbone output): the encoder stage both networks' tokens and
relation maps come from, an index into ``features`` (negative counts from the deepest). Grad-CAM
relation maps at a shallower stage need a head that pools it (``network.head_stages``).

Options: ``embed_dim`` (128), ``warmup_epochs`` (5), ``gather`` (True), ``level``, ``embed_bias``
(False), ``teacher_embedding`` ("frozen" | "trainable"), ``stage`` (-1); the options of
:class:`~nnkd.losses.group_pro.GroupPrototypeLoss` and/or
:class:`~nnkd.losses.group_dense.GroupDenseLoss`, passed flat (an unknown name is a TypeError
listing the known ones).
"""
from __future__ import annotations

import inspect
from typing import Dict, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from nnkd.distributed import all_gather_with_grad
from nnkd.errors import NNKDError
from nnkd.losses.group_dense import GroupDenseLoss
from nnkd.losses.group_pro import GroupPrototypeLoss
from nnkd.losses.registry import register_loss, widths_at
from nnkd.nets.outputs import NetOutputs

_COMPONENTS = {"pro": (GroupPrototypeLoss, ("pro", "pcls")), "den": (GroupDenseLoss, ("den",))}
_BUILT_BY_US = {"self", "embed_dim", "num_classes"}
LEVELS = ("group", "image")
TEACHER_EMBEDDINGS = ("frozen", "trainable")


def _options_of(cls) -> set:
    return set(inspect.signature(cls).parameters) - _BUILT_BY_US


def _pick(options: dict, cls) -> dict:
    return {k: v for k, v in options.items() if k in _options_of(cls)}


def _tokens(features: Tensor) -> Tensor:
    """``(B, C, *s)`` -> ``(B, N, C)`` with N = prod(s)."""
    return features.flatten(2).transpose(1, 2)


class _GroupKD(nn.Module):
    name = ""
    parts: Sequence[str] = ()

    def __init__(self, student_widths: Sequence[int], teacher_widths: Sequence[Sequence[int]], num_classes: int,
                 embed_dim: int = 128, warmup_epochs: int = 5, gather: bool = True, level: str = "group",
                 embed_bias: bool = False, teacher_embedding: str = "frozen", stage: int = -1, **options):
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"loss {self.name!r}: level {level!r}; known: {', '.join(LEVELS)}")
        if teacher_embedding not in TEACHER_EMBEDDINGS:
            raise ValueError(f"loss {self.name!r}: teacher_embedding {teacher_embedding!r}; "
                             f"known: {', '.join(TEACHER_EMBEDDINGS)}")
        width_s, (width_t,) = widths_at(self.name, student_widths, teacher_widths[:1], stage)
        self.stage = stage
        self.level = level
        known = set().union(*(_options_of(_COMPONENTS[p][0]) for p in self.parts))
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"loss {self.name!r}: unknown option(s) {', '.join(unknown)}; "
                            f"known: embed_dim, warmup_epochs, gather, level, embed_bias, teacher_embedding, stage, "
                            f"{', '.join(sorted(known))}")
        self.num_classes, self.warmup_epochs, self.gather = num_classes, warmup_epochs, gather
        self.embed_s = nn.Linear(width_s, embed_dim, bias=embed_bias)
        self.embed_t = nn.Linear(width_t, embed_dim, bias=embed_bias)
        for embed in (self.embed_s, self.embed_t):  # norm-preserving start (the frozen one keeps it)
            nn.init.orthogonal_(embed.weight)
            if embed.bias is not None:
                nn.init.zeros_(embed.bias)
        self.embed_t.requires_grad_(teacher_embedding == "trainable")
        pro_opts, den_opts = _pick(options, GroupPrototypeLoss), _pick(options, GroupDenseLoss)
        self.pro = GroupPrototypeLoss(embed_dim, num_classes, **pro_opts) if "pro" in self.parts else None
        self.den = GroupDenseLoss(embed_dim, **den_opts) if "den" in self.parts else None
        self.terms = tuple(t for p in self.parts for t in _COMPONENTS[p][1])

    def _cam_classifier(self, out: NetOutputs, side: str):
        """The logits as a function of the distilled stage's global average (Grad-CAM), or a clear error."""
        if "classify_stage" not in out.extras:  # outputs with only the deepest stage's classifier
            if "classify" in out.extras and self.stage in (-1, len(out.features) - 1):
                return out.extras["classify"]
            raise NNKDError(f"loss {self.name!r}: the {side} network's outputs have no extras['classify'] "
                            "(needed for Grad-CAM relation maps); use relation_source='mask' or a network "
                            "with a classification head")
        try:
            return out.extras["classify_stage"](self.stage)
        except ValueError as e:
            raise NNKDError(f"loss {self.name!r}: Grad-CAM relation maps at stage {self.stage} of the {side} "
                            f"network: {e}. Choose a stage both heads pool (params 'stage'; -1 is always pooled), "
                            f"relation_source='mask', or a {side} trained with network.head_stages 'all' "
                            f"(nnkd's default)") from None

    def _check_cam(self, student: NetOutputs, teacher: NetOutputs) -> None:
        """Both networks can give Grad-CAM maps at the distilled stage; one error lists both sides' problems."""
        problems = []
        for out, side in ((student, "student"), (teacher, "teacher")):
            try:
                self._cam_classifier(out, side)
            except NNKDError as e:
                problems.append(str(e))
        if problems:
            raise NNKDError("\n".join(problems))

    def _relations(self, out: NetOutputs, feats: Tensor, labels: Tensor, seg, image, side: str) -> Tensor:
        src = self.den.relation_source
        if src == "mask" and seg is None:
            raise NNKDError(f"loss {self.name!r}: relation_source='mask' needs lesion masks in the batch "
                            f"({side} 'seg_target')")
        classify = self._cam_classifier(out, side) if src == "cam" else None
        if src == "cam" and self.den.refine_cam and image is None:
            raise NNKDError(f"loss {self.name!r}: refine_cam needs the {side} images in the batch "
                            f"({'data' if side == 'student' else 'teacher_data'})")
        return self.den.relations(feats, classify, labels, seg, image)

    def _zero(self, *tensors: Tensor) -> Tensor:
        """A zero depending on ``tensors`` and on every parameter (consistent graphs under DDP)."""
        return sum(t.sum() for t in (*tensors, *(p for p in self.parameters() if p.requires_grad))) * 0.0

    def forward(self, student: NetOutputs, teachers: Sequence[NetOutputs], batch: dict) -> Dict[str, Tensor]:
        if not teachers:
            raise NNKDError(f"loss {self.name!r} needs a teacher; the distillation plan lists none")
        feats_s, feats_t = student.features[self.stage], teachers[0].features[self.stage].detach()
        y_s = batch["class_target"].long().view(-1)
        y_t = batch["teacher_class_target"][0].long().view(-1)
        if batch["epoch"] < self.warmup_epochs:
            if self.den is not None and self.den.relation_source == "cam":  # refuse a bad stage at the first step
                self._check_cam(student, teachers[0])
            zero = self._zero(feats_s)
            return {**{t: zero for t in self.terms}, "n_skipped_classes": zero.detach()}

        rel_s = rel_t = None
        if self.den is not None:
            t_seg, t_data = batch.get("teacher_seg_target"), batch.get("teacher_data")
            rel_s = self._relations(student, feats_s, y_s, batch.get("seg_target"), batch.get("data"), "student")
            rel_t = self._relations(teachers[0], feats_t, y_t, None if t_seg is None else t_seg[0],
                                    None if t_data is None else t_data[0], "teacher")
        tok_s, tok_t = self.embed_s(_tokens(feats_s)), self.embed_t(_tokens(feats_t))
        if self.gather:
            tok_s, y_s, tok_t, y_t = map(all_gather_with_grad, (tok_s, y_s, tok_t, y_t))
            if rel_s is not None:
                rel_s, rel_t = all_gather_with_grad(rel_s), all_gather_with_grad(rel_t)

        if self.level == "image":
            return self._image_level(tok_s, y_s, rel_s, tok_t, y_t, rel_t)
        present_s = torch.bincount(y_s, minlength=self.num_classes) > 0
        present_t = torch.bincount(y_t, minlength=self.num_classes) > 0
        classes = (present_s & present_t).nonzero().view(-1)
        if classes.numel():
            # the components together use every parameter of the loss: all are in the graph already
            out = {}
            if self.pro is not None:
                out.update(self.pro(tok_s, y_s, tok_t, y_t, classes))
            if self.den is not None:
                out.update(self.den(tok_s, y_s, rel_s, tok_t, y_t, rel_t, classes))
        else:  # every parameter in the graph, every step (DDP)
            zero = self._zero(tok_s, tok_t)
            out = {t: zero for t in self.terms}
        out["n_skipped_classes"] = (present_s ^ present_t).sum().float().detach()
        return out

    def _image_level(self, tok_s: Tensor, y_s: Tensor, rel_s, tok_t: Tensor, y_t: Tensor, rel_t) -> Dict[str, Tensor]:
        """Every index-matched (student j, teacher j) pair is its own group (``level="image"``)."""
        if y_s.shape != y_t.shape or not bool((y_s == y_t).all()):
            raise NNKDError(f"loss {self.name!r}: level='image' needs the teacher batch matched to the student's "
                            f"image by image (same class at every index), as the unpaired teacher stream draws it")
        pairs = torch.arange(y_s.numel(), device=y_s.device)
        zero = self._zero(tok_s, tok_t)
        out = {t: zero for t in self.terms}
        if self.pro is not None:
            out.update(self.pro(tok_s, pairs, tok_t, pairs, pairs, group_classes=y_s))
        if self.den is not None:
            out.update(self.den(tok_s, pairs, rel_s, tok_t, pairs, rel_t, pairs))
        out[self.terms[0]] = out[self.terms[0]] + zero
        out["n_skipped_classes"] = zero.detach()
        return out


@register_loss("pagkd")
class PaGKDLoss(_GroupKD):
    """PaGKD: GKD-Pro (``pro``, ``pcls``) and GKD-Den (``den``) on one shared embedding."""

    name, parts = "pagkd", ("pro", "den")


@register_loss("gkd_pro")
class GKDProLoss(_GroupKD):
    """GKD-Pro alone (ablation): group prototype contrast and prototype classification."""

    name, parts = "gkd_pro", ("pro",)


@register_loss("gkd_den")
class GKDDenLoss(_GroupKD):
    """GKD-Den alone (ablation): relation-masked dense reconstruction between same-class images."""

    name, parts = "gkd_den", ("den",)
