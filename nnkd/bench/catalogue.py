"""The three benchmark settings of ``nnkd bench quality``, ``nnkd bench speed`` and ``nnkd demo``, in one place.

Each :class:`Benchmark` is one synthetic setting (``nnkd synth KIND``): paired 3D PET/CT grading
(REACT-KD), unpaired 2D polyp classification (PaGKD) and unpaired 2D lesion detection (CoMoTo). It
names the models the quality benchmark trains (:class:`Method`, with a plan file each), the
teachers a distillation plan refers to, the data size and schedule of the quality runs
(:class:`Schedule`) and the speed benchmark's own data (:class:`SpeedSetup`: larger patches, own
dataset ids). The speed benchmark's teacher folders are derived from the same methods
(:func:`speed_dataset`), and its rows (:data:`SPEED_CASES`) are one per distillation trainer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from nnkd.errors import NNKDError

TEACHER, AUX_TEACHER, NOKD, CEILING, KD = "teacher", "second teacher", "no KD", "ceiling", "KD"


@dataclass(frozen=True)
class Method:
    """One trained model of a benchmark."""

    key: str  # short id: folder names and tables
    label: str
    trainer: str
    plan: str  # a plan shipped with the package (nnkd/plans/), named for trainer
    role: str  # TEACHER, AUX_TEACHER, NOKD, CEILING (the no-KD student on 10x its data) or KD
    channels: Optional[Tuple[int, ...]] = None  # test-image channels it deploys with (None = all)
    teacher_side: bool = False  # trained and tested on the teacher modality's datasets (unpaired teachers)


@dataclass(frozen=True)
class Schedule:
    """Data size and training length of one benchmark."""

    cases: int  # training cases (per dataset for the unpaired kinds)
    test_cases: int
    size: Tuple[int, ...]
    epochs: int
    iterations: int
    val_iterations: int
    student_fraction: float = 1.0  # share of the student's training cases the no-KD and KD students use
    ceiling_fraction: float = 1.0  # share the achievable ceiling (the no-KD student's trainer and plan) uses
    teacher_epochs: Optional[int] = None  # epochs of the teachers (None: ``epochs``, as every other model)


@dataclass(frozen=True)
class SpeedSetup:
    """``nnkd bench speed``'s dataset of a setting: its own ids (student N, teacher N+1 for unpaired kinds)
    and sizes, the plan's ``student`` entry and extra fields of each teacher's plan entry (by teacher name)."""

    dataset_id: int
    size: Tuple[int, ...]
    cases: int
    quick_size: Tuple[int, ...]
    quick_cases: int
    student: Dict[str, Any]
    teacher_entries: Dict[str, Dict[str, Any]]
    batch_case: str  # the speed case whose data loader makes the shared batches (its loader's keys are a superset)


@dataclass(frozen=True)
class Benchmark:
    key: str
    title: str
    kind: str  # nnkd synth KIND
    task: str  # "classification" or "detection"
    config: str
    dataset_id: int  # student training set; +1 teacher set (unpaired); +2 / +3 the test sets
    methods: Tuple[Method, ...]
    teachers: Dict[str, str]  # plan teacher name -> key of the method that provides it
    full: Schedule
    quick: Schedule
    speed: SpeedSetup  # data and plan entries of nnkd bench speed
    max_features: Optional[int] = None  # cap on nnU-Net's features per encoder stage (smaller, faster networks)
    max_batch_size: Optional[int] = None  # cap on nnU-Net's batch size (it grows with the number of cases)

    def method(self, key: str) -> Method:
        return next(m for m in self.methods if m.key == key)

    @property
    def metric(self) -> str:
        return "macro AUC" if self.task == "classification" else "FROC mean sensitivity (1-4 FP/case)"

    @property
    def unpaired(self) -> bool:
        return self.kind != "paired3d"

    def role(self, role: str) -> List[Method]:
        return [m for m in self.methods if m.role == role]


CT = (0,)
_CT = {"channels": ["CT"]}
PAIRED3D = Benchmark(
    "paired3d", "Paired 3D PET/CT grading (REACT-KD setting): CT-only students, CT+FDG+ACE teacher",
    "paired3d", "classification", "3d_fullres", 930,
    (Method("teacher", "teacher CT+FDG+ACE", "nnKDTrainerCls", "cls_teacher", TEACHER),
     Method("dose_teacher", "dose-aware teacher CT", "nnKDTrainerDoseTeacher", "react_dose_teacher", AUX_TEACHER, CT),
     Method("nokd", "student CT, no KD", "nnKDTrainerClsBaseline", "cls_student", NOKD, CT),
     Method("ceiling", "student CT, no KD, 10x data (ceiling)", "nnKDTrainerClsBaseline", "cls_student", CEILING, CT),
     Method("react", "REACT-KD", "nnKDTrainerREACT", "react_kd", KD, CT),
     Method("logit", "logit KD (Hinton)", "nnKDTrainerLogitKD", "kd_logit", KD, CT),
     Method("graph", "region-graph KD alone", "nnKDTrainerRegionGraph", "kd_region_graph", KD, CT),
     Method("fitnet", "FitNet", "nnKDTrainerFitNet", "kd_fitnet", KD, CT),
     Method("at", "attention transfer", "nnKDTrainerAT", "kd_at", KD, CT),
     Method("dkd", "DKD", "nnKDTrainerDKD", "kd_dkd", KD, CT)),
    {"structure_function": "teacher", "dose_aware": "dose_teacher"},
    # 300 cases: the teachers train on the 240 of fold 0, the CT students on 24 of them, the ceiling on all 240
    full=Schedule(cases=300, test_cases=60, size=(16, 32, 32), epochs=15, iterations=20, val_iterations=4,
                  student_fraction=0.1, ceiling_fraction=1.0),
    quick=Schedule(cases=12, test_cases=6, size=(16, 32, 32), epochs=1, iterations=2, val_iterations=1,
                   student_fraction=0.5, ceiling_fraction=1.0),
    max_features=32,
    max_batch_size=4,
    speed=SpeedSetup(980, size=(24, 40, 40), cases=10, quick_size=(16, 32, 32), quick_cases=8, student=_CT,
                     teacher_entries={"structure_function": {"channels": ["CT", "FDG", "ACE"]},
                                      "dose_aware": {"channels": ["CT"]}},
                     batch_case="plain paired3d"),
)
UNPAIRED2D = Benchmark(
    "unpaired2d", "Unpaired 2D polyp classification (PaGKD setting): white-light student, narrow-band teacher",
    "unpaired2d", "classification", "2d", 940,
    (Method("teacher", "teacher narrow-band", "nnKDTrainerCls", "pagkd_teacher", TEACHER, teacher_side=True),
     Method("nokd", "student white-light, no KD", "nnKDTrainerClsBaseline", "pagkd_teacher", NOKD),
     Method("ceiling", "student white-light, no KD, 10x data (ceiling)", "nnKDTrainerClsBaseline", "pagkd_teacher",
            CEILING),
     Method("pagkd", "PaGKD (GKD-Pro + GKD-Den)", "nnKDTrainerPaGKD", "pagkd", KD),
     Method("pro_only", "GKD-Pro only", "nnKDTrainerPaGKDProOnly", "pagkd_pro_only", KD),
     Method("den_only", "GKD-Den only", "nnKDTrainerPaGKDDenOnly", "pagkd_den_only", KD),
     Method("image_level", "image-level instead of group-level", "nnKDTrainerPaGKDImageLevel", "pagkd_image_level", KD)),
    {"nbi": "teacher"},
    # 360 cases per modality: the NBI teacher trains on the 288 of fold 0, the WLI students on 30, the ceiling on 288
    full=Schedule(cases=360, test_cases=90, size=(64, 64), epochs=15, iterations=20, val_iterations=4,
                  student_fraction=0.1, ceiling_fraction=1.0),
    quick=Schedule(cases=12, test_cases=6, size=(32, 32), epochs=1, iterations=2, val_iterations=1,
                   student_fraction=0.5, ceiling_fraction=1.0),
    max_features=32,
    max_batch_size=12,  # PaGKD's groups: several images of each class per batch
    # nnU-Net's 2d batch is 5 % of the cases (120 cases: batches of 6, two per class), each with a class-matched
    # teacher batch
    speed=SpeedSetup(982, size=(64, 64), cases=120, quick_size=(32, 32), quick_cases=40, student={},
                     teacher_entries={}, batch_case="PaGKD"),
)
LESION2D = Benchmark(
    "lesion2d", "Unpaired 2D lesion detection (CoMoTo setting): tomosynthesis-like student, mammography teacher",
    "lesion2d", "detection", "2d", 950,
    (Method("teacher", "ImPA teacher mammography", "nnKDTrainerImPA", "impa_teacher", TEACHER, teacher_side=True),
     Method("nokd", "student, no KD (teacher init)", "nnKDTrainerCoMoToNoKD", "comoto_nokd", NOKD),
     Method("ceiling", "student, no KD, 10x data (ceiling)", "nnKDTrainerCoMoToNoKD", "comoto_nokd", CEILING),
     Method("comoto", "CoMoTo (LsKD)", "nnKDTrainerCoMoTo", "comoto", KD),
     Method("image_kd", "image-level KD", "nnKDTrainerCoMoToImageKD", "comoto_image_kd", KD)),
    {"mammography": "teacher"},
    # 200 cases per modality: the teacher trains on the 160 of fold 0, the students on 16 (10 %), the ceiling on 160.
    # 60 iterations per epoch: at 20 the teacher-initialised students were iteration-limited, ten times the data
    # did not help (3 seeds: no KD 0.756, ceiling 0.741), so no method had a gap to close
    full=Schedule(cases=200, test_cases=60, size=(64, 64), epochs=15, iterations=60, val_iterations=4,
                  student_fraction=0.1, ceiling_fraction=1.0),
    quick=Schedule(cases=12, test_cases=6, size=(32, 32), epochs=1, iterations=2, val_iterations=1,
                   student_fraction=0.5, ceiling_fraction=1.0),
    max_features=32,
    max_batch_size=8,
    speed=SpeedSetup(984, size=(64, 64), cases=60, quick_size=(32, 32), quick_cases=40, student={},
                     teacher_entries={}, batch_case="CoMoTo"),
)
BENCHMARKS = {b.key: b for b in (PAIRED3D, UNPAIRED2D, LESION2D)}


# ------------------------------------------------------------------------------------------- bench speed
PLAIN_TRAINER = "nnKDTrainerClsBaseline"


@dataclass(frozen=True)
class TeacherModel:
    """A teacher model folder ``nnkd bench speed`` builds from an untrained network."""

    name: str
    trainer: str
    plan: Dict[str, Any]
    dataset_offset: int = 0  # 0: the student's dataset (paired); 1: the teacher dataset (unpaired kinds)
    plan_entry: Dict[str, Any] = field(default_factory=dict)  # extra fields of the student's plan entry
    paired: bool = True  # False: the student's plan names the teacher's dataset, batches come class-matched


@dataclass(frozen=True)
class BenchDataset:
    """A speed benchmark dataset (``nnkd synth KIND``), its nnU-Net configuration and teachers."""

    kind: str
    dataset_id: int
    configuration: str
    size: Tuple[int, ...]
    cases: int
    quick_size: Tuple[int, ...]
    quick_cases: int
    n_datasets: int  # 1 paired, 2 unpaired (student N, teacher N+1)
    student: Dict[str, Any]  # the plan's ``student`` entry
    teachers: Tuple[TeacherModel, ...]
    batch_case: str


def speed_dataset(bench: Benchmark) -> BenchDataset:
    """The speed benchmark's view of ``bench``: its teachers are the benchmark's teacher methods (same trainers,
    teacher-side datasets for the unpaired kinds), with the speed setup's data and plan entries."""
    s = bench.speed
    teachers = tuple(TeacherModel(name, bench.method(key).trainer, {},
                                  dataset_offset=1 if bench.method(key).teacher_side else 0,
                                  plan_entry=dict(s.teacher_entries.get(name, {})),
                                  paired=not bench.method(key).teacher_side)
                     for name, key in bench.teachers.items())
    return BenchDataset(kind=bench.kind, dataset_id=s.dataset_id, configuration=bench.config, size=s.size,
                        cases=s.cases, quick_size=s.quick_size, quick_cases=s.quick_cases,
                        n_datasets=2 if bench.unpaired else 1, student=s.student, teachers=teachers,
                        batch_case=s.batch_case)


