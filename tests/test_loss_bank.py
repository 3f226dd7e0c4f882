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
