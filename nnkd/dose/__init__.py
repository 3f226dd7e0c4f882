"""Low-dose CT simulation (REACT-KD's dose-aware teacher and dose-robustness tests).

:func:`simulate_low_dose` / :func:`simulate_low_doses` work on HU volumes ``(Z, Y, X)``;
:mod:`nnkd.dose.radon` holds the parallel-beam operators; the on-line image-domain
approximation is :class:`nnkd.transforms.dose.LowDoseNoise`; :mod:`nnkd.dose.dataset` (``nnkd
simulate-dose``) makes whole nnU-Net raw datasets.
"""
from nnkd.dose.radon import ParallelBeam, SkimageParallelBeam
from nnkd.dose.simulate import DOSE_LEVELS, MU_WATER_PER_MM, VARIANTS, simulate_low_dose, simulate_low_doses

__all__ = ["DOSE_LEVELS", "MU_WATER_PER_MM", "VARIANTS", "ParallelBeam", "SkimageParallelBeam",
           "simulate_low_dose", "simulate_low_doses"]
