"""The method-minus-no-KD difference averaged over training seeds, with a CI over test cases and seeds."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from nnkd.errors import NNKDError
from nnkd.evaluation.bootstrap import seeds_and_cases
from nnkd.evaluation.comparison import compare_over_seeds
from nnkd.evaluation.predictions import Predictions

CLASSES = ["G1", "G2", "G3"]


def _pred(ids, probs, name):
    return Predictions(list(ids), np.asarray(probs, dtype=np.float64), CLASSES, [None] * len(ids), source=name)


def _random_probs(rng, n):
    p = rng.random((n, 3)) + 0.05
    return p / p.sum(1, keepdims=True)


def test_seed_level_resampling_of_constant_statistics():
    """Per-seed values that do not depend on the cases: every resample is a mean of drawn seeds' values."""
    y = np.repeat([0, 1], 10)
    values = [0.0, 0.0, 0.3]
    samples = seeds_and_cases(y, [lambda idx, v=v: np.full(len(idx), v) for v in values], n_resamples=4000)
    assert samples.shape == (4000,)
    allowed = {round(sum(c) / 3, 9) for c in ((a, b, d) for a in values for b in values for d in values)}
    assert {round(v, 9) for v in np.unique(samples)} <= allowed
    assert samples.mean() == pytest.approx(0.1, abs=0.01)  # E[mean of 3 draws] = mean of the values
    assert samples.min() == 0.0 and samples.max() == pytest.approx(0.3)


def test_pooled_difference_matches_sklearn_and_is_zero_for_identical_models():
    rng = np.random.default_rng(0)
    n = 45
    y = np.repeat([0, 1, 2], n // 3)
    ids = [f"case_{i:03d}" for i in range(n)]
    labels = {c: CLASSES[k] for c, k in zip(ids, y)}
    pairs, expected = [], []
    for s in range(3):
        good = _random_probs(rng, n)
        good[np.arange(n), y] += 0.5 + 0.2 * s  # better than chance, differently per seed
        good /= good.sum(1, keepdims=True)
        bad = _random_probs(rng, n)
        order = rng.permutation(n)  # rows in another order: matched by case id
        pairs.append((_pred(ids, good, f"a{s}"), _pred([ids[i] for i in order], bad[order], f"b{s}")))
        expected.append(roc_auc_score(y, good, multi_class="ovr") - roc_auc_score(y, bad, multi_class="ovr"))
    out = compare_over_seeds(pairs, labels, CLASSES, n_bootstrap=500)
    assert out["per_seed"] == pytest.approx(expected)
    assert out["difference"] == pytest.approx(np.mean(expected))
    assert out["ci95"][0] < out["difference"] < out["ci95"][1]
    assert out["ci95"][0] > 0 and out["n_seeds"] == 3 and out["n_cases"] == n

    same = [(a, _pred(a.case_ids, a.probs, "copy")) for a, _ in pairs]
    zero = compare_over_seeds(same, labels, CLASSES, n_bootstrap=200)
    assert zero["difference"] == 0 and zero["ci95"] == [0, 0]


def test_pooled_difference_refuses_other_cases():
    rng = np.random.default_rng(1)
    ids = [f"c{i}" for i in range(9)]
    labels = {c: CLASSES[i % 3] for i, c in enumerate(ids)}
    a = _pred(ids, _random_probs(rng, 9), "a")
    other = _pred(ids[:8] + ["x"], _random_probs(rng, 9), "b_other")
    with pytest.raises(NNKDError, match="no prediction: x"):
        compare_over_seeds([(a, a), (a, other)], {**labels, "x": "G1"}, CLASSES, n_bootstrap=10)
