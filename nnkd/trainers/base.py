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
from nnkd.checkpoints import TRAINER_KEYS, load_checkpoint, nonfinite_tensors
from nnkd.errors import NNKDError
from nnkd.io import torch_save, write_json
from nnkd.channels import resolve_channels
from nnkd.plan import PLAN_FILENAME, check_registered_names, resolve_plan, resume_changes
from nnkd.sharing import scrub_debug_json, shareable_dataset_json
from nnkd.trainers.channels import channel_subset_dataset_class, subset_dataset_json, subset_plans
from nnkd.trainers.progress import DATA_WAIT_KEY, NNKDLocalLogger


class nnKDTrainer(nnUNetTrainer):
    """Base nnkd trainer: nnU-Net segmentation plus plan, schedule, channel subset, atomic checkpoints."""

    #: plan fields a subclass sets when no plan file is given (merged over nnkd.plan.DEFAULTS)
    plan_defaults: Dict[str, Any] = {}
    #: whether this trainer reads the plan's teachers and distillation losses
    distils: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        continuing = bool(plans.get("continue_training", False))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.kd_plan, self.kd_plan_source = resolve_plan(
            self.output_folder, self.preprocessed_dataset_folder_base, self.plan_defaults, continuing)
        check_registered_names(self.kd_plan, self.kd_plan_source)
        self.check_plan_fits()
        self.print_to_log_file(f"nnkd {nnkd.__version__}: distillation plan '{self.kd_plan['name']}' "
                               f"from {self.kd_plan_source}")
        self._apply_schedule(self.kd_plan["schedule"])
        if self.kd_plan["seed"] is not None:
            self._seed(self.kd_plan["seed"])

        # With the case labels: read during training, never written to the results folder or a checkpoint.
        self.full_dataset_json = dataset_json
        self.input_channels: List[int] = resolve_channels(
            self.kd_plan["student"]["channels"], dataset_json["channel_names"], "student.channels")
        self.uses_channel_subset = self.input_channels != list(range(len(dataset_json["channel_names"])))
        self.dataset_json = shareable_dataset_json(dataset_json)  # what nnU-Net copies into the results folder
        if self.uses_channel_subset:
            self.dataset_json = subset_dataset_json(self.dataset_json, self.input_channels)
            self.print_to_log_file(f"student channels: {self.dataset_json['channel_names']} "
                                   f"(dataset channels {self.input_channels})")
        self.my_init_kwargs["dataset_json"] = self.dataset_json  # every checkpoint carries init_args
        self.plans_manager.plans["nnkd"] = self.plans_nnkd_entry()

        local = NNKDLocalLogger(self.logger.local_logger.verbose)
        local.my_fantastic_logging.update(self.logger.local_logger.my_fantastic_logging)
        local.add_keys([DATA_WAIT_KEY, *self.extra_log_keys()])
        self.logger.local_logger = local

    # ----------------------------------------------------------------- configuration hooks
    def check_plan_fits(self) -> None:
        """Refuse, before training, a plan this trainer cannot honour, listing every problem."""
        problems = self.plan_problems()
        if problems:
            raise NNKDError(f"{self.kd_plan_source}: plan '{self.kd_plan['name']}' does not fit trainer "
                            f"{type(self).__name__} (nothing was trained):\n" + "\n".join(f"  - {p}" for p in problems))

    def plan_problems(self) -> List[str]:
        """What of the plan this trainer cannot honour; all of it is refused at once, before training."""
        plan, name = self.kd_plan, type(self).__name__
        problems = []
        if plan["trainers"] and name not in plan["trainers"]:
            problems.append(f"field 'trainers': the plan is for {', '.join(plan['trainers'])}, not for {name}")
        if not self.distils:
            ignored = [f for f in ("teachers", "losses") if plan[f]]
            if ignored:
                problems.append(f"field(s) {', '.join(repr(f) for f in ignored)}: {name} does not distil and would "
                                f"ignore them; use a distillation trainer (`nnkd trainers` lists them)")
            if plan["student"]["init_from_teacher"] is not False:
                problems.append(f"field 'student.init_from_teacher': {name} has no teacher to start from")
        return problems

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

    # ----------------------------------------------------------------- non-finite values
    def configure_optimizers(self):
        optimizer, lr_scheduler = super().configure_optimizers()
        return self.guard_steps(optimizer), lr_scheduler

    def guard_steps(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Check around every step of ``optimizer``, whichever train_step runs it: a step with a non-finite
        learning rate or gradient is never applied (with AMP, GradScaler skips inf steps itself)."""
        optimizer.register_step_pre_hook(self._check_step_inputs)
        optimizer.register_step_post_hook(self._check_step_result)
        return optimizer

    def _stop(self, what: str) -> NNKDError:
        on_disk = sorted(f for f in os.listdir(self.output_folder) if f.startswith("checkpoint_") and f.endswith(".pth")) \
            if os.path.isdir(self.output_folder) else []
        kept = (f"The checkpoint(s) in {self.output_folder} ({', '.join(on_disk)}) hold the last finite weights "
                f"(nnkd never writes non-finite ones)" if on_disk else f"No checkpoint was written to {self.output_folder}")
        return NNKDError(
            f"{what} at epoch {self.current_epoch}; training stopped. {kept}. Lower schedule.initial_lr or a loss "
            f"weight in a corrected copy of {self.kd_plan_source} and continue with NNKD_PLAN=<corrected plan> "
            f"and --c (the schedule and loss weights may change when continuing).")

    def _check_finite(self, out: dict) -> dict:
        if not np.all(np.isfinite(out["loss"])):
            terms = {k: float(np.mean(v)) for k, v in out.items() if np.ndim(v) == 0}
            raise self._stop(f"non-finite training loss ({terms})")
        return out

    def _check_step_inputs(self, optimizer, args, kwargs) -> None:
        lrs = [g["lr"] for g in optimizer.param_groups]
        if not np.all(np.isfinite(lrs)):
            raise self._stop(f"non-finite learning rate {lrs[0]} (schedule.initial_lr {self.initial_lr}); the "
                             f"optimizer step was not applied")
        grads = [p.grad for p in optimizer_params(optimizer) if p.grad is not None]
        # one fused norm per tensor (as clip_grad_norm_ computes them), one device sync
        if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            raise self._stop("non-finite gradients; the optimizer step was not applied")

    def _check_step_result(self, optimizer, args, kwargs) -> None:
        params = optimizer_params(optimizer)
        if params and not bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all()):
            raise self._stop("the optimizer step made weights non-finite (overflow); they are not saved")

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        bad = {k for o in val_outputs for k, v in o.items() if k.endswith("loss") and not np.all(np.isfinite(v))}
        if bad:
            raise self._stop(f"non-finite validation loss ({', '.join(sorted(bad))})")
        super().on_validation_epoch_end(val_outputs)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's validation, shaped by the plan's ``validation`` (segmentation pass, test-time mirroring),
        then :meth:`validate_subclass_outputs`. The checkpoints are written before this runs, so the mirroring
        they record stays nnU-Net's."""
        full, mirroring = self.dataset_class, self.inference_allowed_mirroring_axes
        if not self.kd_plan["validation"]["mirroring"]:
            self.inference_allowed_mirroring_axes = None
        try:
            if self.kd_plan["validation"]["segmentation"]:
                if self.uses_channel_subset:
                    self.dataset_class = channel_subset_dataset_class(full, self.input_channels)
                try:
                    super().perform_actual_validation(save_probabilities)
                finally:
                    self.dataset_class = full
            else:
                self.print_to_log_file("validation: segmentation pass skipped (plan field validation.segmentation)")
            if self.local_rank == 0:
                self.validate_subclass_outputs()
        finally:
            self.inference_allowed_mirroring_axes = mirroring

    def validate_subclass_outputs(self) -> None:
        """Validation passes of subclasses that run after nnU-Net's (classification), on rank 0; none here."""

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

    def _save_debug_information(self):
        # nnU-Net writes str() of every attribute to fold_k/debug.json, which its model export ships
        super()._save_debug_information()
        if self.local_rank == 0:
            removed = scrub_debug_json(os.path.join(self.output_folder, "debug.json"), self.private_case_ids())
            if removed:
                self.print_to_log_file(f"debug.json: left out {', '.join(removed)} (they name training cases)")

    def private_case_ids(self) -> List[str]:
        """Case ids that must not reach a shared model folder (those with a case label)."""
        entry = self.full_dataset_json.get("nnkd")
        return list(entry.get("case_labels") or {}) if isinstance(entry, dict) else []

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
        # temporary file and renamed, plus the nnkd entry. Non-finite weights or optimizer state
        # are never written: the earlier file stays as it was.
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
        bad = nonfinite_tensors(checkpoint["network_weights"], "network_weights") + \
            nonfinite_tensors(checkpoint["optimizer_state"], "optimizer_state")
        if bad:
            raise self._stop(f"refused to write {filename}: non-finite values in {len(bad)} entries "
                             f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})")
        torch_save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's trainer state (``--c``, ``--val``, ``--val_best``) from a checkpoint read by
        :func:`nnkd.checkpoints.load_checkpoint` (``weights_only=True``: never runs code in the file).

        Replaces nnU-Net's loader, which unpickles with ``weights_only=False``; restores the same
        fields. A plan that differs from the checkpoint's may change only what :func:`nnkd.plan.resume_changes`
        allows; each change is logged.
        """
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError("nnKDTrainer.load_checkpoint expects a checkpoint file name")
        path = filename_or_checkpoint
        if not self.was_initialized:
            self.initialize()
        checkpoint = load_checkpoint(path, TRAINER_KEYS)
        bad = nonfinite_tensors(checkpoint["optimizer_state"], "optimizer_state")
        if bad:
            raise NNKDError(f"{path}: refused to load: non-finite optimizer state ({', '.join(bad[:5])})")
        entry = checkpoint.get("nnkd")
        if entry is not None and entry["plan"] != self.kd_plan:
            earlier = f"{path} (plan '{entry['plan'].get('name')}' from {entry.get('plan_source')})"
            for change in resume_changes(entry["plan"], self.kd_plan, earlier, self.kd_plan_source):
                self.print_to_log_file(f"plan changed on continuing: {change}")
        network = self._bare_network()
        own = network.state_dict().keys()
        weights = {k[len("module."):] if k not in own and k.startswith("module.") else k: v
                   for k, v in checkpoint["network_weights"].items()}  # saved from a DDP-wrapped network
        try:
            network.load_state_dict(weights)
            self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise NNKDError(f"{path}: does not fit this trainer's network or optimizer: "
                            f"{str(e).strip().splitlines()[0]}") from None
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        self.logger.local_logger.add_keys([DATA_WAIT_KEY, *self.extra_log_keys()])
        if entry is not None:
            self.restore_nnkd_checkpoint_entry(entry)


def optimizer_params(optimizer: torch.optim.Optimizer) -> List[torch.nn.Parameter]:
    """Every parameter of every group of ``optimizer``."""
    return [p for g in optimizer.param_groups for p in g["params"]]


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
