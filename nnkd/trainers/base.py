"""``nnKDTrainer``: what every nnkd trainer shares, on top of nnU-Net's trainer.

Reads the distillation plan (see :mod:`nnkd.plan`), applies its schedule and seed, trains on
the plan's channel subset, registers extra logger keys, writes checkpoints atomically with an
``nnkd`` entry (effective plan, package version, trainer state) and restores it on ``--c``.
The constructor signature is nnU-Net's, unchanged: configuration comes from the plan.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, List

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule

import nnkd
from nnkd.data.wait import TimedLoader
from nnkd.errors import NNKDError
from nnkd.io import torch_save, write_json
from nnkd.plan import PLAN_FILENAME, check_registered_names, resolve_channels, resolve_plan
from nnkd.trainers.channels import channel_subset_dataset_class, subset_dataset_json, subset_plans
from nnkd.trainers.progress import DATA_WAIT_KEY, NNKDLocalLogger


class nnKDTrainer(nnUNetTrainer):
    """Base nnkd trainer: nnU-Net segmentation plus plan, schedule, channel subset, atomic checkpoints."""

    #: plan fields a subclass sets when no plan file is given (merged over nnkd.plan.DEFAULTS)
    plan_defaults: Dict[str, Any] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        continuing = bool(plans.get("continue_training", False))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.kd_plan, self.kd_plan_source = resolve_plan(
            self.output_folder, self.preprocessed_dataset_folder_base, self.plan_defaults, continuing)
        check_registered_names(self.kd_plan, self.kd_plan_source)
        self.print_to_log_file(f"nnkd {nnkd.__version__}: distillation plan '{self.kd_plan['name']}' "
                               f"from {self.kd_plan_source}")
        self._apply_schedule(self.kd_plan["schedule"])
        if self.kd_plan["seed"] is not None:
            self._seed(self.kd_plan["seed"])

        self.full_dataset_json = dataset_json
        self.input_channels: List[int] = resolve_channels(
            self.kd_plan["student"]["channels"], dataset_json["channel_names"], "student.channels")
        self.uses_channel_subset = self.input_channels != list(range(len(dataset_json["channel_names"])))
        if self.uses_channel_subset:
            self.dataset_json = subset_dataset_json(dataset_json, self.input_channels)
            self.print_to_log_file(f"student channels: {self.dataset_json['channel_names']} "
                                   f"(dataset channels {self.input_channels})")
        self.plans_manager.plans["nnkd"] = self.plans_nnkd_entry()

        local = NNKDLocalLogger(self.logger.local_logger.verbose)
        local.my_fantastic_logging.update(self.logger.local_logger.my_fantastic_logging)
        local.add_keys([DATA_WAIT_KEY, *self.extra_log_keys()])
        self.logger.local_logger = local

    # ----------------------------------------------------------------- configuration hooks
    def plans_nnkd_entry(self) -> Dict[str, Any]:
        """What nnU-Net's static network builder needs beyond its plans (travels in plans.json)."""
        return {"version": nnkd.__version__, "plan_name": self.kd_plan["name"],
                "input_channels": self.input_channels}

    def extra_log_keys(self) -> List[str]:
        """Logger keys this trainer logs once per epoch (registered up front)."""
        return []

    def _apply_schedule(self, schedule: Dict[str, Any]) -> None:
        for key, value in schedule.items():
            setattr(self, key, value)

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # ----------------------------------------------------------------- data
    def get_training_transforms(self, *args, **kwargs):
        """nnU-Net's training pipeline followed by the plan's modality dropout and augmentations."""
        from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

        base = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        extras = self.extra_training_transforms()
        return ComposeTransforms([base, *extras]) if extras else base

    def extra_training_transforms(self) -> list:
        """Transforms appended to nnU-Net's pipeline; they see every loaded channel of one sample."""
        import inspect

        from nnkd.hooks import lookup

        out = []
        channel_names = self.full_dataset_json["channel_names"]
        md = self.kd_plan["modality_dropout"]
        if md is not None:
            keep = set(resolve_channels(md["keep"], channel_names, "modality_dropout.keep") if md["keep"] else [])
            if md["droppable"] is not None:
                droppable = resolve_channels(md["droppable"], channel_names, "modality_dropout.droppable")
                keep |= set(range(len(channel_names))) - set(droppable)
            out.append(lookup("transforms", "modality_dropout")(p=md["p"], keep=sorted(keep), fill=md["fill"]))
        for i, aug in enumerate(self.kd_plan["augmentation"]):
            factory = lookup("transforms", aug["name"])
            params = dict(aug["params"])
            if "hu_std" in inspect.signature(factory).parameters and "hu_std" not in params:
                # intensity transforms in HU need the dataset's normalisation scale (fingerprint std)
                props = self.plans_manager.plans["foreground_intensity_properties_per_channel"]
                chans = params.get("channels", [0])
                params["hu_std"] = [float(props[str(c)]["std"]) for c in chans]
            try:
                out.append(factory(**params))
            except (TypeError, ValueError) as e:
                raise NNKDError(f"{self.kd_plan_source}: field 'augmentation[{i}].params': {e}") from None
        return out

    def student_input(self, data: torch.Tensor) -> torch.Tensor:
        """(B, C_all, *patch) batch -> the student's channels."""
        return data[:, self.input_channels] if self.uses_channel_subset else data

    def train_step(self, batch: dict) -> dict:
        batch = dict(batch, data=self.student_input(batch["data"]))
        return self._check_finite(super().train_step(batch))

    def validation_step(self, batch: dict) -> dict:
        return super().validation_step(dict(batch, data=self.student_input(batch["data"])))

    def _check_finite(self, out: dict) -> dict:
        if not np.all(np.isfinite(out["loss"])):
            terms = {k: float(np.mean(v)) for k, v in out.items() if np.ndim(v) == 0}
            raise NNKDError(
                f"non-finite training loss at epoch {self.current_epoch} ({terms}); training stopped. "
                f"The last good checkpoint in {self.output_folder} is intact; lower the learning rate "
                f"(schedule.initial_lr) or a loss weight in {self.kd_plan_source} and continue with --c.")
        return out

    def perform_actual_validation(self, save_probabilities: bool = False):
        full = self.dataset_class
        if self.uses_channel_subset:
            self.dataset_class = channel_subset_dataset_class(full, self.input_channels)
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.dataset_class = full

    # ----------------------------------------------------------------- files
    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(schedule_line(self.num_epochs, self.num_iterations_per_epoch,
                                             self.num_val_iterations_per_epoch, self.current_epoch,
                                             "num_epochs" in self.kd_plan["schedule"], self.kd_plan_source))
        self.dataloader_train = TimedLoader(self.dataloader_train)
        if self.local_rank == 0:
            write_json(os.path.join(self.output_folder, PLAN_FILENAME), self.kd_plan)
            if self.uses_channel_subset:  # results folder must describe the student's inputs only
                write_json(os.path.join(self.output_folder_base, "plans.json"),
                           subset_plans(self.plans_manager.plans, self.input_channels))
                write_json(os.path.join(self.output_folder_base, "dataset.json"), self.dataset_json)

    def on_epoch_end(self):
        epoch = self.current_epoch  # nnU-Net's on_epoch_end counts it up
        super().on_epoch_end()
        self.print_to_log_file(epoch_progress_line(epoch, self.num_epochs, self.logger.get_value(
            "epoch_start_timestamps", step=None), self.logger.get_value("epoch_end_timestamps", step=None)))

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        waits = self.dataloader_train.take() if isinstance(self.dataloader_train, TimedLoader) else []
        total = float(np.sum(waits)) if waits else 0.0
        self.logger.log(DATA_WAIT_KEY, total, self.current_epoch)
        if waits:
            self.print_to_log_file(f"data wait: {1000 * total / len(waits):.1f} ms per iteration "
                                   f"(median {1000 * float(np.median(waits)):.1f} ms, max {1000 * max(waits):.0f} ms)")

    def _bare_network(self) -> torch.nn.Module:
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def nnkd_checkpoint_entry(self) -> Dict[str, Any]:
        """The ``nnkd`` entry of every checkpoint; subclasses add their trainable extras."""
        return {"version": nnkd.__version__, "plan": self.kd_plan, "plan_source": self.kd_plan_source}

    def restore_nnkd_checkpoint_entry(self, entry: Dict[str, Any]) -> None:
        """Counterpart of :meth:`nnkd_checkpoint_entry`, called after nnU-Net restored its state."""

    def save_checkpoint(self, filename: str) -> None:
        # Same fields as nnU-Net's checkpoint (so its loader and predictor read it), written to a
        # temporary file and renamed, plus the nnkd entry.
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": self._bare_network().state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "nnkd": self.nnkd_checkpoint_entry(),
        }
        torch_save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            # nnU-Net 2.8.1's load_checkpoint only works with a file name.
            raise TypeError("nnKDTrainer.load_checkpoint expects a checkpoint file name")
        # This trainer's own checkpoint: nnU-Net reads it with weights_only=False too.
        entry = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False).get("nnkd")
        if entry is not None and entry["plan"] != self.kd_plan:
            raise NNKDError(f"{filename_or_checkpoint} was trained with plan '{entry['plan']['name']}' "
                            f"({entry.get('plan_source')}), not with {self.kd_plan_source}")
        super().load_checkpoint(filename_or_checkpoint)
        self.logger.local_logger.add_keys([DATA_WAIT_KEY, *self.extra_log_keys()])
        if entry is not None:
            self.restore_nnkd_checkpoint_entry(entry)


def schedule_line(epochs: int, iterations: int, val_iterations: int, start_epoch: int, from_plan: bool,
                  plan_source: str) -> str:
    """The training log's first statement of what will run (nnU-Net itself never says)."""
    line = (f"training for {epochs} epochs of {iterations} iterations "
            f"(+ {val_iterations} validation iterations each)")
    if start_epoch > 0:
        line += f", continuing at epoch {start_epoch + 1}"
    if from_plan:
        return line + f"; schedule from {plan_source}"
    return line + ("; nnU-Net's default schedule: set schedule.num_epochs and schedule.num_iterations_per_epoch "
                   "in the plan for a shorter run")


def epoch_progress_line(epoch: int, epochs: int, starts: List[float], ends: List[float]) -> str:
    """``epoch k of N`` (k counted from 1) with this run's mean epoch time and the time left at that pace."""
    durations = [e - s for s, e in zip(starts, ends)]
    line = f"epoch {epoch + 1} of {epochs} done"
    if durations:
        mean = float(np.mean(durations[-10:]))
        left = mean * max(epochs - epoch - 1, 0)
        line += f" ({mean:.1f} s per epoch, about {_duration(left)} left)"
    return line


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
