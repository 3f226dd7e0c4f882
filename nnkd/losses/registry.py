"""Built-in losses by name, and helpers every loss constructor shares."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from nnkd.errors import NNKDError
from nnkd.name_table import NameTable

BUILTIN_LOSSES = NameTable("loss")
#: class decorator: ``@register_loss("logit_kd")``
register_loss = BUILTIN_LOSSES.register


def widths_at(loss: str, student_widths: Sequence[int], teacher_widths: Sequence[Sequence[int]],
              stage: int) -> Tuple[int, List[int]]:
    """(student width, [teacher widths]) at encoder ``stage``; an error names the loss and the stage."""
    if isinstance(stage, bool) or not isinstance(stage, int):
        raise ValueError(f"loss '{loss}': stage must be an integer (an encoder stage index), got {stage!r}")
    try:
        return student_widths[stage], [tw[stage] for tw in teacher_widths]
    except IndexError:
        raise NNKDError(f"loss '{loss}': stage {stage} does not exist in student_widths {list(student_widths)} "
                        f"/ teacher_widths {[list(t) for t in teacher_widths]}") from None


def teacher_weight_vector(loss: str, weights: Optional[Sequence[float]], n: int, like: torch.Tensor,
                          normalise: bool = True) -> torch.Tensor:
    """``(n,)`` per-teacher weights (the plan's ``teachers[i].weight``; ``None``: 1 each) on ``like``'s
    device and dtype, divided by their sum when ``normalise`` (a weighted mean over teachers)."""
    if weights is None:
        w = like.new_ones(n)
    elif len(weights) != n:
        raise NNKDError(f"loss '{loss}': teacher_weights has {len(weights)} entries for {n} teachers")
    else:
        w = like.new_tensor([float(x) for x in weights])
    return w / w.sum() if normalise else w


def check_teacher_weights(loss: str, weights: Optional[Sequence[float]], teacher_widths) -> Optional[List[float]]:
    """Validated copy of ``teacher_weights`` (one positive number per teacher of ``teacher_widths``)."""
    if weights is None:
        return None
    weights = [float(w) for w in weights]
    if teacher_widths is not None and len(weights) != len(teacher_widths):
        raise NNKDError(f"loss '{loss}': teacher_weights has {len(weights)} entries for {len(teacher_widths)} teachers")
    if any(not w > 0 for w in weights):
        raise NNKDError(f"loss '{loss}': teacher_weights must be > 0, got {weights}")
    return weights
