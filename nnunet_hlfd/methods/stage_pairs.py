"""Stage-to-stage distillation: weighted (student stage, teacher stage) pairs at two levels.

- pixel level: temperature KL between the student's deep-supervision prediction of decoder stage j and the
  teacher's prediction of decoder stage k (resized to the student's grid);
- feature level: attention transfer between student encoder stage i and teacher encoder stage k (the
  student's map resized to the teacher's grid, as in the authors' IMD).

Logit KD, attention transfer and most of HLFD's ablations are such pair lists; each is a declaration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from nnunet_hlfd.losses import attention_map, attention_transfer, resize, soft_kl, soft_probabilities
from nnunet_hlfd.methods.base import Captured, DistillationMethod, Taps


@dataclass(frozen=True)
class StagePair:
    student: int
    teacher: int
    weight: float


@dataclass(frozen=True)
class StagePairs:
    pixel: tuple[StagePair, ...] = ()  # decoder stages
    feature: tuple[StagePair, ...] = ()  # encoder stages


def spread(weight: float, pairs: list[tuple[int, int]]) -> tuple[StagePair, ...]:
    """``weight`` shared equally by ``pairs``: the mean over pairs, times ``weight``."""
    return tuple(StagePair(s, t, weight / len(pairs)) for s, t in pairs)


def _grid(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape[2:])


def pixel_pair_loss(
    student_logits: Mapping[int, torch.Tensor],
    teacher_logits: Mapping[int, torch.Tensor],
    pairs: tuple[StagePair, ...],
    temperature: float,
    regions: bool,
    valid: Mapping[int, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Σ_pairs weight · T² · mean over valid voxels of KL(teacher_k ‖ student_j), on the student's grid."""
    valid = valid or {}
    terms = []
    for pair in pairs:
        s = student_logits[pair.student]
        q = resize(soft_probabilities(teacher_logits[pair.teacher], temperature, regions), _grid(s))
        terms.append(pair.weight * soft_kl(s, q, temperature, regions, valid.get(pair.student)))
    return torch.stack(terms).sum()


def feature_pair_loss(
    student_features: Mapping[int, torch.Tensor],
    teacher_features: Mapping[int, torch.Tensor],
    pairs: tuple[StagePair, ...],
    exponent: float,
) -> torch.Tensor:
    """Σ_pairs weight · ‖Â(student_i) − Â(teacher_k)‖² (attention maps, the student's on the teacher's grid)."""
    terms = []
    for pair in pairs:
        t = attention_map(teacher_features[pair.teacher], exponent)
        s = resize(attention_map(student_features[pair.student], exponent), _grid(t))
        terms.append(pair.weight * attention_transfer(s, t))
    return torch.stack(terms).sum()


def require_deep_supervision(student: Captured, pairs: StagePairs, method: str) -> None:
    needed = {p.student for p in pairs.pixel}
    if not needed <= set(student.logits):
        raise RuntimeError(
            f"{method} reads the student's predictions of decoder stages {sorted(needed)} from its deep-supervision "
            "outputs: keep enable_deep_supervision = True"
        )


class StagePairMethod(DistillationMethod):
    """A method given by its pairs (a function of the number of stages), a temperature and an exponent.

    Terms: ``pixel`` and ``feature`` (each already weighted) and ``total`` = their sum.
    """

    term_names = ("pixel", "feature")
    pairs_for: Callable[[int], StagePairs]
    temperature: float = 4.0
    exponent: float = 4.0

    def student_taps(self, n_stages: int) -> Taps:
        return Taps(encoder=tuple(sorted({p.student for p in self.pairs_for(n_stages).feature})))

    def teacher_taps(self, n_stages: int) -> Taps:
        return Taps(encoder=tuple(sorted({p.teacher for p in self.pairs_for(n_stages).feature})))

    def loss(
        self, student: Captured, teacher: Captured, adapters, valid, regions: bool, targets=None
    ) -> dict[str, torch.Tensor]:
        pairs = self.pairs_for(teacher.n_stages)
        require_deep_supervision(student, pairs, type(self).__name__)
        zero = next(iter(student.logits.values())).new_zeros((), dtype=torch.float32)
        pixel = (
            pixel_pair_loss(student.logits, teacher.logits, pairs.pixel, self.temperature, regions, valid)
            if pairs.pixel
            else zero
        )
        feature = (
            feature_pair_loss(student.encoder, teacher.encoder, pairs.feature, self.exponent) if pairs.feature else zero
        )
        return {"pixel": pixel, "feature": feature, "total": pixel + feature}
