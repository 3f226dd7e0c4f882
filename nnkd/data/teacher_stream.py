"""The unpaired teacher stream: class-matched teacher batches from the teacher's own nnU-Net dataset.

An unpaired teacher (plan ``teachers[i].paired = false``) reads its own preprocessed dataset
(``teachers[i].dataset``), cropped and augmented with its own plans (patch size, nnU-Net's
training transforms). :class:`UnpairedDataLoader` is the student's nnU-Net loader plus, per
student batch, one teacher batch whose sample j has the class of student sample j. Both are
built in nnU-Net's data-augmentation workers, so the teacher data never waits on the main process.

Batch keys added: ``teacher_data`` / ``teacher_target`` / ``teacher_keys``, lists with one entry
per unpaired teacher (``teacher_target``: the full-resolution label map, ``(B, 1, *patch)``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, List, Mapping, Optional, Sequence

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnkd.data.class_matched import ClassMatchedSampler, check_teacher_classes
from nnkd.dataset_folders import PREPROCESSED, dataset_folder, load_json
from nnkd.errors import NNKDError
from nnkd.labels import case_labels


class KeyedDataLoader(nnUNetDataLoader):
    """nnU-Net's loader, but the caller names the cases of each batch (``load(keys)``)."""

    _keys: Sequence[str] = ()

    def get_indices(self):
        return list(self._keys)

    def load(self, keys: Sequence[str]) -> dict:
        self._keys = keys
        return self.generate_train_batch()


@dataclass
class TeacherData:
    """One unpaired teacher's data: its loader (its own plans and augmentation) and class-matched sampler."""

    name: str
    loader: KeyedDataLoader
    sampler: ClassMatchedSampler
    channels: Optional[List[int]]  # the teacher network's input channels of its dataset (None: all)
    dataset_folder: str

    def batch(self, labels: Sequence[int]) -> dict:
        keys = self.sampler.sample(labels)
        b = self.loader.load(keys)
        data = b["data"] if self.channels is None else b["data"][:, self.channels]
        return {"data": data, "target": b["target"], "keys": keys}


def build_teacher_data(spec: Mapping, meta: Mapping, batch_size: int, student_case_to_class: Mapping[str, int],
                       student_class_names: Sequence[str], oversample_foreground_percent: float = 0.33
                       ) -> TeacherData:
    """Loader and sampler of one unpaired teacher, checked against the student before training.

    ``meta`` is the teacher loader's metadata (``model_folder``, ``configuration``); the teacher's
    plans come from its model folder, its cases from ``nnUNet_preprocessed/<spec['dataset']>``.
    """
    where = f"teacher '{spec['name']}'"
    folder = dataset_folder(spec["dataset"], PREPROCESSED, where)
    model_folder = meta.get("model_folder")
    if model_folder is None:
        raise NNKDError(f"{where}: an unpaired teacher needs a model folder with nnU-Net plans (loader "
                        f"{spec.get('loader')!r} gave none)")
    plans = load_json(os.path.join(model_folder, "plans.json"))
    pm = PlansManager(plans)
    cm = pm.get_configuration(meta["configuration"])
    data_folder = os.path.join(folder, cm.data_identifier)
    if not os.path.isdir(data_folder):
        raise NNKDError(f"{where}: {data_folder} does not exist; run nnUNetv2_plan_and_preprocess -d {spec['dataset']} "
                        f"-c {meta['configuration']} -p {pm.plans_name} for the teacher's dataset")
    ds_json_path = os.path.join(folder, "dataset.json")
    ds_json = load_json(ds_json_path)
    class_names, case_to_class = case_labels(ds_json, ds_json_path)
    if list(class_names) != list(student_class_names):
        raise NNKDError(f"{where}: the teacher dataset's classes {class_names} ({ds_json_path}) differ from the "
                        f"student's {list(student_class_names)}")
    dataset = infer_dataset_class(data_folder)(data_folder)
    unlabelled = sorted(set(dataset.identifiers) - set(case_to_class))
    if unlabelled:
        raise NNKDError(f"{where}: {len(unlabelled)} case(s) of {data_folder} have no case label in {ds_json_path} "
                        f"({', '.join(unlabelled[:20])}); run 'nnkd labels import {spec['dataset']} LABELS.csv'")
    sampler = ClassMatchedSampler({k: case_to_class[k] for k in dataset.identifiers}, len(class_names))
    check_teacher_classes(sampler, student_case_to_class, class_names, f"{where} ({data_folder})")

    # nnU-Net's own choice of rotation, mirroring and initial patch size for the teacher's patch size
    proxy = SimpleNamespace(configuration_manager=cm, print_to_log_file=lambda *a, **k: None)
    rotation, dummy_2d, initial_patch, mirror_axes = \
        nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(proxy)
    lm = pm.get_label_manager(ds_json)
    transforms = nnUNetTrainer.get_training_transforms(
        cm.patch_size, rotation, None, mirror_axes, dummy_2d, use_mask_for_norm=cm.use_mask_for_norm,
        is_cascaded=False, foreground_labels=lm.foreground_labels,
        regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
    loader = KeyedDataLoader(dataset, batch_size, initial_patch, cm.patch_size, lm,
                             oversample_foreground_percent=oversample_foreground_percent, transforms=transforms)
    channels = plans.get("nnkd", {}).get("input_channels")
    if channels is not None and list(channels) == list(range(len(ds_json["channel_names"]))):
        channels = None
    return TeacherData(spec["name"], loader, sampler, channels, folder)


class UnpairedDataLoader(nnUNetDataLoader):
    """The student's nnU-Net loader; each batch also carries one class-matched batch per unpaired teacher."""

    def __init__(self, *args, case_to_class: Mapping[str, int], teachers: Sequence[TeacherData], **kwargs):
        super().__init__(*args, **kwargs)
        self.case_to_class = dict(case_to_class)
        self.teachers = list(teachers)

    def generate_train_batch(self) -> Dict:
        batch = super().generate_train_batch()
        labels = [self.case_to_class[k] for k in batch["keys"]]
        parts = [t.batch(labels) for t in self.teachers]
        batch["teacher_data"] = [p["data"] for p in parts]
        batch["teacher_target"] = [p["target"] for p in parts]
        batch["teacher_keys"] = [p["keys"] for p in parts]
        return batch
