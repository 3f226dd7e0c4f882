"""Case-level classification head: global average pooling, then a two-layer MLP."""
from __future__ import annotations

from torch import Tensor, nn


class ClassificationHead(nn.Module):
    """``(B, C, *spatial) -> (B, K)`` class logits; works for any number of spatial dims.

    ``pool`` and ``classify`` are exposed separately so that callers (e.g. Grad-CAM) can run the
    MLP on pooled features they computed themselves; ``forward(x) == classify(pool(x))``.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    @staticmethod
    def pool(x: Tensor) -> Tensor:
        """Global average over all spatial dims: ``(B, C, *spatial) -> (B, C)``."""
        return x.flatten(2).mean(-1)

    def classify(self, pooled: Tensor) -> Tensor:
        """``(B, C) -> (B, K)`` logits."""
        return self.mlp(pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.pool(x))
