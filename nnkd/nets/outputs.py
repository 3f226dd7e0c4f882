"""The one data contract between networks and losses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

from torch import Tensor


@dataclass
class NetOutputs:
    """Everything a student or teacher network produces for one batch.

    seg:       segmentation logits ``(B, S, *spatial)``; a list (full resolution first) under
               deep supervision.
    logits:    case-level class logits ``(B, K)``.
    features:  encoder stage outputs, shallow to deep, each ``(B, C_s, *spatial_s)``; the last
               one is the bottleneck after CBAM (when CBAM is enabled).
    attention: CBAM spatial attention ``(B, 1, *spatial_bottleneck)`` or ``None``.
    """

    seg: Union[Tensor, List[Tensor]]
    logits: Tensor
    features: List[Tensor]
    attention: Optional[Tensor] = None
    extras: dict = field(default_factory=dict)
