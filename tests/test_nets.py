"""CBAM, classification head and the nnkd wrapper network built from (toy) nnU-Net plans."""
from __future__ import annotations

import copy
import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnkd.errors import NNKDError
from nnkd.nets.cbam import CBAM
from nnkd.nets.head import ClassificationHead
from nnkd.nets.network import NetworkSettings, NNKDNetwork, build_network
from nnkd.nets.outputs import NetOutputs

WIDTHS = [4, 8, 16]
NUM_CLASSES = 3
SEG_OUTPUTS = 2


def toy_plans(spatial_dims: int, arch: str = "PlainConvUNet", nnkd_network: dict | None = None) -> dict:
    """A small plans dict with the structure nnUNetv2_plan_and_preprocess writes (one configuration)."""
    conv = {2: "Conv2d", 3: "Conv3d"}[spatial_dims]
    norm = {2: "InstanceNorm2d", 3: "InstanceNorm3d"}[spatial_dims]
    patch = [32, 32] if spatial_dims == 2 else [16, 16, 16]
    arch_kwargs = {
        "n_stages": len(WIDTHS),
        "features_per_stage": WIDTHS,
        "conv_op": f"torch.nn.modules.conv.{conv}",
        "kernel_sizes": [[3] * spatial_dims] * len(WIDTHS),
        "strides": [[1] * spatial_dims] + [[2] * spatial_dims] * (len(WIDTHS) - 1),
        ("n_conv_per_stage" if arch == "PlainConvUNet" else "n_blocks_per_stage"): [1, 2, 2],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.{norm}",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    config = {
        "data_identifier": f"nnUNetPlans_{spatial_dims}d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch,
        "median_image_size_in_voxels": patch,
        "spacing": [1.0] * spatial_dims,
        "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"],
        "use_mask_for_norm": [False, False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": f"dynamic_network_architectures.architectures.unet.{arch}",
            "arch_kwargs": arch_kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": True,
    }
    plans = {
        "dataset_name": "Dataset999_Toy",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0] * 3,
        "original_median_shape_after_transp": [16, 32, 32],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"2d" if spatial_dims == 2 else "3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }
    if nnkd_network is not None:
        plans["nnkd"] = {"network": nnkd_network}
    return plans


def _build(spatial_dims, arch="PlainConvUNet", deep_supervision=True, seed=0, **network):
    torch.manual_seed(seed)
    pm = PlansManager(toy_plans(spatial_dims, arch, {"num_classes": NUM_CLASSES, "head_hidden": 16, **network}))
    cm = pm.get_configuration(pm.available_configurations[0])
    return build_network(pm, cm, 2, SEG_OUTPUTS, enable_deep_supervision=deep_supervision), pm, cm


