"""Built-in losses by name, and helpers every loss constructor shares."""
from __future__ import annotations

from typing import List, Sequence, Tuple

from nnkd.errors import NNKDError
from nnkd.name_table import NameTable

BUILTIN_LOSSES = NameTable("loss")
#: class decorator: ``@register_loss("logit_kd")``
register_loss = BUILTIN_LOSSES.register


def widths_at(loss: str, student_widths: Sequence[int], teacher_widths: Sequence[Sequence[int]],
              stage: int) -> Tuple[int, List[int]]:
    """(student width, [teacher widths]) at encoder ``stage``; an error names the loss and the stage."""
    try:
        return student_widths[stage], [tw[stage] for tw in teacher_widths]
    except IndexError:
        raise NNKDError(f"loss '{loss}': stage {stage} does not exist in student_widths {list(student_widths)} "
                        f"/ teacher_widths {[list(t) for t in teacher_widths]}") from None
