"""nnU-Net trainer subclasses, one small class per method (see ``nnkd trainers``)."""
from nnkd.trainers.base import nnKDTrainer
from nnkd.trainers.cls import nnKDTrainerCls, nnKDTrainerClsBaseline

BUILTIN_TRAINERS = [nnKDTrainer, nnKDTrainerCls, nnKDTrainerClsBaseline]

__all__ = [c.__name__ for c in BUILTIN_TRAINERS] + ["BUILTIN_TRAINERS"]
