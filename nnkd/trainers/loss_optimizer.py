"""The distillation losses' own optimiser (plan field ``loss_optimizer``).

Why not always the student's SGD: the prototype extractor of GKD-Pro (learnable queries and a
cross-attention block, started from scratch) barely learns at nnU-Net's SGD rate in a short
schedule. Measured on the synthetic unpaired benchmark (15 epochs x 20 iterations, weight 0.1):
the prototype contrast stayed at its uniform value 3 x log 5 and the prototype classifier at
log 3 in every seed, i.e. all prototypes were the same vector; the same head on frozen features
with AdamW (lr 1e-3) drops below both within 300 steps. ``"adamw"`` gives the loss bank that
optimiser, its rate following the student's poly schedule; the student keeps nnU-Net's SGD.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

import torch


def build_loss_optimizer(params: Iterable[torch.nn.Parameter], spec: Dict[str, Any]) -> Optional[torch.optim.Optimizer]:
    """AdamW over ``params`` for ``spec["name"] == "adamw"``; None for ``"sgd"`` (the caller adds a
    parameter group to the student's optimizer instead)."""
    if spec["name"] == "sgd":
        return None
    return torch.optim.AdamW(list(params), lr=float(spec["lr"]), weight_decay=float(spec["weight_decay"]))


def follow_schedule(optimizer: torch.optim.Optimizer, base_lr: float, student_lr: float, student_initial_lr: float) -> None:
    """Set every group's rate to ``base_lr`` times the student's current poly factor."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * student_lr / student_initial_lr
