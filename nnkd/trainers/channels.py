"""Channel subsets: a student that reads some of the dataset's channels (the CT of a PET/CT set).

Training loads every channel from nnUNet_preprocessed (paired teachers read the others) and
slices at step time. The results folder gets a self-consistent subset of ``plans.json`` and
``dataset.json``, so ``nnUNetv2_predict`` / ``nnkd predict`` need only the subset's files.
"""
from __future__ import annotations

import copy
from typing import Dict, List

import numpy as np

# Per-channel entries of a configuration in nnU-Net plans.
_PER_CHANNEL_CONFIG_KEYS = ("normalization_schemes", "use_mask_for_norm")


def subset_dataset_json(dataset_json: Dict, channels: List[int]) -> Dict:
    """dataset.json whose ``channel_names`` are the chosen channels, renumbered 0..n-1."""
    out = copy.deepcopy(dataset_json)
    names = dataset_json["channel_names"]
    out["channel_names"] = {str(i): names[str(c)] for i, c in enumerate(channels)}
    out.setdefault("nnkd", {})["source_channels"] = {str(i): c for i, c in enumerate(channels)}
    return out


def subset_plans(plans: Dict, channels: List[int]) -> Dict:
    """nnU-Net plans whose per-channel preprocessing entries keep only ``channels``."""
    out = copy.deepcopy(plans)
    for cfg in out["configurations"].values():
        for key in _PER_CHANNEL_CONFIG_KEYS:
            if key in cfg:
                cfg[key] = [cfg[key][c] for c in channels]
    props = out.get("foreground_intensity_properties_per_channel")
    if props is not None:
        out["foreground_intensity_properties_per_channel"] = {
            str(i): props[str(c)] for i, c in enumerate(channels)}
    return out


def channel_subset_dataset_class(base, channels: List[int]):
    """A subclass of nnU-Net's dataset class whose ``load_case`` returns only ``channels``."""

    class ChannelSubsetDataset(base):
        def load_case(self, identifier):
            data, seg, seg_prev, properties = super().load_case(identifier)
            return np.asarray(data[:])[channels], seg, seg_prev, properties

    ChannelSubsetDataset.__name__ = f"ChannelSubset{base.__name__}"
    return ChannelSubsetDataset