def _input(spatial_dims, batch=2, seed=1):
    size = (32, 32) if spatial_dims == 2 else (16, 16, 16)
    return torch.randn(batch, 2, *size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------- CBAM / head


def _naive_conv_same(x, weight):
    """Cross-correlation with zero 'same' padding as an explicit sum over kernel offsets."""
    k = weight.shape[-1]
    r = k // 2
    spatial = x.shape[2:]
    padded = F.pad(x, [r] * (2 * len(spatial)))
    out = torch.zeros(x.shape[0], weight.shape[0], *spatial, dtype=x.dtype)
    for offset in itertools.product(range(k), repeat=len(spatial)):
        window = padded[(slice(None), slice(None)) + tuple(slice(o, o + n) for o, n in zip(offset, spatial))]
        out += torch.einsum("oc,bc...->bo...", weight[(slice(None), slice(None)) + offset], window)
    return out


def _naive_cbam(x, cbam):
    w1 = cbam.channel_mlp[0].weight.flatten(1)  # (hidden, C)
    w2 = cbam.channel_mlp[2].weight.flatten(1)  # (C, hidden)
    flat = x.flatten(2)

    def mlp(v):
        return torch.einsum("ch,bh->bc", w2, torch.relu(torch.einsum("hc,bc->bh", w1, v)))

    mc = torch.sigmoid(mlp(flat.mean(-1)) + mlp(flat.max(-1).values))
    x = x * mc.view(*mc.shape, *(1,) * (x.ndim - 2))
    pooled = torch.stack([x.mean(1), x.max(1).values], 1)
    ms = torch.sigmoid(_naive_conv_same(pooled, cbam.spatial_conv.weight))
    return x * ms, ms


@pytest.mark.parametrize("spatial", [(9, 7), (5, 6, 4)])
def test_cbam_matches_naive_reference(spatial):
    torch.manual_seed(0)
    cbam = CBAM(16, len(spatial), reduction=4)
    x = torch.randn(3, 16, *spatial)
    y, ms = cbam(x)
    ref_y, ref_ms = _naive_cbam(x, cbam)
    assert y.shape == x.shape and ms.shape == (3, 1, *spatial)
    torch.testing.assert_close(ms, ref_ms, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, ref_y, atol=1e-5, rtol=1e-5)
    assert ((ms > 0) & (ms < 1)).all()


def test_cbam_reduction_guard_and_shape_check():
    cbam = CBAM(4, 2, reduction=8)  # 4 // 8 == 0 -> hidden width 1
    assert cbam.channel_mlp[0].out_channels == 1
    assert cbam(torch.randn(2, 4, 5, 5))[0].shape == (2, 4, 5, 5)
    with pytest.raises(ValueError, match="3 spatial dims"):
        CBAM(4, 3)(torch.randn(2, 4, 5, 5))


@pytest.mark.parametrize("spatial", [(6, 5), (3, 4, 5)])
def test_head_pool_classify_forward(spatial):
    torch.manual_seed(0)
    head = ClassificationHead(8, NUM_CLASSES, hidden=16).eval()
    x = torch.randn(2, 8, *spatial)
    pooled = head.pool(x)
    torch.testing.assert_close(pooled, x.mean(dim=tuple(range(2, x.ndim))))
    assert head(x).shape == (2, NUM_CLASSES)
    torch.testing.assert_close(head(x), head.classify(pooled))


@pytest.mark.parametrize("pool", ["avg", "avgmax"])
@pytest.mark.parametrize("spatial", [(8, 6), (4, 4, 3)])
def test_classify_stage_average_is_the_head_as_a_function_of_one_stage(pool, spatial):
    """Every pooled stage: ``f(avg of stage s)`` reproduces the logits, and its gradient is the head's gradient
    through that stage's average (by autograd on the full head, avg pooling: exact); a stage the head does not
    pool is refused."""
    torch.manual_seed(0)
    widths = [4, 6, 8]
    stages = [torch.randn(2, c, *[max(1, n // 2 ** i) for n in spatial]) for i, c in enumerate(widths)]
    head = ClassificationHead(widths[1:], NUM_CLASSES, hidden=16, pool=pool).eval()
    for s in (1, 2, -1, -2):
        f = head.classify_stage_average(stages, s)
        avg = stages[s].flatten(2).mean(-1)
        torch.testing.assert_close(f(avg), head(stages))
        if pool == "avg":
            leaf = [t.clone().requires_grad_(True) for t in stages]
            head(leaf)[:, 1].sum().backward()
            a = avg.clone().requires_grad_(True)
            f(a)[:, 1].sum().backward()
            n = stages[s][0, 0].numel()
            torch.testing.assert_close(a.grad / n, leaf[s].grad.flatten(2).mean(-1))
    for bad in (0, -3, 3):
        with pytest.raises(ValueError, match=r"head pools encoder stages 1\.\.2"):
            head.classify_stage_average(stages, bad)


# --------------------------------------------------------------------------------------------- network

ARCHS = [(dims, arch) for dims in (2, 3) for arch in ("PlainConvUNet", "ResidualEncoderUNet")]


@pytest.mark.parametrize("dims,arch", ARCHS)
def test_forward_matches_plain_unet_structure_and_head_is_not_run(dims, arch):
    net, _, cm = _build(dims, arch)
    unet = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, 2, SEG_OUTPUTS, deep_supervision=True)
    x = _input(dims)
    head_calls = []
    net.head.register_forward_hook(lambda *args: head_calls.append(1))
    with torch.no_grad():
        seg, plain = net(x), unet(x)
    assert head_calls == []
    assert isinstance(seg, list) and [s.shape for s in seg] == [p.shape for p in plain]
    net.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    with torch.no_grad():
        assert torch.is_tensor(net(x)) and net(x).shape == (2, SEG_OUTPUTS, *x.shape[2:])


@pytest.mark.parametrize("dims,arch", ARCHS)
def test_without_cbam_segmentation_equals_plain_unet(dims, arch):
    net, _, cm = _build(dims, arch, deep_supervision=False, cbam=False)
    unet = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, 2, SEG_OUTPUTS, deep_supervision=False)
    # nnU-Net key names for the shared part: a plain nnU-Net state dict loads into it directly.
    missing, unexpected = net.load_state_dict(unet.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("head.") for k in missing)
    net.eval(), unet.eval()
    x = _input(dims)
    with torch.no_grad():
        torch.testing.assert_close(net(x), unet(x))
        out = net(x, return_all=True)
    assert out.attention is None and out.logits.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("dims,arch", ARCHS)
def test_return_all_outputs_and_gradient_to_encoder(dims, arch):
    net, _, _ = _build(dims, arch)
    x = _input(dims)
    out = net(x, return_all=True)
    assert isinstance(out, NetOutputs)
    assert out.logits.shape == (2, NUM_CLASSES)
    assert net.stage_widths == WIDTHS
    assert [f.shape[1] for f in out.features] == WIDTHS
    bottleneck = out.features[-1]
    assert out.attention.shape == (2, 1, *bottleneck.shape[2:])
    assert bottleneck.shape[2:] == tuple(s // 4 for s in x.shape[2:])
    assert isinstance(out.seg, list) and out.seg[0].shape == (2, SEG_OUTPUTS, *x.shape[2:])

    out.logits.sum().backward()
    first_conv = next(p for n, p in net.encoder.named_parameters() if p.ndim == dims + 2)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert net.cbam.spatial_conv.weight.grad.abs().sum() > 0
    # The logits do not depend on the decoder (which also holds a reference to the encoder).
    assert all(p.grad is None for n, p in net.decoder.named_parameters() if not n.startswith("encoder."))

    net.eval()
    with torch.no_grad():
        out = net(x, return_all=True)
        torch.testing.assert_close(out.extras["classify"](out.features[-1].mean(tuple(range(2, dims + 2)))),
                                   out.logits)
        torch.testing.assert_close(net.classify_logits(x), out.logits)


@pytest.mark.parametrize("dims,arch", [(2, "ResidualEncoderUNet"), (3, "PlainConvUNet")])
def test_state_dict_round_trip(dims, arch):
    a, _, _ = _build(dims, arch, seed=0)
    b, _, _ = _build(dims, arch, seed=1)
    x = _input(dims)
    a.eval(), b.eval()
    with torch.no_grad():
        assert not torch.allclose(a.classify_logits(x), b.classify_logits(x))
        b.load_state_dict(copy.deepcopy(a.state_dict()))
        ya, yb = a(x, return_all=True), b(x, return_all=True)
    assert any(k.startswith("cbam.") for k in a.state_dict())
    torch.testing.assert_close(ya.logits, yb.logits)
    for sa, sb in zip(ya.seg, yb.seg):
        torch.testing.assert_close(sa, sb)


# --------------------------------------------------------------------------------------------- plans


def test_build_network_signature_matches_nnunet():
    ours = list(inspect.signature(build_network).parameters)
    theirs = list(inspect.signature(nnUNetTrainer.build_network_architecture).parameters)
    assert ours == theirs


def test_settings_defaults_and_round_trip():
    settings = NetworkSettings.from_plans({"nnkd": {"network": {"num_classes": 4}}})
    assert settings == NetworkSettings(num_classes=4, cbam=True, cbam_reduction=8, head_hidden=256,
                                       head_dropout=0.2)
    assert NetworkSettings.from_plans({"nnkd": {"network": settings.to_dict()}}) == settings
    net, _, _ = _build(2, head_dropout=0.5, cbam_reduction=2)
    assert net.head.mlp[2].p == 0.5 and net.cbam.channel_mlp[0].out_channels == WIDTHS[-1] // 2


@pytest.mark.parametrize("nnkd_network,match", [
    (None, r"'nnUNetPlans' of dataset 'Dataset999_Toy' have no 'nnkd.network' section.*not written by an nnkd"),
    ({"cbam": True}, r"nnkd.network.num_classes is required"),
    ({"num_classes": 3, "cbam_reductoin": 4}, r"unknown field\(s\) \['cbam_reductoin'\]"),
    ({"num_classes": -1, "head_dropout": 1.0}, r"num_classes must be an integer >= 0 \(0: no classification head\), got -1; "
                                              r"nnkd.network.head_dropout must be a number in \[0, 1\)"),
    ({"num_classes": 3, "cbam": "yes"}, r"nnkd.network.cbam must be true or false, got 'yes'"),
])
def test_build_network_rejects_bad_plans(nnkd_network, match):
    pm = PlansManager(toy_plans(2, nnkd_network=nnkd_network))
    with pytest.raises(NNKDError, match=match):
        build_network(pm, pm.get_configuration("2d"), 2, SEG_OUTPUTS)


def test_no_head_when_num_classes_is_zero():
    """num_classes 0: a segmentation-only network (no head parameters, logits None, same seg and features)."""
    pm = PlansManager(toy_plans(2, nnkd_network={"num_classes": 0}))
    net = build_network(pm, pm.get_configuration("2d"), 2, SEG_OUTPUTS, False)
    assert net.head is None and not any(k.startswith("head.") for k in net.state_dict())
    x = torch.randn(2, 2, 32, 32)
    out = net(x, return_all=True)
    assert out.logits is None and "classify" not in out.extras
    assert torch.equal(out.seg, net(x)) and len(out.features) == len(net.stage_widths)


def test_unsupported_architecture_is_named():
    with pytest.raises(NNKDError, match=r"network architecture Linear is not supported by nnkd"):
        NNKDNetwork(torch.nn.Linear(2, 2), NUM_CLASSES, 2)
