"""Students of unpaired teachers (PaGKD, CoMoTo) and the ImPA lesion teacher.

An unpaired teacher was trained on another nnU-Net dataset (its own modality, cases and plans).
Each training batch of the student comes with a class-matched batch of the teacher's dataset,
built in nnU-Net's data-augmentation workers (:mod:`nnkd.data.teacher_stream`); the teacher runs
on that batch, frozen. Loss terms see ``batch["teacher_data"][i]``, ``["teacher_class_target"][i]``
and ``["teacher_seg_target"][i]`` of teacher i, matched to the student's samples by class only.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from nnkd.data.teacher_stream import TeacherData, UnpairedDataLoader, build_teacher_data
from nnkd.trainers.distill import nnKDTrainerDistill


class nnKDTrainerUnpaired(nnKDTrainerDistill):
    """Student distilled from unpaired teachers (their own datasets, class-matched batches) with any registered losses."""

    paired_teachers = False

    def initialize(self):
        super().initialize()
        self.teacher_data: List[TeacherData] = []

    # ----------------------------------------------------------------- data
    def get_tr_and_val_datasets(self):
        tr, val = super().get_tr_and_val_datasets()
        self._train_dataset = tr
        return tr, val

    def get_dataloaders(self):
        # nnU-Net builds its loaders and starts the augmentation workers inside one method, with no
        # factory hook; the training loader is swapped for the teacher-carrying one while it runs.
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

        if not self.loss_bank.losses:  # no loss reads the teacher's data: do not load it
            return super().get_dataloaders()

        original = nnunet_trainer_module.nnUNetDataLoader
        trainer = self

        def make_loader(data, *args, **kwargs):
            if data is not trainer._train_dataset:
                return original(data, *args, **kwargs)
            case_to_class = {k: trainer.case_to_class[k] for k in data.identifiers}
            trainer.teacher_data = [
                build_teacher_data(spec, t.meta, trainer.batch_size, case_to_class, trainer.class_names,
                                   trainer.oversample_foreground_percent)
                for spec, t in zip(trainer.kd_plan["teachers"], trainer.teachers)]
            for td in trainer.teacher_data:
                counts = dict(zip(trainer.class_names, td.sampler.counts.tolist()))
                trainer.print_to_log_file(f"teacher '{td.name}': class-matched batches from {td.dataset_folder} "
                                          f"(cases per class {counts}; patch {list(td.loader.final_patch_size)})")
            return UnpairedDataLoader(data, *args, case_to_class=case_to_class, teachers=trainer.teacher_data,
                                      **kwargs)

        nnunet_trainer_module.nnUNetDataLoader = make_loader
        try:
            return super().get_dataloaders()
        finally:
            nnunet_trainer_module.nnUNetDataLoader = original

    def private_case_ids(self) -> List[str]:
        return super().private_case_ids() + [k for td in self.teacher_data for k in td.sampler.case_to_class]

    def make_batch(self, batch: dict) -> Dict[str, Any]:
        b = super().make_batch(batch)
        if "teacher_data" not in batch:  # validation batches: the student's data only
            return b
        dev = self.device
        b["teacher_data"] = [x.to(dev, non_blocking=True) for x in batch["teacher_data"]]
        b["teacher_seg_target"] = [(t[0] if isinstance(t, list) else t).to(dev, non_blocking=True).long()
                                   for t in batch["teacher_target"]]
        b["teacher_class_target"] = [torch.as_tensor([td.sampler.case_to_class[k] for k in keys], dtype=torch.long,
                                                     device=dev)
                                     for td, keys in zip(self.teacher_data, batch["teacher_keys"])]
        b["teacher_keys"] = batch["teacher_keys"]
        return b

    def teacher_outputs(self, b: Dict[str, Any]):
        with torch.no_grad():
            return [t.network(x, return_all=True) for t, x in zip(self.teachers, b["teacher_data"])]


#: GKD-Pro (group prototypes) and GKD-Den (relation-masked dense reconstruction) settings of the PaGKD paper
_GKD_COMMON = {"warmup_epochs": 5, "embed_dim": 128, "level": "group", "stage": -3}
_GKD_PRO = {"num_queries": 12, "num_heads": 16, "similarity": "cos", "tau": 1.0, "softmax_one": False, "w_pro": 0.1}
_GKD_DEN = {"relation_source": "cam", "lesion_threshold": 0.7, "background_threshold": 0.3}


class nnKDTrainerPaGKD(nnKDTrainerUnpaired):
    """PaGKD student: group-level prototype (GKD-Pro) and dense (GKD-Den) KD from an unpaired teacher (docs/methods.md)."""

    plan_defaults = {
        "name": "pagkd",
        "classification": {"select_best_by": "auc"},
        # the prototype extractor starts from scratch; at the student's SGD rate it learnt nothing in a
        # short schedule (nnkd/trainers/loss_optimizer.py)
        "loss_optimizer": {"name": "adamw", "lr": 1e-3},
        "losses": [{"name": "pagkd", "weight": 1.0, "params": {**_GKD_COMMON, **_GKD_PRO, **_GKD_DEN}}],
    }


class nnKDTrainerImPA(nnKDTrainerDistill):
    """CoMoTo lesion teacher: nnU-Net segmentation + intra-modal point alignment (ImPA, docs/methods.md)."""

    requires_teachers = False
    plan_defaults = {
        "name": "impa_teacher",
        "classification": {"weight": 0.0},
        "losses": [{"name": "impa", "weight": 1.0, "params": {"beta": 2.0}}],
    }


class nnKDTrainerCoMoTo(nnKDTrainerUnpaired):
    """CoMoTo student: lesion-specific KD (LsKD) from an unpaired ImPA teacher, initialised from it (docs/methods.md)."""

    plan_defaults = {
        "name": "comoto",
        "student": {"init_from_teacher": "auto"},
        "classification": {"weight": 0.0},
        "losses": [{"name": "lskd", "weight": 1.0, "params": {"alpha": 2.0, "temperature": 4.0}}],
    }


# Ablations and baselines: one small subclass each, so every variant trains into its own results folder.

class nnKDTrainerPaGKDProOnly(nnKDTrainerPaGKD):
    """PaGKD ablation: GKD-Pro alone (group prototypes, no dense term)."""

    plan_defaults = dict(nnKDTrainerPaGKD.plan_defaults, name="pagkd_pro_only",
                         losses=[{"name": "gkd_pro", "weight": 1.0, "params": {**_GKD_COMMON, **_GKD_PRO}}])


class nnKDTrainerPaGKDDenOnly(nnKDTrainerPaGKD):
    """PaGKD ablation: GKD-Den alone (relation-masked dense reconstruction, no prototypes)."""

    plan_defaults = dict(nnKDTrainerPaGKD.plan_defaults, name="pagkd_den_only",
                         losses=[{"name": "gkd_den", "weight": 1.0, "params": {**_GKD_COMMON, **_GKD_DEN}}])


class nnKDTrainerPaGKDImageLevel(nnKDTrainerPaGKD):
    """PaGKD ablation: image-level instead of group-level distillation (each image with its class-matched partner)."""

    plan_defaults = dict(nnKDTrainerPaGKD.plan_defaults, name="pagkd_image_level",
                         losses=[{"name": "pagkd", "weight": 1.0,
                                  "params": {**_GKD_COMMON, **_GKD_PRO, **_GKD_DEN, "level": "image"}}])


class nnKDTrainerCoMoToImageKD(nnKDTrainerCoMoTo):
    """CoMoTo baseline: image-level KD (KL over every position of the stage) instead of lesion keypoints."""

    plan_defaults = dict(nnKDTrainerCoMoTo.plan_defaults, name="comoto_image_kd",
                         losses=[{"name": "image_kd", "weight": 1.0, "params": {"alpha": 2.0, "temperature": 4.0}}])


class nnKDTrainerCoMoToNoKD(nnKDTrainerCoMoTo):
    """CoMoTo baseline: no KD, only the initialisation from the teacher's weights (pre-training)."""

    requires_teachers = True  # the teacher provides the initial weights
    plan_defaults = dict(nnKDTrainerCoMoTo.plan_defaults, name="comoto_nokd", losses=[])
