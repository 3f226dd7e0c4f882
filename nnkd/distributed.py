"""Differentiable all-gather for losses whose groups must span the global (multi-rank) batch.

Gradient convention. Under DDP every rank computes the same loss ``L`` from the same gathered
tensor, then DDP *averages* parameter gradients over the W ranks. The backward of the gather
therefore *sums* the gathered tensor's gradient over ranks before keeping the local slice:
rank r receives ``sum_r' dL_r'/dx_r = W * dL/dx_r``, and DDP's division by W turns that into
``dL/dx_r``, exactly the gradient of a single process holding the whole batch. (With
rank-specific losses the sum is also what the total loss ``sum_r L_r`` requires.)

``torch.distributed.nn.functional.all_gather`` is deprecated, its successor is private, and
both need equal sizes on every rank; nnU-Net's DDP gives ranks batch sizes that differ by one,
hence this small function (gather sizes, pad, gather, trim).
"""
from __future__ import annotations

from typing import List

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_padded(x: Tensor) -> tuple[Tensor, List[int]]:
    """All ranks' ``x`` concatenated along dim 0 (sizes may differ), and the per-rank sizes."""
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sizes


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out, sizes = _gather_padded(x.contiguous())
        ctx.sizes = sizes
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # see the module docstring
        start = sum(ctx.sizes[: dist.get_rank()])
        return grad[start : start + ctx.sizes[dist.get_rank()]]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` (N_r, ...) along dim 0 in rank order -> (sum_r N_r, ...).

    Identity without an initialised process group (or with one rank). Differentiable for
    floating tensors; integer/bool tensors (labels) are gathered without autograd. Every rank
    must call it, in the same order, with the same trailing shape and dtype.
    """
    if not is_distributed():
        return x
    if x.dtype == torch.bool:  # not every backend reduces/gathers bool
        return _gather_padded(x.to(torch.uint8))[0].bool()
    if not x.requires_grad:
        return _gather_padded(x.contiguous())[0]
    return _AllGather.apply(x)


def average_gradients(parameters) -> None:
    """Average ``.grad`` of ``parameters`` over ranks (no-op when not distributed).

    For trainable loss modules that are not inside the network's DDP wrapper: call after
    ``backward()`` and before ``optimizer.step()`` so every rank keeps identical weights.
    Parameters without a gradient are skipped, so they must lack one on every rank alike
    (the group losses give every parameter a gradient, zero during warm-up).
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)
