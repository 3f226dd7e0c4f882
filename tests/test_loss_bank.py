import os

import torch

from conftest import nnkd_cli
from nnkd.hooks import build_loss
from nnkd.nets.outputs import NetOutputs
from nnkd.trainers.distill import LossBank


class _Dict(torch.nn.Module):
    def forward(self, student, teachers, batch):
        s = student.logits.sum()
        return {"a": s, "b": 2 * s, "n_skipped": torch.tensor(3.0)}


def test_weights_terms_and_counters():
    logits = torch.tensor([[1.0, 2.0]], requires_grad=True)
    out = NetOutputs(seg=torch.zeros(1, 2, 4, 4), logits=logits, features=[])
    teacher = NetOutputs(seg=torch.zeros(1, 2, 4, 4), logits=torch.tensor([[2.0, 1.0]]), features=[])
    bank = LossBank({"kd": build_loss("logit_kd", T=2.0), "d": _Dict()}, {"kd": 0.7, "d": 10.0})
    terms = bank(out, [teacher], {"class_target": torch.tensor([0])})
    assert set(terms) == {"kd", "d/a", "d/b", "n_d/skipped"}
    assert torch.allclose(terms["d/a"], torch.tensor(30.0)) and torch.allclose(terms["d/b"], torch.tensor(60.0))
    assert terms["n_d/skipped"].item() == 3.0 and not terms["n_d/skipped"].requires_grad  # counters unweighted
    p_t, log_p_s = torch.softmax(teacher.logits / 2, 1), torch.log_softmax(logits / 2, 1)
    expected = 0.7 * 4 * (p_t * (p_t.log() - log_p_s)).sum()
    assert torch.allclose(terms["kd"], expected)
    sum(v for k, v in terms.items() if not k.startswith("n_")).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_env_workspace_lines(tmp_path):
    out = nnkd_cli("env", "--workspace", tmp_path / "ws").stdout
    for var in ("nnUNet_extTrainer", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert f"export {var}=" in out
    assert os.path.isdir(tmp_path / "ws" / "nnUNet_results")
    assert "nnkd/nnunet_ext" in out.split("nnUNet_extTrainer=")[1].splitlines()[0]


def _teacher_network():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnkd.nets.network import NNKDNetwork

    torch.manual_seed(0)
    unet = PlainConvUNet(2, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], 2, [1, 1], conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    return NNKDNetwork(unet, 3, 3, head_hidden=8).eval()


def test_teacher_forward_decodes_segmentation_only_on_demand():
    from nnkd.trainers.distill import TeacherOutputs, teacher_forward

    net = _teacher_network()
    x = torch.randn(2, 2, 8, 16, 16)
    calls = []
    net.decoder.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        eager = net(x, return_all=True)
        assert len(calls) == 1
        lazy = teacher_forward(net, x)
    assert isinstance(lazy, TeacherOutputs) and len(calls) == 1  # the decoder did not run
    assert "decoder" in dict(net.named_children()) and net.decoder is not None  # network restored
    torch.testing.assert_close(lazy.logits, eager.logits)
    for a, b in zip(lazy.features, eager.features):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(lazy.attention, eager.attention)
    seg = lazy.seg  # decoded now, under no_grad, once
    assert len(calls) == 2 and not seg.requires_grad
    torch.testing.assert_close(seg, eager.seg)
    assert lazy.seg is seg and len(calls) == 2
    # a network that is not an NNKDNetwork runs its own forward
    plain = torch.nn.Module()
    plain.forward = lambda x, return_all=False: NetOutputs(seg=x, logits=x, features=[])
    assert not isinstance(teacher_forward(plain, x), TeacherOutputs)
