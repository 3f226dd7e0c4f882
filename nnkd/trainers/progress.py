"""Epoch logging with extra keys, and a progress plot that draws them.

nnU-Net's ``LocalLogger`` asserts that a key exists before logging and truncates every curve
to the shortest list, so nnkd registers its keys up front and logs one value per epoch.
"""
from __future__ import annotations

from typing import Iterable

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
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
        log = self.my_fantastic_logging
        base = ["train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs",
                "epoch_start_timestamps", "epoch_end_timestamps"]
        n = min(len(log[k]) for k in base)
        if n == 0:
            return
        x = list(range(n))
        kd = sorted(k for k in log if k.startswith(KD_PREFIX) and len(log[k]) >= n)
        cls = sorted(k for k in log if k.startswith(CLS_PREFIX) and len(log[k]) >= n)
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
        for k in kd:
            ax.plot(x, log[k][:n], label=k[len(KD_PREFIX):], **mk)
        ax.set_ylabel("distillation terms (train)")
        if kd:
            ax.legend(loc="upper right")
        else:
            ax.text(0.5, 0.5, "no distillation terms", ha="center", transform=ax.transAxes)
        ax = axes[2]
        ax4 = ax.twinx()
        for k in cls:
            target = ax if k.endswith("loss") else ax4  # losses left, accuracy/AUC (0..1) right
            target.plot(x, log[k][:n], label=k[len(CLS_PREFIX):], ls="-" if target is ax else "--", **mk)
        ax.set_ylabel("classification loss")
        ax4.set_ylabel("accuracy / AUC")
        ax4.set_ylim(-0.02, 1.02)
        if cls:
            ax.legend(loc="upper left")
            ax4.legend(loc="upper right")
        ax = axes[3]
        for k, style in ((ATTENTION_MEAN_KEY, "c-"), (RMS_RATIO_KEY, "c--")):
            if len(log.get(k, [])) >= n:
                ax.plot(x, log[k][:n], style, label=k.split("/")[1].replace("_", " ") + " (CBAM)", **mk)
        ax.set_ylabel("bottleneck liveness")
        ax.legend(loc="upper left")
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
            a.set_xlabel("epoch")
        fig.tight_layout()
        save_figure(fig, f"{output_folder}/progress.png")
