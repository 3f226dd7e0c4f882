"""Whole-case classification with nnU-Net's sliding-window predictor.

How window logits become one case prediction: every network call the predictor makes (each
sliding-window tile, each test-time mirror, each fold of an ensemble) yields class logits for
the tile; their softmax probabilities are averaged with equal weight. The segmentation path
is nnU-Net's, unchanged (Gaussian-weighted tile logits, mirroring, fold averaging).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class ClassProbabilityCollector(nn.Module):
    """Wraps an :class:`~nnkd.nets.network.NNKDNetwork` for ``nnUNetPredictor``.

    ``forward(x)`` returns the segmentation logits the predictor expects and accumulates the
    class probabilities of every sample it sees; ``mean()`` is their average since ``reset()``.
    ``load_state_dict`` and ``state_dict`` act on the wrapped network, so the predictor's
    per-fold weight loading works unchanged.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.reset()

    def reset(self) -> None:
        self._sum = None
        self._count = 0

    def forward(self, x: torch.Tensor):
        out = self.network(x, return_all=True)
        probs = torch.softmax(out.logits.float(), dim=1).sum(0)
        self._sum = probs if self._sum is None else self._sum + probs
        self._count += x.shape[0]
        return out.seg

    def mean(self) -> torch.Tensor:
        if not self._count:
            raise RuntimeError("no network call since reset()")
        return (self._sum / self._count).cpu()

    def load_state_dict(self, state_dict, *args, **kwargs):
        return self.network.load_state_dict(state_dict, *args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    @property
    def decoder(self):
        return self.network.decoder


def predict_case(predictor, data: torch.Tensor, ensemble: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(C, *shape) preprocessed case -> (segmentation logits, class probabilities (K,)).

    ``predictor.network`` must be a :class:`ClassProbabilityCollector`. With ``ensemble`` the
    predictor's loaded fold parameters are averaged (``predict_logits_from_preprocessed_data``);
    otherwise the network's current weights are used.
    """
    collector = predictor.network
    collector.reset()
    if ensemble:
        logits = predictor.predict_logits_from_preprocessed_data(data)
    else:
        logits = predictor.predict_sliding_window_return_logits(data)
    return logits.cpu(), collector.mean()
