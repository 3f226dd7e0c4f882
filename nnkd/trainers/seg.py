"""``nnKDTrainerSegKD``: a segmentation student without a classification head, distilled voxel by voxel.

The student is nnkd's network with ``num_classes`` 0 (encoder, CBAM, decoder; no head), trained with
``classification.seg_weight * nnU-Net's segmentation loss`` plus the plan's distillation losses
(``seg_kd`` by default; the feature losses ``fitnet``, ``at`` and ``region_graph`` read only features
and masks and work as well). No case labels are read: ``dataset.json`` needs none. Teachers are any
nnkd model folders (e.g. an ``nnKDTrainerCls`` on CT+PET) that segment the same labels.
Validation, ``checkpoint_best.pth`` (EMA pseudo-Dice) and the final validation are nnU-Net's.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch

from nnkd.errors import NNKDError
from nnkd.trainers.base import nnKDTrainer
from nnkd.trainers.distill import nnKDTrainerDistill
from nnkd.trainers.progress import ATTENTION_MEAN_KEY, KD_PREFIX, RMS_RATIO_KEY


class nnKDTrainerSegKD(nnKDTrainerDistill):
    """Segmentation-only student: nnU-Net seg loss + voxel-wise logit KD (``seg_kd``) from the plan's teachers."""

    plan_defaults = {"name": "seg_kd",
                     "losses": [{"name": "seg_kd", "weight": 1.0, "params": {"T": 2.0}}]}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnKDTrainerCls.__init__ reads the case labels and builds the classification loss: skipped here
        nnKDTrainer.__init__(self, plans, configuration, fold, dataset_json, device)
        self.class_names, self.case_to_class = [], {}
        self.cls_loss, self.cls_weight = None, 0.0
        self.seg_weight = float(self.kd_plan["classification"]["seg_weight"])
        self.classification_only = False
        self._best_auc = None

    # ----------------------------------------------------------------- configuration
    def plans_nnkd_entry(self) -> Dict[str, Any]:
        entry = nnKDTrainer.plans_nnkd_entry(self)
        entry["network"] = dict(self.kd_plan["network"], num_classes=0)  # no classification head
        entry["class_names"] = []
        return entry

    def plan_problems(self) -> List[str]:
        problems = super().plan_problems()
        cls = self.kd_plan["classification"]
        if cls["select_best_by"] == "auc":
            problems.append(f"field 'classification.select_best_by': {type(self).__name__} has no classification "
                            f"head to compute an AUC; use \"ema_dice\"")
        if cls["balanced_sampling"]:
            problems.append(f"field 'classification.balanced_sampling': {type(self).__name__} reads no case labels")
        return problems

    def extra_log_keys(self) -> List[str]:
        return nnKDTrainer.extra_log_keys(self) + \
            ([ATTENTION_MEAN_KEY, RMS_RATIO_KEY] if self.kd_plan["network"]["cbam"] else [])

    # ----------------------------------------------------------------- data
    def class_targets(self, keys):
        return None

    def get_tr_and_val_datasets(self):
        tr, val = nnKDTrainer.get_tr_and_val_datasets(self)
        fraction = self.kd_plan["student"]["train_fraction"]
        if fraction < 1:  # no classes to stratify by: a random fraction, the same for this fold and seed
            keys = sorted(tr.identifiers)
            rng = np.random.default_rng([self.fold if isinstance(self.fold, int) else 0, self.kd_plan["seed"] or 0])
            n = max(1, int(round(fraction * len(keys))))
            keys = [keys[i] for i in sorted(rng.choice(len(keys), n, replace=False))]
            self.print_to_log_file(f"student.train_fraction {fraction}: training on {n} of {len(tr.identifiers)} cases")
            tr = self.dataset_class(self.preprocessed_dataset_folder, keys,
                                    folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        return tr, val

    def on_train_start(self):
        from nnkd.labels import masks_hold_lesions

        if not masks_hold_lesions(self.full_dataset_json):
            raise NNKDError(f'{type(self).__name__} trains segmentation, but dataset.json says "masks": "none" '
                            f'(no lesion information); nothing was trained')
        nnKDTrainer.on_train_start(self)

    # ----------------------------------------------------------------- losses
    def compute_losses(self, out, b: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        terms = {"seg": self.seg_weight * self.loss(out.seg, b["seg_target_ds"])}
        terms.update(self.distillation_terms(out, b))
        return terms

    def on_train_epoch_end(self, train_outputs: List[dict]):
        nnKDTrainer.on_train_epoch_end(self, train_outputs)
        means = {k[len("term/"):]: self._global_mean(np.mean([o[k] for o in train_outputs]))
                 for k in train_outputs[0] if k.startswith("term/") and k != "term/seg"}
        for key in (ATTENTION_MEAN_KEY, RMS_RATIO_KEY):
            if key in train_outputs[0]:
                self.logger.log(key, self._global_mean(np.mean([o[key] for o in train_outputs])), self.current_epoch)
        self.logger.local_logger.add_keys(KD_PREFIX + k for k in means)
        for k, v in means.items():
            self.logger.log(KD_PREFIX + k, v, self.current_epoch)

    # ----------------------------------------------------------------- validation: nnU-Net's, no class metrics
    def validation_step(self, batch: dict) -> dict:
        return nnKDTrainer.validation_step(self, batch)

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        nnKDTrainer.on_validation_epoch_end(self, val_outputs)

    def on_epoch_end(self):
        log = self.logger.get_value
        for k in self.logger.local_logger.my_fantastic_logging:
            if k.startswith(KD_PREFIX):
                self.print_to_log_file(f"{k}: {log(k, -1):.4f}")
        nnKDTrainer.on_epoch_end(self)

    def validate_subclass_outputs(self) -> None:
        """No classification pass: this student has no classification head."""


class nnKDTrainerSegKDBaseline(nnKDTrainerSegKD):
    """Segmentation-only student without distillation (no teachers): the no-KD baseline of nnKDTrainerSegKD.

    Its own class so that it trains into its own results folder."""

    plan_defaults = {"name": "seg_nokd", "losses": []}
    requires_teachers = False
