"""The class-matched teacher sampler and the loader wait timer (no nnU-Net data needed)."""
import numpy as np
import pytest

from nnkd.data.class_matched import ClassMatchedSampler, check_teacher_classes
from nnkd.data.wait import TimedLoader
from nnkd.errors import NNKDError

TEACHER = {f"t{i:02d}": c for i, c in enumerate([0] * 5 + [1] * 2 + [2] * 9)}


def test_sample_matches_labels_index_by_index():
    sampler = ClassMatchedSampler(TEACHER, 3)
    labels = [2, 0, 0, 1, 2, 2]
    for _ in range(50):
        keys = sampler.sample(labels)
        assert [TEACHER[k] for k in keys] == labels


def test_sample_is_uniform_within_each_class():
    sampler = ClassMatchedSampler(TEACHER, 3)
    rng = np.random.default_rng(0)
    keys = sampler.sample([1] * 20000, rng)
    counts = {k: keys.count(k) for k in set(keys)}
    assert set(counts) == {"t05", "t06"}  # the two cases of class 1, nothing else
    assert abs(counts["t05"] / 20000 - 0.5) < 0.02
    keys = sampler.sample([2] * 18000, rng)
    freqs = np.array([keys.count(f"t{i:02d}") for i in range(7, 16)]) / 18000
    assert np.allclose(freqs, 1 / 9, atol=0.015)


def test_missing_class_is_a_clear_error_before_training():
    sampler = ClassMatchedSampler({k: c for k, c in TEACHER.items() if c != 1}, 3)
    assert sampler.missing([0, 1, 2]) == [1]
    with pytest.raises(NNKDError, match=r"teacher 'nbi'.*\['hyperplastic'\].*adenoma': 5"):
        check_teacher_classes(sampler, {"s1": 0, "s2": 1}, ["adenoma", "hyperplastic", "serrated"], "teacher 'nbi'")
    check_teacher_classes(sampler, {"s1": 0, "s2": 2}, ["adenoma", "hyperplastic", "serrated"], "teacher 'nbi'")
    with pytest.raises(NNKDError, match=r"class\(es\) \[1\]"):
        sampler.sample([0, 1])


def test_timed_loader_records_waits_and_forwards_attributes():
    class Gen:
        finished = False

        def __init__(self):
            self.it = iter(range(3))

        def __next__(self):
            return next(self.it)

        def _finish(self):
            self.finished = True

    gen = Gen()
    timed = TimedLoader(gen)
    assert [next(timed), next(timed)] == [0, 1]
    waits = timed.take()
    assert len(waits) == 2 and all(w >= 0 for w in waits)
    assert timed.take() == []
    timed._finish()
    assert gen.finished


def _fake_trainer(mode, teacher_net, student_net):
    from types import SimpleNamespace

    from nnkd.teachers import Teacher

    logs = []
    teacher = Teacher("mammo", teacher_net, {"0": "x"}, ["a", "b"], 2, {"checkpoint": "ck.pth"})
    return SimpleNamespace(kd_plan={"student": {"init_from_teacher": mode}}, kd_plan_source="plan.json",
                           teachers=[teacher], _bare_network=lambda: student_net, print_to_log_file=logs.append,
                           logs=logs)


@pytest.mark.parametrize("mode", [True, "auto"])
def test_init_from_teacher_copies_matching_weights(mode):
    import torch

    from nnkd.trainers.unpaired import nnKDTrainerUnpaired

    teacher, student = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(1, 4, 3)
    fake = _fake_trainer(mode, teacher, student)
    nnKDTrainerUnpaired._init_from_teacher(fake)
    assert torch.equal(student.weight, teacher.weight) and "initialised from teacher 'mammo'" in fake.logs[0]


def test_init_from_teacher_other_architecture():
    import torch

    from nnkd.trainers.unpaired import nnKDTrainerUnpaired

    teacher, student = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(1, 4, 3)
    before = student.weight.detach().clone()
    with pytest.raises(NNKDError, match=r"plan.json: student.init_from_teacher: teacher 'mammo' has another "
                                        r"architecture \(1 differing tensor\(s\), e.g. weight\)"):
        nnKDTrainerUnpaired._init_from_teacher(_fake_trainer(True, teacher, student))
    fake = _fake_trainer("auto", teacher, student)
    nnKDTrainerUnpaired._init_from_teacher(fake)  # "auto": keeps nnU-Net's initialisation and says so
    assert torch.equal(student.weight, before) and "starts from nnU-Net's initialisation" in fake.logs[0]
    fake = _fake_trainer(False, teacher, student)
    nnKDTrainerUnpaired._init_from_teacher(fake)
    assert fake.logs == []
