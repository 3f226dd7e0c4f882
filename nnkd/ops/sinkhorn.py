"""Batched, differentiable, log-domain entropic optimal transport (Sinkhorn) with padding masks.

Written here rather than taken from POT/geomloss: neither is installed, and we need a plain
autograd-through-the-iterations plan for many tiny padded graphs at once (a few lines of torch).
"""
from __future__ import annotations

import torch
from torch import Tensor


def sinkhorn(cost: Tensor, mask_x: Tensor, mask_y: Tensor, eps: float = 0.05, iters: int = 100) -> Tensor:
    """Entropic OT plan between the valid points of each of G padded point sets.

    cost:   ``(G, N, M)`` cost matrices; entries in padded rows/columns are ignored.
    mask_x: ``(G, N)`` bool, valid rows; mask_y: ``(G, M)`` bool, valid columns.
    Marginals are uniform over the valid points (``1/n_g`` per row, ``1/m_g`` per column).
    Returns ``pi`` ``(G, N, M)``: zero outside valid pairs; its rows/columns sum to the
    marginals (columns exactly, rows up to convergence). Gradients flow through all
    iterations. A graph without valid points gets an all-zero plan.
    """
    mask_x, mask_y = mask_x.bool(), mask_y.bool()
    valid = mask_x[:, :, None] & mask_y[:, None, :]
    log_k = -cost / eps
    # Padding gets a finite, hugely negative log-kernel and log-weight instead of log(0) = -inf,
    # which turns into NaN gradients inside logsumexp. The potentials stay within a few times the
    # largest valid |log K|, so a gap of 8 times it + 100 keeps padded terms below underflow.
    scale = torch.where(valid, log_k, 0).detach().abs().amax() if log_k.numel() else cost.new_zeros(())
    fill = -(8.0 * scale + 100.0)
    log_k = torch.where(valid, log_k, fill)
    n = mask_x.sum(1, keepdim=True).clamp_min(1).to(cost.dtype)
    m = mask_y.sum(1, keepdim=True).clamp_min(1).to(cost.dtype)
    log_a = torch.where(mask_x, -torch.log(n), fill)
    log_b = torch.where(mask_y, -torch.log(m), fill)
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(iters):  # iterations, not data: each one is a batched update of all graphs
        f = log_a - torch.logsumexp(log_k + g[:, None, :], dim=2)
        g = log_b - torch.logsumexp(log_k + f[:, :, None], dim=1)
    return torch.exp(log_k + f[:, :, None] + g[:, None, :]) * valid
