"""``nnKDTrainerCls``: nnU-Net segmentation + a case-level classification head.

Every teacher and student of the distillation trainers is this network. The loss is
``seg_weight * nnU-Net seg loss + weight * classification loss`` (plan ``classification``);
``compute_losses`` is the hook distillation subclasses extend with their terms.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_pickle
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, distributed as dist

from nnkd.errors import NNKDError
from nnkd.hooks import build_loss, lookup
from nnkd.evaluation.classification import macro_auc
from nnkd.inference import class_predictor, predict_classes
from nnkd.labels import case_labels
from nnkd.nets.network import build_network
from nnkd.trainers.base import nnKDTrainer, optimizer_params
from nnkd.trainers.progress import ATTENTION_MEAN_KEY, CLS_PREFIX, KD_PREFIX, RMS_RATIO_KEY


class nnKDTrainerCls(nnKDTrainer):
    """Segmentation + classification head (CBAM on the bottleneck); the network of every nnkd teacher and student."""

    loss_optimizer = None  # the distillation losses' own optimizer, if any (nnkd.trainers.distill)

    build_network_architecture = staticmethod(build_network)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.class_names, self.case_to_class = case_labels(self.full_dataset_json)
        cls = self.kd_plan["classification"]
        self.cls_loss = build_loss(cls["loss"], **self._loss_context(lookup("losses", cls["loss"]), cls["params"]))
        self.seg_weight = float(cls["seg_weight"])
        self.cls_weight = float(cls["weight"])
        self.classification_only = False  # decided in on_train_start from the preprocessed masks
        self._best_auc = None

    # ----------------------------------------------------------------- configuration
    def plans_nnkd_entry(self) -> Dict[str, Any]:
        entry = super().plans_nnkd_entry()  # runs inside nnKDTrainer.__init__, before self.class_names exists
        class_names = case_labels(self.full_dataset_json)[0]
        entry["network"] = dict(self.kd_plan["network"], num_classes=len(class_names))
        entry["class_names"] = class_names
        return entry

    def extra_log_keys(self) -> List[str]:
        return super().extra_log_keys() + [CLS_PREFIX + k for k in ("train_loss", "val_loss", "val_acc", "val_auc",
                                                                      "ema_val_auc")] \
            + ([ATTENTION_MEAN_KEY, RMS_RATIO_KEY] if self.kd_plan["network"]["cbam"] else [])

    def _loss_context(self, factory, params: Dict[str, Any]) -> Dict[str, Any]:
        """Plan params plus the context kwargs (num_classes, ...) the factory's signature names."""
        import inspect

        ctx = {"num_classes": len(self.class_names), "spatial_dims": len(self.configuration_manager.patch_size)}
        ctx.update(self.loss_context_extras())
        named = {n for n, p in inspect.signature(factory).parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        return dict({k: v for k, v in ctx.items() if k in named}, **params)

    def loss_context_extras(self) -> Dict[str, Any]:
        """Context for loss construction that subclasses know (widths of student and teachers)."""
        return {}

    # ----------------------------------------------------------------- data
    def class_targets(self, keys) -> torch.Tensor:
        return torch.as_tensor([self.case_to_class[k] for k in keys], dtype=torch.long, device=self.device)

    def _check_labels(self, keys, what: str) -> None:
        missing = sorted(set(keys) - set(self.case_to_class))
        if missing:
            raise NNKDError(f"{len(missing)} {what} case(s) have no case label in dataset.json "
                            f"({', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}); "
                            f"run 'nnkd labels import' for this dataset")

    def get_tr_and_val_datasets(self):
        tr, val = super().get_tr_and_val_datasets()
        self._check_labels(tr.identifiers, "training")
        self._check_labels(val.identifiers, "validation")
        keys = list(tr.identifiers)
        fraction = self.kd_plan["student"]["train_fraction"]
        if fraction < 1:
            keys = self._fraction_of(keys, fraction)
        if self.kd_plan["classification"]["balanced_sampling"]:
            keys = self._balanced_identifiers(keys)
        if keys != list(tr.identifiers):
            tr = self.dataset_class(self.preprocessed_dataset_folder, keys,
                                    folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        return tr, val

    def _fraction_of(self, keys: List[str], fraction: float) -> List[str]:
        """A class-stratified ``fraction`` of the training cases (at least one per class), the same for every
        run of this fold and plan seed: the low-data regime of a plan's ``student.train_fraction``."""
        rng = np.random.default_rng([self.fold if isinstance(self.fold, int) else 0, self.kd_plan["seed"] or 0])
        keys = sorted(keys)
        classes = np.array([self.case_to_class[k] for k in keys])
        chosen = []
        for c in np.unique(classes):
            members = np.flatnonzero(classes == c)
            n = max(1, int(round(fraction * len(members))))
            chosen.extend(rng.choice(members, n, replace=False).tolist())
        out = [keys[i] for i in sorted(chosen)]
        self.print_to_log_file(f"student.train_fraction {fraction}: training on {len(out)} of {len(keys)} cases")
        return out

    def _balanced_identifiers(self, keys: List[str], resolution: int = 100) -> List[str]:
        # nnU-Net's loader draws uniformly from dataset.identifiers and its constructor offers no
        # hook for sampling weights, so each case is repeated ~resolution*max_n/n_c times: every
        # class is then drawn with the same probability (to within 1/(2*resolution)).
        classes = np.array([self.case_to_class[k] for k in keys])
        counts = np.bincount(classes)
        reps = np.rint(resolution * counts.max() / counts[classes]).astype(int)
        self.print_to_log_file(f"class-balanced sampling over class counts {counts.tolist()}")
        return [k for k, r in zip(keys, reps) for _ in range(r)]

    def on_train_start(self):
        super().on_train_start()
        from nnkd.labels import masks_hold_lesions

        if not masks_hold_lesions(self.full_dataset_json):  # label 1 only keeps nnU-Net's planner working
            self.classification_only = True
            self.print_to_log_file('dataset.json says "masks": "none" (no lesion information): '
                                   'training the classification head alone')
            return
        props = [os.path.join(self.preprocessed_dataset_folder, f"{k}.pkl") for k in self.do_split()[0]]
        has_fg = any(any(len(v) for lab, v in load_pickle(p)["class_locations"].items() if lab > 0)
                     for p in props if os.path.isfile(p))
        self.classification_only = not has_fg
        if self.classification_only:
            self.print_to_log_file("all training masks are background: training the classification head alone")

    # ----------------------------------------------------------------- losses
    def compute_losses(self, out, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Weighted loss terms for one batch; their sum is optimised. Keys become log names."""
        terms = {"cls": self.cls_weight * self.cls_loss(out, [], batch)}
        # The decoder still runs when the dataset has no masks (weight 0): DDP needs every parameter used.
        seg_w = 0.0 if self.classification_only else self.seg_weight
        terms["seg"] = seg_w * self.loss(out.seg, batch["seg_target_ds"])
        return terms

    def make_batch(self, batch: dict) -> Dict[str, Any]:
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        full = target[0] if isinstance(target, list) else target
        return {"data": batch["data"].to(self.device, non_blocking=True), "seg_target_ds": target,
                "seg_target": full.long(), "class_target": self.class_targets(batch["keys"]),
                "keys": list(batch["keys"]), "epoch": self.current_epoch}

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def forward_student(self, b: Dict[str, Any]):
        return self.network(self.student_input(b["data"]), return_all=True)

    def train_step(self, batch: dict) -> dict:
        b = self.make_batch(batch)
        optimizers = [o for o in (self.optimizer, self.loss_optimizer) if o is not None]
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.forward_student(b)
            terms = self.compute_losses(out, b)
            loss = sum(v for k, v in terms.items() if not k.startswith("n_"))
        result = {"loss": loss.detach().cpu().numpy()}
        result.update({f"term/{k}": v.detach().float().cpu().numpy() for k, v in terms.items()})
        self._check_finite(result)  # before backward: a non-finite loss never reaches the weights
        # nnKDTrainer's step hooks refuse non-finite learning rates and gradients; each optimizer's
        # parameters are clipped on their own (the loss bank's AdamW must not shrink the student's step)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            for o in optimizers:
                self.grad_scaler.unscale_(o)
                torch.nn.utils.clip_grad_norm_(optimizer_params(o), 12)
                self.grad_scaler.step(o)
            self.grad_scaler.update()
        else:
            loss.backward()
            for o in optimizers:
                torch.nn.utils.clip_grad_norm_(optimizer_params(o), 12)
                o.step()
        result.update(bottleneck_liveness(out))
        return result

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        means = {k[len("term/"):]: self._global_mean(np.mean([o[k] for o in train_outputs]))
                 for k in train_outputs[0] if k.startswith("term/")}
        self.logger.log(CLS_PREFIX + "train_loss", means.pop("cls") / max(self.cls_weight, 1e-12),
                        self.current_epoch)
        means.pop("seg", None)
        for key in (ATTENTION_MEAN_KEY, RMS_RATIO_KEY):
            if key in train_outputs[0]:
                self.logger.log(key, self._global_mean(np.mean([o[key] for o in train_outputs])), self.current_epoch)
        self.logger.local_logger.add_keys(KD_PREFIX + k for k in means)  # dict-valued losses name terms late
        for k, v in means.items():
            self.logger.log(KD_PREFIX + k, v, self.current_epoch)

    def _global_mean(self, value: float) -> float:
        if not self.is_ddp:
            return float(value)
        t = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / dist.get_world_size()

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: dict) -> dict:
        b = self.make_batch(batch)
        with self._autocast():
            out = self.forward_student(b)
            cls_loss = self.cls_loss(out, [], b)
        # nnU-Net's seg loss and pseudo-Dice, computed by its own validation_step on this same forward
        # pass (the student runs once per step): its network call returns the segmentation output.
        network, self.network = self.network, _Replay(out.seg)
        try:
            result = super().validation_step(dict(batch, data=b["data"], target=b["seg_target_ds"]))
        finally:
            self.network = network
        result.update(cls_loss=cls_loss.detach().float().cpu().numpy(),
                      cls_probs=torch.softmax(out.logits.float(), 1).cpu().numpy(),
                      cls_target=b["class_target"].cpu().numpy())
        return result

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        super().on_validation_epoch_end(val_outputs)
        probs = np.concatenate([o["cls_probs"] for o in val_outputs])
        target = np.concatenate([o["cls_target"] for o in val_outputs])
        loss = np.mean([o["cls_loss"] for o in val_outputs])
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (probs, target, loss))
            probs = np.concatenate([g[0] for g in gathered])
            target = np.concatenate([g[1] for g in gathered])
            loss = float(np.mean([g[2] for g in gathered]))
        auc = macro_auc(probs, target)
        e = self.current_epoch
        self.logger.log(CLS_PREFIX + "val_loss", float(loss), e)
        self.logger.log(CLS_PREFIX + "val_acc", float(np.mean(probs.argmax(1) == target)), e)
        self.logger.log(CLS_PREFIX + "val_auc", auc, e)
        prev = self.logger.get_value(CLS_PREFIX + "ema_val_auc", step=None)
        ema = auc if not prev or not np.isfinite(prev[-1]) else (0.9 * prev[-1] + 0.1 * auc if np.isfinite(auc) else prev[-1])
        self.logger.log(CLS_PREFIX + "ema_val_auc", ema, e)

    def on_epoch_end(self):
        log = self.logger.get_value
        self.print_to_log_file(f"cls: train_loss {log(CLS_PREFIX + 'train_loss', -1):.4f} "
                               f"val_loss {log(CLS_PREFIX + 'val_loss', -1):.4f} "
                               f"val_acc {log(CLS_PREFIX + 'val_acc', -1):.3f} val_auc {log(CLS_PREFIX + 'val_auc', -1):.3f}")
        if len(self.logger.local_logger.my_fantastic_logging.get(ATTENTION_MEAN_KEY, [])) > self.current_epoch:
            self.print_to_log_file(f"bottleneck: CBAM spatial attention mean {log(ATTENTION_MEAN_KEY, -1):.4f}, "
                                   f"RMS after/before CBAM {log(RMS_RATIO_KEY, -1):.4f}")
        for k in self.logger.local_logger.my_fantastic_logging:
            if k.startswith(KD_PREFIX):
                self.print_to_log_file(f"{k}: {log(k, -1):.4f}")
        if self.kd_plan["classification"]["select_best_by"] != "auc":
            return super().on_epoch_end()
        ema = log(CLS_PREFIX + "ema_val_auc", -1)
        if np.isfinite(ema) and (self._best_auc is None or ema > self._best_auc):
            self._best_auc = float(ema)
            self.print_to_log_file(f"New best EMA validation AUC: {ema:.4f}")
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_best.pth"))
        best_ema, self._best_ema = self._best_ema, float("inf")  # nnU-Net's Dice-based 'best' stays off
        try:
            super().on_epoch_end()
        finally:
            self._best_ema = best_ema

    def nnkd_checkpoint_entry(self) -> Dict[str, Any]:
        return dict(super().nnkd_checkpoint_entry(), best_auc=self._best_auc)

    def restore_nnkd_checkpoint_entry(self, entry: Dict[str, Any]) -> None:
        super().restore_nnkd_checkpoint_entry(entry)
        self._best_auc = entry.get("best_auc")

    def validate_subclass_outputs(self) -> None:
        """The classification pass over the validation cases: validation/classification.csv and its summary."""
        from nnkd.evaluation.report import write_classification_summary

        self.set_deep_supervision_enabled(False)
        self.network.eval()
        predictor = class_predictor(self._bare_network(), self.plans_manager, self.configuration_manager,
                                    self.dataset_json, self.__class__.__name__, self.inference_allowed_mirroring_axes,
                                    self.device)
        _, val_keys = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                     folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        cases = ((k, torch.from_numpy(np.asarray(dataset.load_case(k)[0][:])[self.input_channels]).float())
                 for k in dataset.identifiers)
        folder = os.path.join(self.output_folder, "validation")
        labels = [self.class_names[self.case_to_class[k]] for k in dataset.identifiers]
        csv = os.path.join(folder, "classification.csv")
        probs = predict_classes(predictor, cases, csv, self.class_names, labels)
        summary = write_classification_summary(csv, os.path.join(folder, "classification_summary.json"))
        self.print_to_log_file(f"classification on {len(probs)} validation cases: {summary}")
        self.set_deep_supervision_enabled(True)


@torch.no_grad()
def bottleneck_liveness(out) -> Dict[str, float]:
    """CBAM spatial-attention mean and RMS(bottleneck after CBAM) / RMS(before) of one batch; ``{}``
    without CBAM. Both near 0 mean the features every bottleneck loss reads are dead."""
    pre = out.extras.get("pre_cbam") if out.extras else None
    if out.attention is None or pre is None:
        return {}
    post_ms, pre_ms = out.features[-1].float().pow(2).mean(), pre.float().pow(2).mean()
    return {ATTENTION_MEAN_KEY: float(out.attention.float().mean()),
            RMS_RATIO_KEY: float((post_ms / pre_ms.clamp_min(1e-12)).sqrt())}


class _Replay:
    """Stands in for the network in nnU-Net's validation_step: returns an output already computed."""

    def __init__(self, output):
        self.output = output

    def __call__(self, data):
        return self.output


class nnKDTrainerClsBaseline(nnKDTrainerCls):
    """nnKDTrainerCls under its own results folder: the no-distillation student baseline next to its teacher."""


class nnKDTrainerDoseTeacher(nnKDTrainerCls):
    """Dose-aware CT teacher: trains on a mix of full-dose and simulated low-dose CT (lowdose_noise)."""

    plan_defaults = {
        "name": "dose_teacher",
        "student": {"channels": [0]},
        "classification": {"loss": "focal", "params": {"gamma": 2.0}, "select_best_by": "auc"},
        "augmentation": [{"name": "lowdose_noise", "params": {"p": 0.5, "channels": [0]}}],
    }
