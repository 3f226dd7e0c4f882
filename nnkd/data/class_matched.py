"""Drawing teacher cases whose class labels match a student batch, one for one."""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import numpy as np

from nnkd.errors import NNKDError


class ClassMatchedSampler:
    """Draws, for a vector of class labels, cases of the same classes (uniformly within each class).

    ``sample(labels)[j]`` has class ``labels[j]``: the teacher batch holds exactly the student
    batch's multiset of labels, sample by sample. Each class is drawn with the probability the
    student batch gives it, so a class-balanced student stream yields a class-balanced teacher one.
    """

    def __init__(self, case_to_class: Mapping[str, int], num_classes: int):
        self.case_to_class = dict(case_to_class)
        keys = np.array(sorted(case_to_class))
        classes = np.array([case_to_class[k] for k in keys], dtype=np.int64)
        order = np.argsort(classes, kind="stable")
        self.keys = keys[order]
        self.counts = np.bincount(classes, minlength=num_classes)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    def missing(self, required: Sequence[int]) -> List[int]:
        """Classes among ``required`` that have no case to draw from."""
        return sorted(int(c) for c in set(required) if self.counts[c] == 0)

    def sample(self, labels: Sequence[int], rng: Optional[np.random.Generator] = None) -> List[str]:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and self.counts[labels].min() == 0:
            raise NNKDError(f"no teacher case of class(es) {self.missing(labels)} to match the student batch")
        u = rng.random(labels.size) if rng is not None else np.random.random(labels.size)
        idx = self.offsets[labels] + np.minimum((u * self.counts[labels]).astype(np.int64), self.counts[labels] - 1)
        return self.keys[idx].tolist()


def check_teacher_classes(sampler: ClassMatchedSampler, student_case_to_class: Mapping[str, int],
                          class_names: Sequence[str], where: str) -> None:
    """Every class the student trains on must exist in the teacher's data (checked before training)."""
    needed = sorted(set(student_case_to_class.values()))
    missing = sampler.missing(needed)
    if missing:
        raise NNKDError(f"{where} has no case of class(es) {[class_names[c] for c in missing]}, which the student's "
                        f"training cases contain; a class-matched teacher batch cannot be drawn (teacher class counts: "
                        f"{dict(zip(class_names, sampler.counts.tolist()))})")
