"""The CBAM bottleneck stays alive: centred spatial logits, the shortcut, and a tiny training under nnU-Net's SGD."""
import pytest
import torch
from torch import nn

from nnkd.nets.cbam import CBAM
from nnkd.nets.network import NNKDNetwork
from nnkd.plan import DEFAULTS
from nnkd.trainers.cls import bottleneck_liveness
from nnkd.trainers.progress import ATTENTION_MEAN_KEY, RMS_RATIO_KEY


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(mode, dims, channels=16, seed=0):
    torch.manual_seed(seed)
    plain = CBAM(channels, dims, reduction=4, mode="plain")
    other = CBAM(channels, dims, reduction=4, mode=mode)
    other.load_state_dict(plain.state_dict())
    return plain, other


@pytest.mark.parametrize("spatial", [(6, 5), (4, 5, 3)])
def test_modes_against_the_plain_module(spatial):
    """centred: Ms = sigmoid(a - mean_positions a); centred_residual: y = x + Ms * Mc * x (same weights)."""
    x = torch.randn(3, 16, *spatial)
    dims = len(spatial)
    plain, _ = _pair("plain", dims)
    y_p, ms_p = plain(x)
    logits = torch.logit(ms_p.double())
    ms_c = torch.sigmoid(logits - logits.mean(tuple(range(2, x.ndim)), keepdim=True)).float()
    refined = y_p / ms_p  # Mc * x
    for mode, expected in (("centred", ms_c * refined), ("centred_residual", x + ms_c * refined)):
        _, cbam = _pair(mode, dims)
        y, ms = cbam(x)
        torch.testing.assert_close(ms, ms_c, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="CBAM mode must be one of centred_residual, centred, plain"):
        CBAM(4, 2, mode="residual")


@pytest.mark.parametrize("dims", [2, 3])
def test_a_drifted_gate_silences_the_plain_module_only(dims):
    """The kind of state nnU-Net's SGD drove the plain module into (a kernel far negative on the positive
    channel-max map): the plain output and its gradient vanish; the centred modes keep the attention at mean 0.5 and the
    features (and their gradient) alive."""
    x = torch.randn(2, 16, *(4,) * dims).relu()  # post-activation bottleneck
    for mode in ("plain", "centred", "centred_residual"):
        _, cbam = _pair(mode, dims)
        with torch.no_grad():
            cbam.spatial_conv.weight[:, 1] = -1.0  # every tap on the channel-max map far negative
            cbam.spatial_conv.weight[:, 0] = -0.1
        xg = x.clone().requires_grad_(True)
        y, ms = cbam(xg)
        y.pow(2).sum().backward()
        ratio = float(y.detach().pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
        if mode == "plain":
            assert float(ms.detach().mean()) < 0.01 and ratio < 0.01
            assert float(xg.grad.abs().max()) < 1e-3 * float(x.abs().max())
        else:
            assert 0.3 < float(ms.detach().mean()) < 0.7
            assert ratio > (1.0 if mode == "centred_residual" else 0.05)
            assert float(xg.grad.abs().mean()) > 0.01


def _tiny_net(dims, mode):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He

    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dims == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    unet = PlainConvUNet(1, 3, [4, 8, 32], conv, 3, [1, 2, 2], 1, 2, 1, True, norm, {"eps": 1e-5, "affine": True},
                         None, None, nn.LeakyReLU, {"inplace": True}, deep_supervision=False)
    unet.apply(InitWeights_He(1e-2))
    settings = {k: v for k, v in DEFAULTS["network"].items() if k not in ("cbam", "cbam_reduction")}
    settings["cbam_mode"] = mode
    return NNKDNetwork(unet, 3, dims, **settings)


@pytest.mark.parametrize("dims", [2, 3])
def test_tiny_training_keeps_the_bottleneck_alive(dims):
    """A few dozen steps of nnU-Net's optimiser (SGD 0.01, Nesterov momentum 0.99, weight decay 3e-5) on the
    classification loss alone (the configuration whose attention died), with the plan's default CBAM mode:
    the features every bottleneck loss reads keep a non-zero RMS, the attention is not saturated, and the
    gradient still reaches the encoder through the bottleneck."""
    torch.manual_seed(0)
    size = (16, 16) if dims == 2 else (8, 8, 8)
    n = 12
    y = torch.arange(n) % 3
    grid = torch.stack(torch.meshgrid(*[torch.arange(s).float() for s in size], indexing="ij"))
    x = torch.cos(grid[0] * (y.float() + 1).view(-1, *[1] * dims) * 0.7)[:, None] + 0.5 * torch.randn(n, 1, *size)
    net = _tiny_net(dims, DEFAULTS["network"]["cbam_mode"])
    opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    stats = []
    for step in range(40):
        idx = torch.randint(0, n, (4,))
        out = net(x[idx], return_all=True)
        loss = nn.functional.cross_entropy(out.logits, y[idx]) + 0 * out.seg.sum()
        opt.zero_grad()
        out.extras["pre_cbam"].retain_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        stats.append(bottleneck_liveness(out))
    last = stats[-10:]
    attention = sum(s[ATTENTION_MEAN_KEY] for s in last) / len(last)
    ratio = sum(s[RMS_RATIO_KEY] for s in last) / len(last)
    assert 0.05 < attention < 0.95, attention
    assert ratio > 0.5, ratio
    assert float(out.features[-1].detach().pow(2).mean()) > 1e-3
    assert float(out.extras["pre_cbam"].grad.abs().sum()) > 0


def test_liveness_statistics_of_one_batch():
    class Out:
        attention = torch.full((2, 1, 3, 3), 0.25)
        features = [torch.full((2, 4, 3, 3), 0.5)]
        extras = {"pre_cbam": torch.full((2, 4, 3, 3), 2.0)}

    stats = bottleneck_liveness(Out())
    assert stats[ATTENTION_MEAN_KEY] == pytest.approx(0.25) and stats[RMS_RATIO_KEY] == pytest.approx(0.25)
    Out.attention = None
    assert bottleneck_liveness(Out()) == {}


def test_plan_knows_every_cbam_mode_and_defaults_to_the_live_one():
    from nnkd.nets.cbam import MODES
    from nnkd.plan import CBAM_MODES, validate_plan

    assert CBAM_MODES == MODES and DEFAULTS["network"]["cbam_mode"] == "centred_residual"
    from nnkd.errors import NNKDError

    with pytest.raises(NNKDError, match="network.cbam_mode': must be one of"):
        validate_plan({"name": "x", "network": {"cbam_mode": "residual"}}, "p.json")
