"""CBAM spatial-attention maps of whole cases, aligned with the input image (interpretability).

The map is aggregated by nnU-Net's own sliding window (Gaussian tile weighting, mirroring, fold
averaging): a wrapper network returns the tile's attention, upsampled to the tile, in place of
segmentation logits. It is then resampled, un-cropped and un-transposed back onto the input grid.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnkd.errors import NNKDError


class AttentionAsSegmentation(nn.Module):
    """``forward(x)`` -> the CBAM spatial attention ``(B, n_out, *x.spatial)`` (same value in every channel)."""

    def __init__(self, network: nn.Module, num_outputs: int):
        super().__init__()
        self.network = network
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x, return_all=True)
        if out.attention is None:
            raise NNKDError("this model has no CBAM block (plan network.cbam is false): no attention map to save")
        mode = "trilinear" if x.ndim == 5 else "bilinear"
        a = F.interpolate(out.attention.float(), size=x.shape[2:], mode=mode, align_corners=False)
        return a.repeat(1, self.num_outputs, *([1] * (a.ndim - 2)))  # a copy: the predictor adds into it in place

    def load_state_dict(self, state_dict, *args, **kwargs):
        return self.network.load_state_dict(state_dict, *args, **kwargs)


def to_input_grid(att: np.ndarray, properties: dict, plans_manager, configuration_manager) -> np.ndarray:
    """Preprocessed-grid map ``(*shape)`` -> the input image's array grid (undo resampling, crop, transpose)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    target_spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    shape = properties["shape_after_cropping_and_before_resampling"]
    current = configuration_manager.spacing if len(configuration_manager.spacing) == len(shape) \
        else [target_spacing[0], *configuration_manager.spacing]
    resampled = configuration_manager.resampling_fn_probabilities(att[None].astype(np.float32), shape, current,
                                                                  target_spacing)
    resampled = np.asarray(resampled, dtype=np.float32)[0]
    full = np.zeros(properties["shape_before_cropping"], dtype=np.float32)
    full = insert_crop_into_image(full, resampled, properties["bbox_used_for_cropping"])
    return np.asarray(full).transpose(plans_manager.transpose_backward)


def write_map(array: np.ndarray, path_without_ending: str, properties: dict) -> str:
    """Write a float map with the input's geometry (NIfTI via SimpleITK), or ``.npy`` without geometry."""
    from nnkd.io import atomic_path

    sitk_stuff = properties.get("sitk_stuff")
    if sitk_stuff is None:
        path = path_without_ending + ".npy"
        with atomic_path(path) as tmp:
            np.save(tmp, array)
        return path
    import SimpleITK as sitk

    if len(sitk_stuff["spacing"]) == 2:
        array = array[0]
    img = sitk.GetImageFromArray(array.astype(np.float32))
    img.SetSpacing(sitk_stuff["spacing"])
    img.SetOrigin(sitk_stuff["origin"])
    img.SetDirection(sitk_stuff["direction"])
    path = path_without_ending + ".nii.gz"
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, tmp, True)
    return path
