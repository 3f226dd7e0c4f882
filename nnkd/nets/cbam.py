"""CBAM: channel then spatial attention (Woo et al., ECCV 2018), for 2D and 3D feature maps."""
from __future__ import annotations

from typing import Tuple

import torch
from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op
from torch import Tensor, nn

MODES = ("centred_residual", "centred", "plain")


class CBAM(nn.Module):
    """Convolutional block attention module on a ``(B, C, *spatial)`` map, ``len(spatial) == spatial_dims``.

    Channel attention ``Mc = sigmoid(MLP(avgpool x) + MLP(maxpool x))`` with the MLP as bias-free 1x1
    convolutions ``C -> max(1, C // reduction) -> ReLU -> C`` shared by both pooled descriptors, then
    ``x' = Mc * x``; spatial attention ``Ms = sigmoid(a)``, ``a = conv_k([mean_c x'; max_c x'])``
    (2 -> 1 channels, "same" padding, no bias as in the CBAM paper), giving the refined map ``Ms * x'``.

    ``mode``:
    * ``"plain"``: the paper's module alone, ``y = Ms * Mc * x`` (model folders written before the
      modes existed hold it);
    * ``"centred"``: the same with the spatial logits centred per sample, ``a - mean_positions(a)``;
    * ``"centred_residual"`` (nnkd's default for new models): centred, plus a shortcut,
      ``y = x + Ms * Mc * x``.

    Why (measured on the synthetic unpaired 2D benchmark, nnU-Net's SGD with lr 0.01 and Nesterov
    momentum 0.99): in the plain form the spatial attention's mean went 0.52 -> 0.005 within 70
    steps and to < 1e-4 by the second epoch, and never came back. The spatial gate is in effect one
    high-gain scalar on the whole bottleneck: its logits' overall offset (the sum of the kernel
    times the positive channel mean/max maps) gets the head's gradient summed over every channel and
    position, and nothing pins it (the head standardises its pooled inputs and the decoder
    instance-normalises, so no loss cares about the bottleneck's scale). Noisy gradients of either
    sign then drive a random walk with momentum's 100x step, and the first excursion into saturation
    is absorbing: at ``Ms ~ 0`` both ``sigmoid'`` and the gated features vanish, so no gradient pulls
    it back while the stored momentum carries it further (kernel sum on the max map -0.1 -> -8 in
    100 steps). Every loss reading the last stage then sees zeros and sends no gradient. The walk
    can end at the other side too: on the paired 3D benchmark (segmentation loss on) the kernel sum
    drifted to +14 and the attention to a constant 0.997 within 45 steps, alive but no longer
    attending to anything.
    Centring removes exactly that unconstrained offset: ``Ms`` keeps a per-sample mean near 0.5 and
    learns only *where* to attend (its function), so it cannot close as a whole. The shortcut is how
    the CBAM paper uses the module (on the residual branch of a ResNet block, output = shortcut +
    refined map); nnU-Net's bottleneck has no shortcut, so nnkd adds it: ``y`` lies between ``x`` and
    ``2x`` per position, the attention still re-weights channels and positions, and no saturated
    position silences the features or their gradient.

    ``forward(x) -> (y, Ms)``: ``y`` has the shape of ``x``; ``Ms`` is ``(B, 1, *spatial)`` in (0, 1).
    """

    def __init__(self, channels: int, spatial_dims: int, reduction: int = 8, kernel_size: int = 7,
                 mode: str = "plain"):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"CBAM kernel_size must be odd to keep the spatial size, got {kernel_size}")
        if reduction < 1:
            raise ValueError(f"CBAM reduction must be >= 1, got {reduction}")
        if mode not in MODES:
            raise ValueError(f"CBAM mode must be one of {', '.join(MODES)}, got {mode!r}")
        conv = convert_dim_to_conv_op(spatial_dims)
        hidden = max(1, channels // reduction)
        self.spatial_dims, self.mode = spatial_dims, mode
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
        refined = torch.sigmoid(from_avg + from_max) * x
        logits = self.spatial_conv(torch.cat([refined.mean(1, keepdim=True), refined.amax(1, keepdim=True)], 1))
        if self.mode != "plain":
            logits = logits - logits.mean(spatial, keepdim=True)
        ms = torch.sigmoid(logits)
        refined = ms * refined
        return (x + refined if self.mode == "centred_residual" else refined), ms

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
