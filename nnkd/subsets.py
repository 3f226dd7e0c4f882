"""Prediction with a subset of a model's channels.

A model trained with modality dropout (plan field ``modality_dropout``) saw samples whose droppable
channels were set to ``fill`` in the normalised network input. It may therefore predict a case whose
droppable channels are absent, provided the absent channels get exactly that input: nnU-Net
preprocesses a placeholder (a copy of a present channel) so that the present channels are
normalised as always, and :func:`fill_channels` then overwrites the placeholder in every network
input (each sliding-window tile and mirror), as :class:`~nnkd.transforms.modality_dropout.ModalityDropout`
did in training. Channels the model never lost in training are refused.

One difference from training remains by construction: nnU-Net crops every channel to the bounding box of
the nonzero voxels of all channels (and ``use_mask_for_norm`` normalises within that region). The
placeholder's nonzero region is a present channel's, so an absent channel no longer widens the crop.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Sequence

import torch

from nnkd.errors import NNKDError


@dataclass(frozen=True)
class ChannelContract:
    """Which of a model's channels (indices into its dataset.json ``channel_names``) may be absent.

    ``fill``: the value dropped channels had in the normalised network input (None: no dropout).
    ``reasons``: for each channel that may not be absent, why (for refusals).
    """

    model_folder: str
    channel_names: List[str]
    droppable: FrozenSet[int]
    fill: Optional[float]
    reasons: Dict[int, str]

    def name(self, subset: Sequence[int]) -> str:
        """``CT+FDG``: the channels of ``subset`` in the model's order."""
        return "+".join(self.channel_names[c] for c in sorted(subset))

    def problems(self, present: Sequence[int]) -> List[str]:
        """Why predicting with only ``present`` is refused (empty: allowed); names the model and every channel."""
        missing = [c for c in range(len(self.channel_names)) if c not in set(present)]
        out = [f"the model {self.model_folder} was never trained without channel {self.channel_names[c]!r} "
               f"(_{c:04d}): {self.reasons[c]}" for c in missing if c not in self.droppable]
        if not present:
            out.append(f"the model {self.model_folder} needs at least one channel; none is present")
        return out

    def allowed_subsets(self) -> List[tuple]:
        """Every channel subset the model accepts, the complete one first, then by size and order."""
        n = len(self.channel_names)
        required = [c for c in range(n) if c not in self.droppable]
        optional = sorted(self.droppable)
        out = []
        for k in range(len(optional), -1, -1):
            for extra in itertools.combinations(optional, k):
                subset = tuple(sorted(required + list(extra)))
                if subset:
                    out.append(subset)
        return out


def channel_contract(model_folder: str, channel_names: Dict[str, str],
                     plans: Sequence[Optional[dict]]) -> ChannelContract:
    """The contract of a model folder from its folds' effective plans (each checkpoint's ``nnkd.plan``;
    None for a checkpoint without one). A channel is droppable only if every fold's plan dropped it
    (``p > 0``, not in ``keep``, in ``droppable``); the folds must agree on ``fill``.

    Channel lists are resolved against the model's own channels, which are the channels the training
    transform saw (indices into the network input)."""
    from nnkd.channels import resolve_channels

    names = [channel_names[k] for k in sorted(channel_names, key=int)]
    n = len(names)
    droppable, fills, reasons = set(range(n)), set(), {}
    for plan in plans:
        md = (plan or {}).get("modality_dropout")
        if md is None:
            for c in range(n):
                reasons.setdefault(c, "it was trained without modality_dropout")
            droppable.clear()
            continue
        if not md.get("p"):
            for c in range(n):
                reasons.setdefault(c, "its modality_dropout has p = 0")
            droppable.clear()
        keep = set(resolve_channels(md["keep"], channel_names, "modality_dropout.keep") if md.get("keep") else [])
        allowed = set(range(n))
        if md.get("droppable") is not None:
            allowed = set(resolve_channels(md["droppable"], channel_names, "modality_dropout.droppable"))
        for c in range(n):
            if c in keep:
                reasons.setdefault(c, "it is in modality_dropout.keep")
            elif c not in allowed:
                reasons.setdefault(c, "it is not in modality_dropout.droppable")
        droppable &= allowed - keep
        fills.add(float(md.get("fill", 0.0)))
    if len(fills) > 1:
        raise NNKDError(f"{model_folder}: the folds' modality_dropout.fill differ ({sorted(fills)}); predict with "
                        f"folds trained alike (-f)")
    return ChannelContract(model_folder, names, frozenset(droppable), fills.pop() if fills and droppable else None,
                           reasons)


def parse_channels(spec: Sequence[str], channel_names: Dict[str, str], model_folder: str) -> List[int]:
    """``--channels CT 1`` (names or indices) -> sorted model channel indices; refusals name the model."""
    from nnkd.channels import resolve_channels

    return sorted(resolve_channels([int(s) if str(s).isdigit() else s for s in spec], channel_names,
                                   f"--channels (model {model_folder})"))


def fill_channels(x: torch.Tensor, channels: Sequence[int], value: float) -> torch.Tensor:
    """(B, C, *spatial) network input with ``channels`` set to ``value`` (a new tensor; ``x`` unchanged),
    the operation of :class:`~nnkd.transforms.modality_dropout.ModalityDropout` on every sample."""
    if not channels:
        return x
    mask = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
    mask[list(channels)] = True
    return x.masked_fill(mask.view(1, -1, *(1,) * (x.ndim - 2)), value)
