"""Per-sample modality dropout for multi-modal teachers (REACT-KD, docs/methods.md)."""
from __future__ import annotations

from typing import Sequence

import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform

from nnkd.errors import NNKDError
from nnkd.transforms.registry import register_transform


@register_transform("modality_dropout")
class ModalityDropout(ImageOnlyTransform):
    """Set whole input channels (modalities) of one sample to ``fill`` at random.

    Operates on ``{'image': (C, *spatial)}`` (2D or 3D); the segmentation is left untouched.
    Each channel not listed in ``keep`` is dropped independently with probability ``p``.
    A sample never loses every channel: when ``keep`` is empty and all ``C`` channels were drawn,
    one of them, chosen uniformly at random, is kept (rather than re-drawing, which would loop
    forever at ``p = 1``). The per-channel drop rate is then ``p - p**C / C`` instead of ``p``; with a
    non-empty ``keep`` it is exactly ``p``.

    The input tensor is never modified: a sample with dropped channels gets a new tensor.
    Randomness comes from torch's global generator, which nnU-Net seeds per data-loader worker.
    """

    def __init__(self, p: float = 0.3, keep: Sequence[int] = (), fill: float = 0.0):
        super().__init__()
        if not 0 <= p <= 1:
            raise NNKDError(f"modality_dropout: p must be in [0, 1], got {p!r}")
        if any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in keep):
            raise NNKDError(f"modality_dropout: keep must list channel indices >= 0, got {list(keep)!r}")
        self.p = float(p)
        self.keep = sorted(set(keep))
        self.fill = float(fill)

    def get_parameters(self, **data_dict) -> dict:
        image = data_dict["image"]
        channels = image.shape[0]
        if self.keep and self.keep[-1] >= channels:
            raise NNKDError(f"modality_dropout: keep={self.keep} names channel {self.keep[-1]} but the image "
                            f"has {channels} channel(s)")
        drop = torch.rand(channels) < self.p
        drop[self.keep] = False
        if not self.keep and bool(drop.all()):
            drop[torch.randint(channels, ())] = False
        return {"drop": drop}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        drop = params["drop"]
        if not bool(drop.any()):
            return img
        return img.masked_fill(drop.to(img.device).view(-1, *(1,) * (img.ndim - 1)), self.fill)
