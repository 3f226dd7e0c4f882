"""Case-level classification task losses on ``student.logits`` (B, K) vs ``batch["class_target"]`` (B,).

Also used by the plain classification trainer. ``class_weights`` (one per class) gives a
weighted mean like :func:`torch.nn.functional.cross_entropy`:
``sum_i w_{y_i} l_i / sum_i w_{y_i}``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnkd.errors import NNKDError
from nnkd.losses.registry import register_loss


def _weights_buffer(module: nn.Module, name: str, class_weights, num_classes: Optional[int]) -> None:
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        if num_classes is not None and w.numel() != num_classes:
            raise NNKDError(f"loss {name!r}: class_weights has {w.numel()} entries but the dataset has "
                            f"{num_classes} classes")
        if (w < 0).any():
            raise NNKDError(f"loss {name!r}: class_weights must be non-negative, got {w.tolist()}")
        class_weights = w
    module.register_buffer("class_weights", class_weights, persistent=False)


@register_loss("ce")
class CrossEntropy(nn.Module):
    """Cross-entropy with optional per-class weights and label smoothing."""

    def __init__(self, class_weights: Optional[Sequence[float]] = None, label_smoothing: float = 0.0,
                 num_classes: Optional[int] = None):
        super().__init__()
        _weights_buffer(self, "ce", class_weights, num_classes)
        self.label_smoothing = float(label_smoothing)

    def forward(self, student, teachers, batch) -> Tensor:
        return F.cross_entropy(student.logits, batch["class_target"].long(), weight=self.class_weights,
                               label_smoothing=self.label_smoothing)


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, class_weights: Optional[Tensor] = None) -> Tensor:
    """Softmax focal loss ``-w_y (1 - p_y)^gamma log p_y``, weighted batch mean; gamma=0 is CE.

    Hand-written: MONAI's FocalLoss averages over the class channel and weights differently,
    so gamma=0 would not reproduce ``F.cross_entropy`` (unweighted, this is K x MONAI's softmax
    focal loss: tests/test_monai_reference.py).
    """
    logp = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    if class_weights is None:
        return loss.mean()
    w = class_weights.to(loss.dtype)[target]
    return (w * loss).sum() / w.sum()


@register_loss("focal")
class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017), gamma=2 (REACT-KD's task loss); ``class_weights`` = the alpha_t."""

    def __init__(self, gamma: float = 2.0, class_weights: Optional[Sequence[float]] = None,
                 num_classes: Optional[int] = None):
        super().__init__()
        if gamma < 0:
            raise NNKDError(f"loss 'focal': gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        _weights_buffer(self, "focal", class_weights, num_classes)

    def forward(self, student, teachers, batch) -> Tensor:
        return focal_loss(student.logits, batch["class_target"].long(), self.gamma, self.class_weights)
