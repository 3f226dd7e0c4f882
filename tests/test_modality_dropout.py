"""Per-sample modality dropout: drop rates, the never-all rule, keep, and no side effects."""
from __future__ import annotations

import math

import pytest
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from nnkd.errors import NNKDError
from nnkd.transforms.modality_dropout import ModalityDropout
from nnkd.transforms.registry import BUILTIN_TRANSFORMS

DRAWS = 20000


def _drop_masks(transform, channels, draws=DRAWS, seed=0):
    """(draws, C) bool: which channels each sample lost, read from the transformed images."""
    torch.manual_seed(seed)
    image = torch.ones(channels, 1, 1)
    out = torch.stack([transform(image=image)["image"].flatten() for _ in range(draws)])
    return out == transform.fill


def _within_binomial(successes, n, p, sigmas=4.5):
    return abs(successes / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_registered_under_its_name():
    assert BUILTIN_TRANSFORMS["modality_dropout"] is ModalityDropout


@pytest.mark.parametrize("channels", [2, 3])
def test_drop_rate_without_keep_follows_keep_one_rule(channels):
    p = 0.3
    drop = _drop_masks(ModalityDropout(p=p, fill=-5.0), channels)
    assert not drop.all(1).any()
    # Keeping one random channel when all were drawn gives p - p**C / C per channel. The plain rate p,
    # or re-drawing (p (1 - p**(C-1)) / (1 - p**C)), would fall outside the tolerance for C = 2.
    expected = p - p ** channels / channels
    for c in range(channels):
        assert _within_binomial(int(drop[:, c].sum()), DRAWS, expected), (c, drop[:, c].float().mean())


def test_kept_channel_is_uniform_when_everything_is_drawn():
    drop = _drop_masks(ModalityDropout(p=1.0), 3, draws=6000)
    assert (drop.sum(1) == 2).all()
    for c in range(3):
        assert _within_binomial(int((~drop[:, c]).sum()), 6000, 1 / 3)


def test_keep_is_never_dropped_and_others_drop_at_p():
    p = 0.3
    drop = _drop_masks(ModalityDropout(p=p, keep=[0], fill=7.0), 3)
    assert not drop[:, 0].any()
    for c in (1, 2):
        assert _within_binomial(int(drop[:, c].sum()), DRAWS, p)
    # Both droppable channels may go together: only the kept one is guaranteed.
    assert _within_binomial(int(drop[:, 1:].all(1).sum()), DRAWS, p * p)


@pytest.mark.parametrize("spatial", [(6, 5), (4, 6, 5)])
def test_whole_channels_filled_seg_untouched_input_not_modified(spatial):
    torch.manual_seed(3)
    image = torch.randn(3, *spatial)
    original = image.clone()
    seg = torch.randint(0, 3, (1, *spatial))
    seg_before = seg.clone()
    transform = ComposeTransforms([ModalityDropout(p=0.5, fill=0.0)])
    seen_drop = False
    for _ in range(20):
        out = transform(image=image, segmentation=seg)
        torch.testing.assert_close(image, original)
        assert torch.equal(out["segmentation"], seg_before)
        assert out["image"].shape == image.shape
        dropped = (out["image"] == 0).flatten(1).all(1)
        assert not dropped.all()
        torch.testing.assert_close(out["image"][~dropped], original[~dropped])
        seen_drop |= bool(dropped.any())
    assert seen_drop


def test_errors_name_the_field():
    with pytest.raises(NNKDError, match=r"modality_dropout: p must be in \[0, 1\], got 1.5"):
        ModalityDropout(p=1.5)
    with pytest.raises(NNKDError, match=r"keep must list channel indices >= 0, got \[-1\]"):
        ModalityDropout(keep=[-1])
    with pytest.raises(NNKDError, match=r"keep=\[0, 2\] names channel 2 but the image has 2 channel\(s\)"):
        ModalityDropout(keep=[2, 0])(image=torch.zeros(2, 4, 4))
