"""Logit distillation on case-level class logits: Hinton KD (REACT-KD's L_logit) and DKD.

Student logits ``student.logits`` (B, K); every teacher gives ``(B, K)`` logits for the same
cases (paired setting). Teacher logits are detached. The weight of the whole term (alpha =
0.7 in the REACT-KD paper) is the plan's loss weight, not a parameter here.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnkd.errors import NNKDError
from nnkd.losses.registry import check_teacher_weights, register_loss, teacher_weight_vector
from nnkd.ops.precision import fp32


def tempered_kl(student_logits: Tensor, teacher_probs: Tensor, T: float) -> Tensor:
    """``T^2 * KL(p_t || softmax(z_s / T))`` per case: ``(..., B, K), (..., B, K) -> (..., B)``, in float32."""
    # float32: the KL of two close distributions is a small difference of logs that float16 rounds away
    student_logits, teacher_probs = fp32(student_logits), fp32(teacher_probs)
    logp_s = F.log_softmax(student_logits / T, dim=-1)
    return T * T * (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * logp_s).sum(-1)


def _stack_teacher_logits(teachers, name: str, shape) -> Tensor:
    zt = torch.stack([t.logits.detach() for t in teachers])
    if zt.shape[1:] != shape:
        raise NNKDError(f"loss {name!r}: teacher logits {tuple(zt.shape[1:])} do not match the student's "
                        f"{tuple(shape)}: teachers and student must predict the same classes")
    return zt


@register_loss("logit_kd")
class LogitKD(nn.Module):
    """Hinton KD ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))``, batch mean.

    fusion: ``"mean_prob"`` distils from the ``teacher_weights``-weighted average (weights
    normalised) of the teachers' tempered probabilities; ``"sum"`` sums the per-teacher KD
    terms times ``teacher_weights`` (default 1 each, not normalised).
    variant: ``"kl"`` (paper) or ``"mse"``: mean squared error of the raw logits (the released
    REACT-KD code), against the weighted mean teacher logits (``mean_prob``) or summed per
    teacher (``sum``); ``T`` is unused then.
    """

    def __init__(self, T: float = 2.0, fusion: str = "mean_prob", variant: str = "kl",
                 teacher_weights: Optional[Sequence[float]] = None, teacher_widths=None):
        super().__init__()
        if fusion not in ("mean_prob", "sum"):
            raise NNKDError(f"loss 'logit_kd': fusion must be 'mean_prob' or 'sum', got {fusion!r}")
        if variant not in ("kl", "mse"):
            raise NNKDError(f"loss 'logit_kd': variant must be 'kl' or 'mse', got {variant!r}")
        if T <= 0:
            raise NNKDError(f"loss 'logit_kd': T must be > 0, got {T}")
        self.T, self.fusion, self.variant = float(T), fusion, variant
        self.teacher_weights = check_teacher_weights("logit_kd", teacher_weights, teacher_widths)

    def _weights(self, n: int, like: Tensor) -> Tensor:
        return teacher_weight_vector("logit_kd", self.teacher_weights, n, like, self.fusion == "mean_prob")

    def forward(self, student, teachers, batch) -> Tensor:
        zs = student.logits
        if len(teachers) == 0:
            return zs.sum() * 0
        with torch.autocast(zs.device.type, enabled=False):  # tempered softmax and KL in float32 (tempered_kl)
            return self._kd(fp32(zs), fp32(_stack_teacher_logits(teachers, "logit_kd", zs.shape)))

    def _kd(self, zs: Tensor, zt: Tensor) -> Tensor:
        """``zs`` (B, K), ``zt`` (n_teachers, B, K), both float32 (or float64)."""
        w = self._weights(len(zt), zs)
        if self.variant == "mse":
            if self.fusion == "mean_prob":
                return F.mse_loss(zs, torch.einsum("t,tbk->bk", w, zt))
            return (w * ((zs - zt) ** 2).mean((1, 2))).sum()
        pt = F.softmax(zt / self.T, dim=-1)
        if self.fusion == "mean_prob":
            return tempered_kl(zs, torch.einsum("t,tbk->bk", w, pt), self.T).mean()
        return (w * tempered_kl(zs.expand_as(pt), pt, self.T).mean(1)).sum()


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, T: float):
    """Per-case ``(TCKD, NCKD)`` of Zhao et al. 2022, each ``(B,)`` and scaled by ``T^2``.

    TCKD = KL between the binary (target, rest) distributions; NCKD = KL between the
    distributions over the non-target classes. Identity: ``KD = TCKD + (1 - p_t[target]) * NCKD``.
    Computed from log-sum-exps (no log(1 - p), no -inf entries) for stable values and gradients.
    """
    # float32: TCKD/NCKD are differences of nearly equal log-probabilities (float16 lost ~10 % of TCKD)
    student_logits, teacher_logits = fp32(student_logits), fp32(teacher_logits)
    gt = F.one_hot(target.long(), student_logits.shape[-1]).bool()

    def parts(z):
        z = z / T
        lse_all = torch.logsumexp(z, -1)
        lse_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), -1)
        log_p_gt = (z * gt).sum(-1) - lse_all
        return log_p_gt, lse_rest - lse_all, z - lse_rest[..., None]  # log p_y, log(1 - p_y), log p_hat

    ls_gt, ls_rest, ls_hat = parts(student_logits)
    lt_gt, lt_rest, lt_hat = parts(teacher_logits)
    tckd = lt_gt.exp() * (lt_gt - ls_gt) + lt_rest.exp() * (lt_rest - ls_rest)
    nckd = torch.where(gt, 0.0, lt_hat.exp() * (lt_hat - ls_hat)).sum(-1)
    return T * T * tckd, T * T * nckd


@register_loss("dkd")
class DKD(nn.Module):
    """Decoupled KD ``alpha * TCKD + beta * NCKD`` (batch mean), averaged over teachers.

    Needs ``batch["class_target"]``. Returns ``{"tckd": alpha * TCKD, "nckd": beta * NCKD}``.
    With several teachers: their mean weighted by ``teacher_weights`` (the plan's ``teachers[i].weight``).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, T: float = 4.0,
                 teacher_weights: Optional[Sequence[float]] = None, teacher_widths=None):
        super().__init__()
        if T <= 0:
            raise NNKDError(f"loss 'dkd': T must be > 0, got {T}")
        self.alpha, self.beta, self.T = float(alpha), float(beta), float(T)
        self.teacher_weights = check_teacher_weights("dkd", teacher_weights, teacher_widths)

    def forward(self, student, teachers, batch):
        zs = student.logits
        if len(teachers) == 0:
            zero = zs.sum() * 0
            return {"tckd": zero, "nckd": zero}
        zt = _stack_teacher_logits(teachers, "dkd", zs.shape)
        target = batch["class_target"].long().expand(len(zt), -1)
        tckd, nckd = dkd_terms(zs.expand_as(zt), zt, target, self.T)  # (n_teachers, B) each
        w = teacher_weight_vector("dkd", self.teacher_weights, len(zt), zs)
        return {"tckd": self.alpha * (w @ tckd.mean(1)), "nckd": self.beta * (w @ nckd.mean(1))}
