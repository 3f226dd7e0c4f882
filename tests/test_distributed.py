"""Differentiable all-gather: two CPU processes on gloo with different per-rank batch sizes."""
import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnkd.distributed import all_gather_with_grad, average_gradients, is_distributed

SIZES = (3, 2)  # per-rank batch sizes differ, as under nnU-Net's DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_loss(gathered, rank):
    """A different nonlinear loss per rank, so the gradient must be summed over ranks."""
    w = torch.arange(gathered.numel(), dtype=gathered.dtype).view_as(gathered)
    return ((gathered ** 2) * (w + 1) * (rank + 1)).sum()


def _check_gather(rank):
    full = torch.randn(sum(SIZES), 4, generator=torch.Generator().manual_seed(0))
    start = sum(SIZES[:rank])
    x = full[start:start + SIZES[rank]].clone().requires_grad_(True)
    gathered = all_gather_with_grad(x)
    torch.testing.assert_close(gathered, full)
    _rank_loss(gathered, rank).backward()
    ref = full.clone().requires_grad_(True)
    sum(_rank_loss(ref, r) for r in range(len(SIZES))).backward()
    torch.testing.assert_close(x.grad, ref.grad[start:start + SIZES[rank]])
    labels = torch.arange(SIZES[rank]) + 10 * rank
    assert all_gather_with_grad(labels).tolist() == [0, 1, 2, 10, 11]
    assert all_gather_with_grad(labels > 0).tolist() == [False, True, True, True, True]


def _check_pagkd(rank):
    from nnkd.hooks import build_loss
    from nnkd.nets.outputs import NetOutputs

    g = torch.Generator().manual_seed(1)
    y_s, y_t = torch.tensor([0, 1, 0, 1, 1]), torch.tensor([1, 0, 0, 0, 1])
    f_s, f_t = torch.randn(5, 6, 3, 3, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    torch.manual_seed(2)  # same heads on both ranks
    heads = [torch.nn.Linear(c, 2) for c in (6, 4)]

    def run(gather, sl):
        torch.manual_seed(0)
        loss = build_loss("pagkd", student_widths=[6], teacher_widths=[[4]], num_classes=2, embed_dim=8,
                          num_heads=2, warmup_epochs=0, gather=gather, w_pro=1.0)
        feats = f_s[sl].clone().requires_grad_(True)
        out = loss(NetOutputs(None, None, [feats], extras={"classify": heads[0]}),
                   [NetOutputs(None, None, [f_t[sl]], extras={"classify": heads[1]})],
                   {"class_target": y_s[sl], "teacher_class_target": [y_t[sl]], "epoch": 0})
        sum(v for k, v in out.items() if not k.startswith("n_")).backward()
        return out, feats.grad, loss

    start = sum(SIZES[:rank])
    local = slice(start, start + SIZES[rank])
    out, grad, loss = run(True, local)
    ref_out, ref_grad, ref_loss = run(False, slice(None))
    for k in out:
        torch.testing.assert_close(out[k], ref_out[k], msg=k)
    # every rank computed the same global loss: the gathered gradient is W times the local one
    torch.testing.assert_close(grad / len(SIZES), ref_grad[local])
    average_gradients(loss.parameters())  # what DDP does for the loss's own parameters
    for (name, p), q in zip(loss.named_parameters(), ref_loss.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def _worker(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=len(SIZES), timeout=datetime.timedelta(seconds=60))
    try:
        assert is_distributed()
        _check_gather(rank)
        _check_pagkd(rank)
    finally:
        dist.destroy_process_group()


def test_all_gather_two_gloo_processes():
    mp.spawn(_worker, args=(_free_port(),), nprocs=len(SIZES), join=True)


def test_identity_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert not is_distributed()
    assert all_gather_with_grad(x) is x
    average_gradients([x])  # no-op
