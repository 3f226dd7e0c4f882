"""nnkd's own losses, trainers, teacher loaders and transforms, registered like any plugin.

They are registered by reference (``"module:attr"``), so that listing them imports neither torch nor
nnU-Net; ``tests/test_plugins.py`` checks these tables against the classes the modules define. Each kind also has one
:class:`nnkd.name_table.NameTable` (``BUILTIN_<KIND>``), filled by the modules' decorators when imported.
"""
from nnkd.hooks import hookimpl

TRAINERS = {
    "nnKDTrainer": "nnkd.trainers.base:nnKDTrainer",
    **{name: f"nnkd.trainers.cls:{name}" for name in ("nnKDTrainerCls", "nnKDTrainerClsBaseline",
                                                      "nnKDTrainerDoseTeacher")},
    **{name: f"nnkd.trainers.distill:{name}" for name in ("nnKDTrainerDistill", "nnKDTrainerREACT",
                                                          "nnKDTrainerLogitKD", "nnKDTrainerRegionGraph",
                                                          "nnKDTrainerFitNet",
                                                          "nnKDTrainerAT", "nnKDTrainerDKD")},
    **{name: f"nnkd.trainers.unpaired:{name}" for name in (
        "nnKDTrainerUnpaired", "nnKDTrainerPaGKD", "nnKDTrainerPaGKDProOnly", "nnKDTrainerPaGKDDenOnly",
        "nnKDTrainerPaGKDImageLevel", "nnKDTrainerImPA", "nnKDTrainerCoMoTo", "nnKDTrainerCoMoToImageKD",
        "nnKDTrainerCoMoToNoKD")},
    **{name: f"nnkd.trainers.seg:{name}" for name in ("nnKDTrainerSegKD", "nnKDTrainerSegKDBaseline")},
}
LOSSES = {
    "ce": "nnkd.losses.classification:CrossEntropy",
    "focal": "nnkd.losses.classification:FocalLoss",
    "logit_kd": "nnkd.losses.logit:LogitKD",
    "dkd": "nnkd.losses.logit:DKD",
    "seg_kd": "nnkd.losses.seg:SegKD",
    "fitnet": "nnkd.losses.feature:FitNet",
    "at": "nnkd.losses.feature:AttentionTransfer",
    "region_graph": "nnkd.losses.graph:RegionGraphKD",
    "pagkd": "nnkd.losses.group:PaGKDLoss",
    "gkd_pro": "nnkd.losses.group:GKDProLoss",
    "gkd_den": "nnkd.losses.group:GKDDenLoss",
    "impa": "nnkd.losses.lesion:ImPALoss",
    "lskd": "nnkd.losses.lesion:LsKDLoss",
    "image_kd": "nnkd.losses.lesion:ImageKDLoss",
}
TEACHER_LOADERS = {"nnunet": "nnkd.teachers:load_nnunet_teacher"}
TRANSFORMS = {
    "modality_dropout": "nnkd.transforms.modality_dropout:ModalityDropout",
    "lowdose_noise": "nnkd.transforms.dose:LowDoseNoise",
}


@hookimpl
def nnkd_register_losses():
    return dict(LOSSES)


@hookimpl
def nnkd_register_trainers():
    return dict(TRAINERS)


@hookimpl
def nnkd_register_teacher_loaders():
    return dict(TEACHER_LOADERS)


@hookimpl
def nnkd_register_transforms():
    return dict(TRANSFORMS)
