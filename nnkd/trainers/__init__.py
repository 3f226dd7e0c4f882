"""nnU-Net trainer subclasses, one small class per method (see ``nnkd trainers``)."""
from nnkd.trainers.base import nnKDTrainer
from nnkd.trainers.cls import nnKDTrainerCls, nnKDTrainerClsBaseline, nnKDTrainerDoseTeacher
from nnkd.trainers.distill import (nnKDTrainerAT, nnKDTrainerDistill, nnKDTrainerDKD, nnKDTrainerFitNet,
                                   nnKDTrainerLogitKD, nnKDTrainerREACT, nnKDTrainerRegionGraph)
from nnkd.trainers.seg import nnKDTrainerSegKD, nnKDTrainerSegKDBaseline
from nnkd.trainers.unpaired import (nnKDTrainerCoMoTo, nnKDTrainerCoMoToImageKD, nnKDTrainerCoMoToNoKD, nnKDTrainerImPA,
                                    nnKDTrainerPaGKD, nnKDTrainerPaGKDDenOnly, nnKDTrainerPaGKDImageLevel,
                                    nnKDTrainerPaGKDProOnly, nnKDTrainerUnpaired)

from nnkd.trainers.registry import BUILTIN_TRAINERS, register_trainer

for _cls in (nnKDTrainer, nnKDTrainerCls, nnKDTrainerClsBaseline, nnKDTrainerDoseTeacher,
             nnKDTrainerDistill, nnKDTrainerREACT, nnKDTrainerLogitKD, nnKDTrainerRegionGraph, nnKDTrainerFitNet,
             nnKDTrainerAT, nnKDTrainerDKD, nnKDTrainerUnpaired, nnKDTrainerPaGKD, nnKDTrainerPaGKDProOnly,
             nnKDTrainerPaGKDDenOnly, nnKDTrainerPaGKDImageLevel, nnKDTrainerImPA, nnKDTrainerCoMoTo, nnKDTrainerCoMoToImageKD,
             nnKDTrainerCoMoToNoKD, nnKDTrainerSegKD, nnKDTrainerSegKDBaseline):
    register_trainer(_cls.__name__)(_cls)

__all__ = list(BUILTIN_TRAINERS) + ["BUILTIN_TRAINERS", "register_trainer"]
