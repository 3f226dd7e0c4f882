"""Epoch logging with extra keys, and a progress plot that draws them.

nnU-Net's ``LocalLogger`` asserts that a key exists before logging and truncates every curve
to the shortest list, so nnkd registers its keys up front and logs one value per epoch.
"""
from __future__ import annotations

from typing import Dict, Iterable, Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

from nnkd.io import save_figure  # noqa: E402

KD_PREFIX = "kd/"   # distillation terms (train)
CLS_PREFIX = "cls/"  # classification loss and metrics
DATA_WAIT_KEY = "time/data_wait"  # seconds per epoch the training loop waited for batches
# Liveness of the CBAM bottleneck (train batches, epoch mean): the spatial attention's mean and the
# RMS of the bottleneck after CBAM over its RMS before; both near 0 = a dead bottleneck.
ATTENTION_MEAN_KEY = "bottleneck/attention_mean"
RMS_RATIO_KEY = "bottleneck/rms_ratio"


class NNKDLocalLogger(LocalLogger):
    """LocalLogger with ``add_keys`` and a five-panel progress.png."""

    def add_keys(self, keys: Iterable[str]) -> None:
        for k in keys:
            self.my_fantastic_logging.setdefault(k, [])

    def plot_progress_png(self, output_folder: str) -> None:
        fig = progress_figure(self.my_fantastic_logging)
        if fig is not None:
            save_figure(fig, f"{output_folder}/progress.png")


#: one colour per curve of a panel: the left axis takes them from the front, the right axis after it
PALETTE = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]] + [
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]


def panel_colours(left: Sequence[str], right: Sequence[str]) -> Dict[str, str]:
    """{key: colour} for the curves of a two-axis panel; no colour is used twice (up to 20 curves),
    so a curve on the left axis is never mistaken for one on the right."""
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate([*left, *right])}


def is_counter(key: str) -> bool:
    """Logged counters (``kd/n_region_graph/skipped``: patches skipped, classes missing ...) are
    the terms starting with ``n_``; they are not losses and get their own axis."""
    return (key[len(KD_PREFIX):] if key.startswith(KD_PREFIX) else key).startswith("n_")


def _epoch_axis(ax, n: int) -> None:
    """Whole epochs 1..n on the x axis (a single epoch included: no fractional ticks around it)."""
    ax.set_xlim(0.5, n + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")


def progress_figure(log: Dict[str, list]):
    """The four-panel progress figure from a logger's lists; None before the first complete epoch.

    1: nnU-Net's losses (left) and pseudo Dice (right); 2: distillation terms (left) and counters
    (right); 3: classification losses (left) and accuracy / AUC (right); 4: bottleneck liveness (CBAM
    spatial-attention mean and RMS after/before CBAM: both falling to 0 mean dead features); 5: epoch time
    and data wait (left), learning rate (right)."""
    base = ["train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs",
            "epoch_start_timestamps", "epoch_end_timestamps"]
    n = min(len(log[k]) for k in base)
    if n == 0:
        return None
    x = list(range(1, n + 1))
    kd = sorted(k for k in log if k.startswith(KD_PREFIX) and len(log[k]) >= n)
    kd_losses, kd_counters = [k for k in kd if not is_counter(k)], [k for k in kd if is_counter(k)]
    cls = sorted(k for k in log if k.startswith(CLS_PREFIX) and len(log[k]) >= n)
    cls_losses, cls_metrics = [k for k in cls if k.endswith("loss")], [k for k in cls if not k.endswith("loss")]
    mk = {"marker": "o", "markersize": 4} if n < 30 else {}  # short runs: points stay visible
    fig, axes = plt.subplots(5, 1, figsize=(12, 22))
    ax = axes[0]
    ax.plot(x, log["train_losses"][:n], "b-", label="loss_tr", **mk)
    ax.plot(x, log["val_losses"][:n], "r-", label="loss_val", **mk)
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(x, log["mean_fg_dice"][:n], "g:", label="pseudo dice", **mk)
    ax2.plot(x, log["ema_fg_dice"][:n], "g-", label="pseudo dice (mov. avg.)", **mk)
    ax2.set_ylabel("pseudo dice")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")

    ax = axes[1]
    colours = panel_colours(kd_losses, kd_counters)
    for k in kd_losses:
        ax.plot(x, log[k][:n], color=colours[k], label=k[len(KD_PREFIX):], **mk)
    ax.set_ylabel("distillation terms (train)")
    if kd_losses:
        ax.legend(loc="upper left")
    elif not kd_counters:
        ax.text(0.5, 0.5, "no distillation terms", ha="center", transform=ax.transAxes)
    if kd_counters:
        axc = ax.twinx()
        for k in kd_counters:
            axc.plot(x, log[k][:n], color=colours[k], ls=":", label=k[len(KD_PREFIX):], **mk)
        axc.set_ylabel("counters (mean per iteration)")
        axc.set_ylim(bottom=0)
        axc.legend(loc="upper right")

    ax = axes[2]
    ax4 = ax.twinx()
    colours = panel_colours(cls_losses, cls_metrics)
    for k in cls_losses:
        ax.plot(x, log[k][:n], color=colours[k], ls="-", label=k[len(CLS_PREFIX):], **mk)
    for k in cls_metrics:
        ax4.plot(x, log[k][:n], color=colours[k], ls="--", label=k[len(CLS_PREFIX):], **mk)
    ax.set_ylabel("classification loss")
    ax4.set_ylabel("accuracy / AUC")
    ax4.set_ylim(-0.02, 1.02)
    if cls_losses:
        ax.legend(loc="upper left")
    if cls_metrics:
        ax4.legend(loc="upper right")

    ax = axes[3]
    live = [(k, style) for k, style in ((ATTENTION_MEAN_KEY, "c-"), (RMS_RATIO_KEY, "c--")) if len(log.get(k, [])) >= n]
    for k, style in live:
        ax.plot(x, log[k][:n], style, label=k.split("/")[1].replace("_", " ") + " (CBAM)", **mk)
    ax.set_ylabel("bottleneck liveness")
    ax.set_ylim(bottom=0)
    if live:
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no CBAM", ha="center", transform=ax.transAxes)

    ax = axes[4]
    ax.plot(x, [e - s for s, e in zip(log["epoch_start_timestamps"][:n], log["epoch_end_timestamps"][:n])],
            "b-", label="epoch duration [s]", **mk)
    if len(log.get(DATA_WAIT_KEY, [])) >= n:
        ax.plot(x, log[DATA_WAIT_KEY][:n], "m-", label="waiting for data [s]", **mk)
    ax.set_ylabel("time [s]")
    ax3 = ax.twinx()
    ax3.plot(x, log["lrs"][:n], "k--", label="learning rate", **mk)
    ax3.set_ylabel("learning rate")
    ax.legend(loc="upper left")
    ax3.legend(loc="upper right")
    for a in axes:
        _epoch_axis(a, n)
    fig.tight_layout()
    return fig