DATASETS: Dict[str, BenchDataset] = {k: speed_dataset(b) for k, b in BENCHMARKS.items()}


@dataclass(frozen=True)
class Case:
    """One row of the speed table: a method's trainer on a benchmark dataset (plan = trainer defaults + teachers)."""

    label: str
    trainer: str
    dataset: str
    plan: Dict[str, Any] = field(default_factory=dict)  # extra plan fields (e.g. loss overrides)


#: The speed table's rows, one per distillation trainer. Plain ``nnKDTrainerClsBaseline`` rows
#: ("plain <dataset>") are added per dataset.
SPEED_CASES: List[Case] = [
    Case("REACT-KD", "nnKDTrainerREACT", "paired3d"),
    Case("logit KD", "nnKDTrainerLogitKD", "paired3d"),
    Case("FitNet", "nnKDTrainerFitNet", "paired3d"),
    Case("AT", "nnKDTrainerAT", "paired3d"),
    Case("DKD", "nnKDTrainerDKD", "paired3d"),
    Case("PaGKD", "nnKDTrainerPaGKD", "unpaired2d"),
    Case("CoMoTo", "nnKDTrainerCoMoTo", "lesion2d"),
]


def plain_case(dataset: str) -> Case:
    return Case(f"plain {dataset}", PLAIN_TRAINER, dataset)


def speed_cases(selected: Optional[Sequence[str]] = None) -> List[Case]:
    """Plain rows first (per dataset used), then the method rows; ``selected`` filters method labels."""
    methods = SPEED_CASES
    if selected:
        known = {c.label.lower(): c for c in SPEED_CASES}
        unknown = [s for s in selected if s.lower() not in known]
        if unknown:
            raise NNKDError(f"unknown method(s) {unknown}; known: {', '.join(c.label for c in SPEED_CASES)}")
        methods = [known[s.lower()] for s in selected]
    datasets = list(dict.fromkeys(c.dataset for c in methods))
    return [plain_case(d) for d in datasets] + list(methods)
