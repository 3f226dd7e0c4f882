"""LsKD / ImPA / image-level KD: the "auto" stage follows the lesion size (every lesion spans >= 2.5 cells)."""
from types import SimpleNamespace

import numpy as np
import pytest

from nnkd.hooks import build_loss
from nnkd.losses.lesion import lesion_stage
from nnkd.ops.keypoints import training_lesion_extent
from nnkd.trainers.distill import nnKDTrainerDistill

STRIDES_2D = [[1, 1], [2, 2], [4, 4], [8, 8], [16, 16]]  # nnU-Net's 64-px 2d plan (lesion2d)


def test_rule_picks_the_deepest_stage_with_enough_cells():
    assert lesion_stage(STRIDES_2D, [5, 5]) == 1  # 5 px lesions: stride 2 (2.5 cells), not stride 4
    assert lesion_stage(STRIDES_2D, [10, 12]) == 2  # the narrower axis decides
    assert lesion_stage(STRIDES_2D, [80, 80]) == 4
    assert lesion_stage(STRIDES_2D, [2, 2]) == 0  # nothing qualifies: the full-resolution stage
    assert lesion_stage(STRIDES_2D, [12, 12], min_cells=3) == 2
    # anisotropic 3D plan: the through-plane axis is pooled later
    assert lesion_stage([[1, 1, 1], [1, 2, 2], [2, 4, 4], [4, 8, 8]], [3, 10, 10]) == 1


def test_losses_resolve_auto_with_strides_and_extent():
    widths = [4, 8, 16, 32, 64]
    kw = dict(student_widths=widths, teacher_widths=[[4, 8, 16, 32, 48]], stage_strides=STRIDES_2D,
              lesion_extent=[5.0, 6.0])
    lskd = build_loss("lskd", spatial_dims=2, **kw)
    assert lskd.stage == 1 and lskd.teacher_stage == 1 and lskd.proj is None  # both 8 wide there
    assert build_loss("image_kd", **kw).stage == 1
    assert build_loss("impa", stage_strides=STRIDES_2D, lesion_extent=[20, 20]).stage == 3
    # an explicit stage wins; without lesion information "auto" stays the stride-32 rule
    assert build_loss("lskd", spatial_dims=2, stage=-1, **kw).stage == -1
    legacy = build_loss("lskd", spatial_dims=2, student_widths=widths, teacher_widths=[[4, 8, 16, 32, 48]])
    assert legacy.stage == "auto" and legacy.proj is not None  # deepest of 5 stages: 64 -> 48


class _Cases:
    """nnU-Net dataset stand-in: ``identifiers`` and ``load_case(k) -> (data, seg, ...)``."""

    def __init__(self, segs):
        self.segs = segs
        self.identifiers = sorted(segs)

    def load_case(self, k):
        return None, self.segs[k], None, {}


def _seg(*boxes, shape=(32, 32)):
    seg = np.zeros((1, *shape), np.int16)
    for (y0, x0, h, w) in boxes:
        seg[0, y0:y0 + h, x0:x0 + w] = 1
    return seg


def test_training_extent_is_a_low_percentile_of_box_sides():
    cases = _Cases({"a": _seg((2, 2, 6, 9), (20, 20, 8, 8)), "b": _seg((5, 5, 10, 7)), "c": _seg()})
    # sides (h, w): (6, 9), (8, 8), (10, 7); 5th percentile by linear interpolation
    expected = np.percentile(np.array([[6, 9], [8, 8], [10, 7]]), 5, axis=0).round(2).tolist()
    assert training_lesion_extent(cases) == expected
    assert training_lesion_extent(_Cases({"c": _seg()})) is None


def test_trainer_context_measures_the_training_masks_once():
    logged = []
    cases = {"a": _seg((2, 2, 6, 6)), "b": _seg((4, 4, 12, 12))}
    fake = SimpleNamespace(
        kd_plan={"losses": [{"name": "lskd", "params": {}}]},
        dataset_class=lambda folder, keys: _Cases({k: cases[k] for k in keys}),
        preprocessed_dataset_folder="/nowhere", do_split=lambda: (["b", "a"], []),
        configuration_manager=SimpleNamespace(pool_op_kernel_sizes=[[1, 1]] + [[2, 2]] * 4),
        print_to_log_file=logged.append)
    ctx = nnKDTrainerDistill._lesion_context(fake)
    assert ctx["stage_strides"] == STRIDES_2D  # cumulative strides from the plans' per-stage pooling
    assert ctx["lesion_extent"] == np.percentile([6, 12], 5).round(2).repeat(2).tolist()
    assert len(logged) == 1 and "lesion extent" in logged[0]
    fake.kd_plan = {"losses": [{"name": "lskd", "params": {"lesion_extent": [4, 4]}}]}
    assert nnKDTrainerDistill._lesion_context(fake) == {}  # given in the plan: masks not read
