"""DeLong's test for correlated ROC AUCs on the same cases (DeLong et al. 1988), computed with
midranks in O(N log N) (Sun & Xu 2014) instead of the O(m n) pairwise kernel.

For m positive scores X and n negative scores Y of one model, the structural components are
``V10_i = P(Y < X_i) + P(Y = X_i) / 2`` (over the negatives) and
``V01_j = P(X > Y_j) + P(X = Y_j) / 2`` (over the positives); AUC = mean(V10) = mean(V01) and, for
several models, ``Cov(AUC) = S10 / m + S01 / n`` with S10, S01 the sample covariances of the
components across models. With midranks ``Tx`` (within X), ``Ty`` (within Y), ``Tz`` (within X
and Y pooled): ``V10_i = (Tz_i - Tx_i) / n`` and ``V01_j = 1 - (Tz_j - Ty_j) / m``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm, rankdata


def structural_components(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` (M models, N cases), ``positive`` (N,) bool -> V10 (M, m), V01 (M, n)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positive = np.asarray(positive, dtype=bool)
    x, yneg = scores[:, positive], scores[:, ~positive]
    m, n = x.shape[1], yneg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs at least one positive and one negative case")
    tz = rankdata(np.concatenate([x, yneg], axis=1), axis=1)
    v10 = (tz[:, :m] - rankdata(x, axis=1)) / n
    v01 = 1.0 - (tz[:, m:] - rankdata(yneg, axis=1)) / m
    return v10, v01


def delong_covariance(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (M,) and their DeLong covariance matrix (M, M) for M models scored on the same cases."""
    v10, v01 = structural_components(scores, positive)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(v10), len(v10)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(v01), len(v01)))
    return v10.mean(axis=1), s10 / m + s01 / n


@dataclass
class DeLongResult:
    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    se: float          # standard error of the difference
    z: float
    p: float           # two-sided

    def to_dict(self) -> dict:
        return asdict(self)


def delong_test(positive: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """Two-sided test of AUC_a == AUC_b for two scores (N,) of the same cases with truth ``positive``."""
    auc, cov = delong_covariance(np.stack([scores_a, scores_b]), positive)
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se > 0:
        z = diff / se
    else:  # identical component differences on every case: no sampling variability of the difference
        z = 0.0 if diff == 0 else float(np.copysign(np.inf, diff))
    return DeLongResult(float(auc[0]), float(auc[1]), diff, se, float(z), float(2 * norm.sf(abs(z))))
