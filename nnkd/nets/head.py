"""Case-level classification head: global pooling of one or more encoder stages, then a two-layer MLP.

Why more than "global average pool of the bottleneck -> MLP" (the default of nnkd's distillation
plans, ``nnkd/plans/README.md``): nnU-Net's encoder ends every convolution block in instance
normalisation, so each channel of each stage has the same mean and spread in every case. Its
global average is then almost the same vector for every case (measured on the synthetic PET/CT
set at initialisation: 1-5 % between-case spread), and the MLP has to amplify tiny differences,
which plain SGD does hundreds of times more slowly than it learns the shared offset. Three
remedies, each a setting:

* ``stages``: pool the deepest ``stages`` encoder stages (or all), not only the bottleneck. A
  case-level cue carried by intensity or small lesions (tumour uptake) is present in the shallow
  stages from the start, while the bottleneck has to learn it first.
* ``pool="avgmax"``: global max next to the average; the maximum of a normalised map still
  says how strongly the most lesion-like region responds.
* ``standardize``: per-feature standardisation of the pooled vector with running (EMA) mean and
  variance, updated in training by :meth:`ClassificationHead.forward` and used as is in eval (a
  batch-norm that never normalises with batch-of-2 statistics).
* ``lr_scale``: the MLP's weights are stored divided by ``sqrt(lr_scale)`` and multiplied back in
  the forward pass. Under SGD (nnU-Net's optimiser) this is exactly a learning rate of
  ``lr_scale`` times the encoder's for the head alone, which a per-group rate could not give:
  nnU-Net's poly scheduler sets every parameter group to the same rate.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnkd.ops.precision import fp32

POOLS = ("avg", "avgmax")


class ScaledLinear(nn.Linear):
    """``nn.Linear`` whose parameters are stored divided by ``scale`` (same function at initialisation);
    SGD then moves the effective weights ``scale**2`` times as fast."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0):
        super().__init__(in_features, out_features)
        self.scale = float(scale)
        with torch.no_grad():
            self.weight.div_(self.scale)
            self.bias.div_(self.scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.scale)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale:g}"


