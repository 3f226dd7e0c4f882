"""nnU-Net trainer subclasses, one small class per method (see ``nnkd trainers``)."""
from nnkd.trainers.base import nnKDTrainer
from nnkd.trainers.cls import nnKDTrainerCls, nnKDTrainerClsBaseline, nnKDTrainerDoseTeacher
from nnkd.trainers.distill import (nnKDTrainerAT, nnKDTrainerDistill, nnKDTrainerDKD, nnKDTrainerFitNet,
                                   nnKDTrainerLogitKD, nnKDTrainerREACT)
from nnkd.trainers.unpaired import (nnKDTrainerCoMoTo, nnKDTrainerCoMoToImageKD, nnKDTrainerCoMoToNoKD, nnKDTrainerImPA,
                                    nnKDTrainerPaGKD, nnKDTrainerPaGKDDenOnly, nnKDTrainerPaGKDImageLevel,
                                    nnKDTrainerPaGKDProOnly, nnKDTrainerUnpaired)

BUILTIN_TRAINERS = [nnKDTrainer, nnKDTrainerCls, nnKDTrainerClsBaseline, nnKDTrainerDoseTeacher,
                    nnKDTrainerDistill, nnKDTrainerREACT, nnKDTrainerLogitKD, nnKDTrainerFitNet, nnKDTrainerAT,
                    nnKDTrainerDKD, nnKDTrainerUnpaired, nnKDTrainerPaGKD, nnKDTrainerPaGKDProOnly, nnKDTrainerPaGKDDenOnly,
                    nnKDTrainerPaGKDImageLevel, nnKDTrainerImPA, nnKDTrainerCoMoTo, nnKDTrainerCoMoToImageKD,
                    nnKDTrainerCoMoToNoKD]

__all__ = [c.__name__ for c in BUILTIN_TRAINERS] + ["BUILTIN_TRAINERS"]
