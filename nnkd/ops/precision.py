"""Float32 islands inside nnU-Net's mixed-precision step.

On CUDA nnU-Net runs every training step under ``torch.autocast`` (float16); code whose result
is a small difference of large terms (tempered softmaxes and KL, cosines, Sinkhorn potentials,
standardised pooled features) opts out locally: ``with torch.autocast(x.device.type,
enabled=False)`` around it and its inputs through :func:`fp32`.
"""
from __future__ import annotations

import torch
from torch import Tensor


def fp32(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 when it already is (tests and gradchecks run in double)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
