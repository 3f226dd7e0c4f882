"""progress.png and the evaluation figures: colours, axes, limits and titles (no training needed)."""
import numpy as np
import pytest
from matplotlib.colors import to_hex

from nnkd.evaluation.plots import dca_ylim, plot_calibration, plot_decision_curve, plot_roc
from nnkd.trainers.progress import is_counter, panel_colours, progress_figure


def _log(n, seed=0):
    r = np.random.default_rng(seed)
    ramp = np.arange(n, dtype=float)
    return {"train_losses": list(1 - 0.05 * ramp), "val_losses": list(1.1 - 0.04 * ramp),
            "mean_fg_dice": list(0.3 + 0.02 * ramp), "ema_fg_dice": list(0.3 + 0.01 * ramp),
            "lrs": list(0.01 * (1 - ramp / (n + 1))), "epoch_start_timestamps": list(30 * ramp),
            "epoch_end_timestamps": list(30 * ramp + 28), "time/data_wait": list(r.uniform(0, 2, n)),
            "kd/logit_kd": list(0.5 - 0.01 * ramp), "kd/region_graph/node": list(0.2 + 0 * ramp),
            "kd/n_region_graph/skipped": list(r.uniform(5, 9, n)),  # a counter, far above the losses
            "cls/train_loss": list(1 - 0.03 * ramp), "cls/val_loss": list(1.05 - 0.02 * ramp),
            "cls/val_acc": list(0.4 + 0.02 * ramp), "cls/val_auc": list(0.5 + 0.02 * ramp),
            "cls/ema_val_auc": list(0.5 + 0.01 * ramp)}


def _curves(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def _panel(fig, i):
    """(left axis, right twin or None) of panel i (0-based) of the progress figure."""
    axes = [a for a in fig.axes if a.get_subplotspec().rowspan.start == i]
    left = axes[0]
    return left, (axes[1] if len(axes) > 1 else None)


def test_panel_colours_left_and_right_never_share():
    left, right = ["a", "b", "c"], ["x", "y", "z", "w"]
    colours = panel_colours(left, right)
    assert not {colours[k] for k in left} & {colours[k] for k in right}
    assert len(set(colours.values())) == len(left) + len(right)


def test_counter_keys():
    assert is_counter("kd/n_region_graph/skipped") and is_counter("kd/n_pagkd/skipped_classes")
    assert not is_counter("kd/logit_kd") and not is_counter("kd/region_graph/node")


def test_progress_classification_panel_colours_disjoint():
    fig = progress_figure(_log(6))
    left, right = _panel(fig, 2)
    lc = {to_hex(line.get_color()) for line in left.get_lines()}
    rc = {to_hex(line.get_color()) for line in right.get_lines()}
    assert set(_curves(left)) == {"train_loss", "val_loss"}
    assert set(_curves(right)) == {"val_acc", "val_auc", "ema_val_auc"}
    assert lc and rc and not lc & rc


def test_progress_counters_are_not_on_the_loss_axis():
    fig = progress_figure(_log(6))
    left, right = _panel(fig, 1)
    assert "n_region_graph/skipped" not in _curves(left)
    assert set(_curves(left)) == {"logit_kd", "region_graph/node"}
    assert right is not None and set(_curves(right)) == {"n_region_graph/skipped"}
    assert left.get_ylim()[1] < 1.0  # the losses keep their scale; the counter (5..9) does not squash them
    colours = {to_hex(line.get_color()) for line in left.get_lines()}
    assert to_hex(_curves(right)["n_region_graph/skipped"].get_color()) not in colours


@pytest.mark.parametrize("n", [1, 2, 7])
def test_progress_x_axis_shows_whole_epochs(n):
    fig = progress_figure(_log(n))
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert lo < 1 and hi > n  # epochs 1..n, none on an edge
    assert list(_curves(_panel(fig, 0)[0])["loss_tr"].get_xdata()) == list(range(1, n + 1))


def test_progress_before_the_first_epoch_is_none():
    assert progress_figure({k: [] for k in _log(1)}) is None


def test_dca_ylim_keeps_model_curves_and_clips_treat_all():
    t = np.arange(1, 100) / 100
    prevalence = 0.3
    treat_all = prevalence - (1 - prevalence) * t / (1 - t)  # falls to about -69 at t = 0.99
    model = 0.25 * (1 - t) - 0.4 * t ** 4  # ends below treat-all's clipped part, above its bottom
    lo, hi = dca_ylim([model], treat_all)
    assert lo <= model.min() and hi >= model.max() and hi >= prevalence
    assert lo > -1.0  # not stretched to treat-all's -69
    # with the old rule (-0.25 * top) this model's tail was cut off
    assert model.min() < -0.25 * max(model.max(), prevalence)


def _result(model=None):
    from nnkd.evaluation.classification import evaluate_arrays

    rng = np.random.default_rng(3)
    y = np.arange(60) % 3
    logits = rng.normal(0, 1, (60, 3))
    logits[np.arange(60), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    result = evaluate_arrays(probs, y, ["G1", "G2", "G3"], n_bootstrap=10)
    if model:
        result["model"] = model
    return result


def test_figure_titles_name_the_model():
    result = _result("REACT-KD seed 0")
    assert plot_roc(result).axes[0].get_title().startswith("REACT-KD seed 0: ")
    assert plot_calibration(result).axes[0].get_title().startswith("REACT-KD seed 0: ")
    assert plot_decision_curve(result)._suptitle.get_text().startswith("REACT-KD seed 0: ")
    assert not plot_roc(_result()).axes[0].get_title().startswith(":")


def test_dca_panels_contain_every_model_curve():
    result = _result()
    fig = plot_decision_curve(result)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        lo, hi = ax.get_ylim()
        for line in ax.get_lines():
            if line.get_label().startswith("model"):
                y = np.asarray(line.get_ydata(), dtype=float)
                assert lo <= np.nanmin(y) and np.nanmax(y) <= hi, line.get_label()
