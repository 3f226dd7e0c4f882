"""Figures drawn from result dicts alone (an evaluate() result or a levels table), so a report can
be re-plotted from its metrics.json. Each function returns a matplotlib Figure (no pyplot state,
works headless); save it with :func:`nnkd.io.save_figure`."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

_MACRO_STYLE = {"color": "black", "linewidth": 2.2}


def _ci_text(v: dict) -> str:
    low, high = v["ci95"]
    if v["value"] is None:
        return "n/a"
    return f"{v['value']:.3f}" + ("" if low is None else f" [{low:.3f}, {high:.3f}]")


def _named(title: str, result: dict) -> str:
    """``title`` prefixed with the result's model name (``result["model"]``), when it has one."""
    model = result.get("model")
    return f"{model}: {title}" if model else title


def dca_ylim(model_curves, treat_all) -> tuple[float, float]:
    """y-limits of a decision-curve panel: every model curve in view from top to bottom; treat-all
    only down to a fifth of the top, so that its steep fall at high thresholds cannot squash the
    curves that matter (treat-all's top, the prevalence, stays in view)."""
    model = np.concatenate([np.asarray(c, dtype=float).ravel() for c in model_curves])
    model = model[np.isfinite(model)]
    everyone = np.asarray(treat_all, dtype=float)
    everyone = everyone[np.isfinite(everyone)]
    top = max(model.max() if model.size else 0.0, everyone.max() if everyone.size else 0.0, 0.01)
    bottom = min(model.min() if model.size else 0.0, -0.2 * top)
    pad = 0.05 * (top - bottom)
    return bottom - pad, top + pad


def plot_roc(result: dict) -> Figure:
    """ROC curve per scored class (one-vs-rest) and the macro average, AUC [95 % CI] in the legend."""
    fig = Figure(figsize=(6.0, 6.0), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    per_class = result["auc"]["per_class"]
    for name, curve in result["roc"].items():
        if name == "macro":
            continue
        prefix = f"{name} vs rest" if result["task"] == "multiclass" else f"{name} (positive)"
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1.4, label=f"{prefix}: AUC {_ci_text(per_class[name])}")
    if "macro" in result["roc"]:
        ax.plot(result["roc"]["macro"]["fpr"], result["roc"]["macro"]["tpr"], **_MACRO_STYLE,
                label=f"macro: AUC {_ci_text(result['auc'])}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", aspect="equal",
           title=_named(f"ROC, n = {result['n_cases']}", result))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_decision_curve(result: dict) -> Figure:
    """Net benefit vs threshold: one panel per scored class (model, treat-all, treat-none) and, for
    more than one class, a macro panel with every class's model curve and the macro curves."""
    dca = result["decision_curve"]
    t = np.asarray(dca["thresholds"], dtype=float)
    panels = list(dca["per_class"].items())
    if len(panels) > 1:
        panels.append(("macro", dca["macro"]))
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.0 * nrows), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, curves) in zip(axes, panels):
        model = np.asarray(curves["model"], dtype=float)
        everyone = np.asarray(curves["treat_all"], dtype=float)
        curves_in_view = [model]
        if name == "macro":
            for cls, c in dca["per_class"].items():
                ax.plot(t, np.asarray(c["model"], dtype=float), linewidth=1, alpha=0.6, label=f"model, {cls}")
                curves_in_view.append(c["model"])
            ax.plot(t, model, **_MACRO_STYLE, label="model, macro")
            title = "macro average (one-vs-rest)"
        else:
            ax.plot(t, model, color="C0", linewidth=2, label="model")
            title = f"{name} vs rest" if result["task"] == "multiclass" else f"{name} (positive class)"
        ax.plot(t, everyone, color="C3", linestyle="--", linewidth=1.2,
                label="treat all, macro" if name == "macro" else "treat all")
        ax.axhline(0.0, color="grey", linestyle=":", linewidth=1.2, label="treat none")
        ax.set(xlim=(0, 1), ylim=dca_ylim(curves_in_view, everyone), xlabel="threshold probability",
               ylabel="net benefit", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")  # curves start high on the left and fall to the right
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if len(panels) > 1:
        fig.suptitle(_named(f"Decision curves, n = {result['n_cases']}", result))
    else:
        axes[0].set_title(_named(f"Decision curve, {axes[0].get_title()}, n = {result['n_cases']}", result))
    return fig


def plot_calibration(result: dict) -> Figure:
    """Reliability diagram (accuracy per confidence bin vs the diagonal) over a histogram of the
    confidence (max probability)."""
    cal = result["calibration"]
    edges = np.asarray(cal["edges"], dtype=float)
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    acc = np.array([np.nan if a is None else a for a in cal["accuracy"]], dtype=float)
    conf = np.array([np.nan if c is None else c for c in cal["confidence"]], dtype=float)
    fig = Figure(figsize=(5.5, 6.5), dpi=120, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(centres, np.nan_to_num(acc), width=width, edgecolor="black", color="C0", alpha=0.6,
            label="accuracy per bin")
    filled = np.isfinite(acc)
    top.plot(conf[filled], acc[filled], "o-", color="C3", markersize=5, label="(mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy", title=_named(f"Reliability (ECE {cal['ece']:.3f}, "
                                                          f"{cal['n_bins']} bins, n = {result['n_cases']})", result))
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.bar(centres, cal["count"], width=width, edgecolor="black", color="grey")
    bottom.set(xlim=(0, 1), xlabel="confidence (max class probability)", ylabel="cases")
    return fig


def plot_levels(table: dict, level: str = "level") -> Figure:
    """AUC with 95 % CI error bars per level (per-class AUCs as small markers when there are several).
    ``level``: what a level is (axis label and title, e.g. ``channels``); ``table["ci"]``, when present, says
    how the CIs were made (default: a stratified bootstrap over cases)."""
    rows = table["levels"]
    x = np.arange(len(rows))
    auc = np.array([np.nan if r["auc"] is None else r["auc"] for r in rows], dtype=float)
    low = np.array([np.nan if r["auc_ci_low"] is None else r["auc_ci_low"] for r in rows], dtype=float)
    high = np.array([np.nan if r["auc_ci_high"] is None else r["auc_ci_high"] for r in rows], dtype=float)
    fig = Figure(figsize=(max(5.0, 1.1 * len(rows) + 2.5), 4.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    class_keys = [k for k in rows[0] if k.startswith("auc_") and k not in ("auc_ci_low", "auc_ci_high")]
    for j, key in enumerate(class_keys):
        vals = np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)
        ax.plot(x + 0.1 * (j + 1), vals, linestyle="none", marker="o", markersize=4,
                alpha=0.7, label=key[4:])
    ax.errorbar(x, auc, yerr=np.vstack([auc - low, high - auc]), fmt="s-", color="black", capsize=5,
                linewidth=1.5, markersize=6, label="macro AUC, 95% CI" if class_keys else "AUC, 95% CI")
    ax.set_xticks(x, [r["level"] for r in rows], rotation=30 if max(len(r["level"]) for r in rows) > 8 else 0,
                  ha="right" if max(len(r["level"]) for r in rows) > 8 else "center")
    floor = np.nanmin(np.concatenate([low, auc])) if np.isfinite(auc).any() else 0.5
    ax.set(xlim=(-0.4, len(rows) - 0.4), ylim=(max(0.0, min(0.5, floor - 0.05)), 1.0), ylabel="AUC", xlabel=level,
           title=f"AUC per {level} ({table.get('ci', 'stratified bootstrap')} 95% CI)")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left")
    return fig
