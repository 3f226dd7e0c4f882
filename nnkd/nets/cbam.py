"""CBAM: channel then spatial attention (Woo et al., ECCV 2018), for 2D and 3D feature maps."""
from __future__ import annotations

from typing import Tuple

import torch
from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op
from torch import Tensor, nn


class CBAM(nn.Module):
    """Convolutional block attention module on a ``(B, C, *spatial)`` map, ``len(spatial) == spatial_dims``.

    Channel attention ``Mc = sigmoid(MLP(avgpool x) + MLP(maxpool x))`` with the MLP as bias-free 1x1
    convolutions ``C -> max(1, C // reduction) -> ReLU -> C`` shared by both pooled descriptors, then
    ``x = Mc * x``; spatial attention ``Ms = sigmoid(conv_k([mean_c x; max_c x]))`` (2 -> 1 channels,
    "same" padding, no bias as in the CBAM paper), then ``x = Ms * x``.

    ``forward(x) -> (y, Ms)``: ``y`` has the shape of ``x``; ``Ms`` is ``(B, 1, *spatial)`` in (0, 1).
    """

    def __init__(self, channels: int, spatial_dims: int, reduction: int = 8, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"CBAM kernel_size must be odd to keep the spatial size, got {kernel_size}")
        if reduction < 1:
            raise ValueError(f"CBAM reduction must be >= 1, got {reduction}")
        conv = convert_dim_to_conv_op(spatial_dims)
        hidden = max(1, channels // reduction)
        self.spatial_dims = spatial_dims
        self.channel_mlp = nn.Sequential(
            conv(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            conv(hidden, channels, kernel_size=1, bias=False),
        )
        self.spatial_conv = conv(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"CBAM({self.spatial_dims}D) expects (B, C, *spatial) with {self.spatial_dims} "
                             f"spatial dims, got shape {tuple(x.shape)}")
        spatial = tuple(range(2, x.ndim))
        # Both descriptors go through the shared MLP in one call, stacked along the batch.
        descriptors = torch.cat([x.mean(spatial, keepdim=True), x.amax(spatial, keepdim=True)])
        from_avg, from_max = self.channel_mlp(descriptors).chunk(2)
        x = torch.sigmoid(from_avg + from_max) * x
        ms = torch.sigmoid(self.spatial_conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        return ms * x, ms