class RunningStandardize(nn.Module):
    """``(x - mean) / sqrt(var + eps)`` per feature with exponential running estimates.

    ``update(x)`` folds a batch in (the first batches get weight 1/n, then ``momentum``); the
    normalisation itself never uses batch statistics, so it behaves the same in training and
    eval and for any batch size. The buffers are in the state dict (checkpoints keep them).
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.detach().float()
        m = max(self.momentum, 1.0 / float(self.num_batches_tracked.item() + 1))
        mean = x.mean(0)
        var = x.var(0, unbiased=False) if x.shape[0] > 1 else torch.zeros_like(mean)
        # EMA of the spread around the running mean: within-batch variance plus the batch mean's offset
        self.running_var.mul_(1 - m).add_(m * (var + (1 - m) * (mean - self.running_mean) ** 2))
        self.running_mean.mul_(1 - m).add_(m * mean)
        self.num_batches_tracked += 1

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps)


class ClassificationHead(nn.Module):
    """Encoder stage outputs -> ``(B, K)`` class logits; any number of spatial dims.

    ``in_channels``: the width of each pooled stage, shallow to deep (an int = the last stage
    only). ``forward`` takes the list of all stage outputs (the deepest ``len(in_channels)`` are
    used) or one tensor. ``pool`` and ``classify`` are exposed separately so that callers (e.g.
    Grad-CAM) can run the MLP on pooled features they computed themselves;
    ``forward(x) == classify(pool(x))`` (plus the running-statistics update in training).
    With the defaults (one stage, average pooling, no standardisation, ``lr_scale`` 1) this is
    global average pooling of the bottleneck -> Linear -> ReLU -> Dropout -> Linear.
    """

    def __init__(self, in_channels: Union[int, Sequence[int]], num_classes: int, hidden: int = 256,
                 dropout: float = 0.2, pool: str = "avg", standardize: bool = False, lr_scale: float = 1.0):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if not lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
        self.widths: List[int] = [int(in_channels)] if isinstance(in_channels, int) else [int(c) for c in in_channels]
        self.pool_mode = pool
        per_stage = 2 if pool == "avgmax" else 1
        self.in_features = per_stage * sum(self.widths)
        self.standardize = RunningStandardize(self.in_features) if standardize else None
        scale = math.sqrt(lr_scale)
        self.mlp = nn.Sequential(
            ScaledLinear(self.in_features, hidden, scale) if scale != 1 else nn.Linear(self.in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            ScaledLinear(hidden, num_classes, scale) if scale != 1 else nn.Linear(hidden, num_classes),
        )

    def _stages(self, x: Union[Tensor, Sequence[Tensor]]) -> List[Tensor]:
        feats = [x] if torch.is_tensor(x) else list(x)[-len(self.widths):]
        if len(feats) != len(self.widths) or any(f.shape[1] != w for f, w in zip(feats, self.widths)):
            raise ValueError(f"the head pools stages of widths {self.widths}, got "
                             f"{[int(f.shape[1]) for f in feats]}")
        return feats

    def pool(self, x: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        """Global pooling over all spatial dims: ``(B, C, *spatial)`` or stage list -> ``(B, in_features)``.
        Layout: the average of every pooled stage (shallow to deep), then, with ``avgmax``, their maxima."""
        feats = [f.flatten(2) for f in self._stages(x)]
        # float32 (accumulated, no copy of the maps): the averages differ between cases by a few
        # percent (module docstring), about bfloat16's rounding step, and standardisation subtracts
        # their common part
        out = [f.mean(-1, dtype=torch.promote_types(f.dtype, torch.float32)) for f in feats]
        if self.pool_mode == "avgmax":
            out += [fp32(f.amax(-1)) for f in feats]
        return out[0] if len(out) == 1 else torch.cat(out, 1)

    def classify(self, pooled: Tensor) -> Tensor:
        """``(B, in_features) -> (B, K)`` logits (standardised with the running statistics, never updating them)."""
        # outside autocast: standardising nearly equal pooled vectors cancels all but the last bits
        # of float16/bfloat16 (one vector per case: negligible next to the convolutions)
        with torch.autocast(pooled.device.type, enabled=False):
            pooled = fp32(pooled)
            return self.mlp(pooled if self.standardize is None else self.standardize(pooled))

    def forward(self, x: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        pooled = self.pool(x)
        if self.training and self.standardize is not None:
            self.standardize.update(pooled)
        return self.classify(pooled)

    def classify_last_average(self, x: Union[Tensor, Sequence[Tensor]]):
        """:meth:`classify_stage_average` of the deepest stage (what Grad-CAM on the bottleneck needs);
        for the one-stage average head it is :meth:`classify` itself."""
        if len(self.widths) == 1 and self.pool_mode == "avg":
            return self.classify
        return self.classify_stage_average(x, -1)

    def classify_stage_average(self, x: Sequence[Tensor], stage: int):
        """``f(pooled)``: the logits as a function of one stage's global average ``(B, C_stage)``, every other
        pooled feature fixed at its value for ``x`` (detached). ``stage`` indexes the encoder's stage list ``x``
        (negative from the deepest); it must be one the head pools (else ValueError: its gradient is zero)."""
        stages = [x] if torch.is_tensor(x) else list(x)
        index = stage % len(stages) if -len(stages) <= stage < len(stages) else None
        first = len(stages) - len(self.widths)
        if index is None or index < first:
            raise ValueError(f"stage {stage}: the head pools encoder stages {first}..{len(stages) - 1} "
                             f"of {len(stages)} (network.head_stages)")
        pos = index - first
        lo = sum(self.widths[:pos])
        hi = lo + self.widths[pos]
        cache: List[Tensor] = []

        def classify(pooled_stage: Tensor) -> Tensor:
            if not cache:
                with torch.no_grad():
                    cache.append(self.pool(stages).detach())
            fixed = cache[0].to(pooled_stage.dtype)
            return self.classify(torch.cat([fixed[:, :lo], pooled_stage, fixed[:, hi:]], 1))

        return classify
