"""Task and distillation losses, one file per family, registered by name.

Contract for every registered loss (see also :mod:`nnkd.hooks`):

* Construction: ``factory(**plan_params, **context)``; ``context`` holds those of
  ``student_widths`` (channels per encoder stage, shallow to deep), ``teacher_widths``
  (one such list per teacher), ``teacher_weights`` (the plan's ``teachers[i].weight``),
  ``stage_strides`` (cumulative stride per stage and axis) and ``lesion_extent`` (per axis, from
  the training masks; only for losses naming it), ``num_classes`` and ``spatial_dims`` that the
  factory's signature names. Learnable parts (adapters, projections) are created here.
* Call: ``loss(student, teachers, batch)`` with ``student`` a
  :class:`nnkd.nets.outputs.NetOutputs`, ``teachers`` a sequence of them (may be empty) and
  ``batch`` a dict with
  ``class_target`` (B,) long, ``seg_target`` (B, 1, *spatial) long at full patch resolution,
  ``teacher_class_target`` / ``teacher_seg_target`` (one entry per teacher; the student's
  own tensors in the paired setting) and ``epoch`` (int).
* Return: a scalar tensor, or ``{term: scalar tensor}`` whose values sum to the loss;
  keys starting with ``n_`` are detached counters (e.g. patches skipped), logged but not
  added to the loss.
  A term that cannot be computed for a batch returns a zero that still depends on the
  inputs (``x.sum() * 0``), never a Python float, so the graph and DDP stay consistent.
"""
from nnkd.losses.registry import BUILTIN_LOSSES, register_loss
from nnkd.losses import classification, logit, graph, feature, group, lesion, seg  # noqa: F401  (registration)

__all__ = ["BUILTIN_LOSSES", "register_loss"]
