"""Stratified bootstrap: resample cases with replacement within each true class, vectorised.

Stratifying keeps every class count fixed, so each resample has the same prevalence as the data
and per-class AUCs are always defined. Resamples are drawn in chunks of rows (a deterministic
function of N), so results depend only on (y, n_resamples, seed): two models or two dose levels
evaluated on the same labels with the same seed see the same resamples (a paired bootstrap).
:func:`seeds_and_cases` adds a second level for results averaged over training seeds.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

_MAX_CHUNK_ELEMENTS = 2_000_000  # resampled indices held at once: bounds memory for large N


def stratified_indices(y: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, N) case indices; column block c holds class c's resampled members."""
    blocks = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        blocks.append(members[rng.integers(0, len(members), size=(n_resamples, len(members)))])
    return np.concatenate(blocks, axis=1)


def bootstrap(y: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], n_resamples: int = 1000,
              seed: int = 0) -> np.ndarray:
    """Apply ``statistic`` to stratified resamples.

    ``statistic(idx)`` takes an (R, N) index array and returns an (R, ...) array (one value, or one
    vector, per resample). Returns the stacked (n_resamples, ...) results.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(len(y), 1))
    out = []
    for start in range(0, n_resamples, chunk):
        out.append(np.asarray(statistic(stratified_indices(y, min(chunk, n_resamples - start), rng))))
    return np.concatenate(out, axis=0)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Percentile interval over axis 0, ignoring NaN resamples: (2, ...) = (low, high)."""
    alpha = (1.0 - level) / 2.0
    return np.nanpercentile(samples, [100 * alpha, 100 * (1 - alpha)], axis=0)


def seeds_and_cases(y: np.ndarray, statistics: Sequence[Callable[[np.ndarray], np.ndarray]], n_resamples: int = 1000,
                    seed: int = 0) -> np.ndarray:
    """Bootstrap of a mean over training seeds, evaluated on one test set: (n_resamples,) values.

    ``statistics[s](idx)`` maps (R, N) case indices to (R,) values of seed ``s`` (e.g. a model's AUC minus
    the no-KD student's, both of seed s). Each resample draws the cases (stratified, the same cases for every
    seed: the seeds share the test set) and, independently, the seeds with replacement, and averages the drawn
    seeds' values, so the interval reflects both the test sample and the variation between trainings.
    """
    rng = np.random.default_rng(seed + 7919)  # seed draws independent of the case draws
    n_seeds = len(statistics)
    picks = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    per_seed = np.stack([bootstrap(y, stat, n_resamples, seed) for stat in statistics], axis=1)  # (R, S)
    return np.take_along_axis(per_seed, picks, axis=1).mean(axis=1)
