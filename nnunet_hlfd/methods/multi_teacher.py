"""Multi-teacher KD from limit-trained teachers (after Ben Loussaief et al., 2023): several frozen teachers, each
trained on a small subset, are combined into one target; the student learns it with feature distillation + KL +
Lovász, on top of nnU-Net's own Dice + CE.

Combining the teachers' soft predictions. Each teacher k gives probabilities p_k (softmax over classes for
labels, per-channel sigmoid for regions).

- ``mean``: p = (1/K) Σ_k p_k.
- ``confidence``: p(x) = Σ_k w_k(x) p_k(x) with w_k(x) = conf_k(x) / Σ_j conf_j(x), where conf_k(x) is teacher
  k's confidence: its largest class probability at voxel x (labels), or the mean over channels of
  max(p, 1 − p) (regions). A teacher that is unsure where another is sure counts less there.
- ``sample_confidence``: the same with each teacher's confidence averaged over the sample's voxels, i.e. one
  weight per teacher and sample.

Confidence is read from the teachers' own (T = 1) predictions; the weights then combine the softened (T)
predictions for the KL term and the teachers' attention maps for the feature term.

Why attention maps for the features: the channels of independently trained teachers do not correspond (channel
7 of one is not channel 7 of another), so averaging their feature maps means nothing. The spatial attention
map A(f) = channel mean of |f|^p, L2-normalised, does not depend on the channel order, so the teachers' maps are
combined with the same weights (resized to each stage's grid) and the student's maps are pulled towards them
(attention transfer, as the ``at`` baseline). No adapters: nothing to synchronise under DDP.

Terms (each weighted): ``kl`` = T² · KL(combined ‖ student) on the final prediction; ``feature`` = attention
transfer at encoder stages 1..n-1; ``lovasz`` = Lovász-softmax of the student's prediction against the labels
(Lovász hinge per region for region datasets). nnU-Net's ignore label is masked out of all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nnunet_hlfd.losses import attention_map, attention_transfer, resize, soft_kl, soft_probabilities
from nnunet_hlfd.losses.lovasz import lovasz_hinge, lovasz_softmax
from nnunet_hlfd.methods.base import Captured, DistillationMethod, Taps

COMBINATIONS = ("mean", "confidence", "sample_confidence")


def teacher_confidence(probabilities: torch.Tensor, regions: bool) -> torch.Tensor:
    """(B, 1, *spatial) confidence of one teacher's (B, C, *spatial) probabilities."""
    if regions:
        return torch.maximum(probabilities, 1 - probabilities).mean(1, keepdim=True)
    return probabilities.max(1, keepdim=True).values


def teacher_weights(confidences: list[torch.Tensor], mode: str) -> torch.Tensor:
    """(K, B, 1, *spatial or 1s) weights summing to 1 over the K teachers, from their (B, 1, *spatial)
    confidences."""
    if mode not in COMBINATIONS:
        raise ValueError(f"unknown combination {mode!r}: choose one of {COMBINATIONS}")
    confidence = torch.stack([c.float() for c in confidences])
    if mode == "mean":
        # one weight per teacher and sample: nothing to resize to the feature grids
        return confidence.new_full((*confidence.shape[:3], *[1] * (confidence.ndim - 3)), 1.0 / len(confidences))
    if mode == "sample_confidence":
        confidence = confidence.mean(dim=tuple(range(3, confidence.ndim)), keepdim=True)
    return confidence / confidence.sum(0, keepdim=True).clamp_min(1e-12)


def combine_probabilities(
    probabilities: list[torch.Tensor], mode: str = "mean", regions: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The combined (B, C, *spatial) probabilities and the (K, B, 1, *spatial or 1s) teacher weights."""
    weights = teacher_weights([teacher_confidence(p.float(), regions) for p in probabilities], mode)
    return weighted_sum([p.float() for p in probabilities], weights), weights


def weighted_sum(maps: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k · maps_k, the (K, B, 1, ...) weights resized to the maps' grid where they are per voxel."""
    grid = maps[0].shape[2:]
    per_voxel = any(s > 1 for s in weights.shape[3:])
    return sum((resize(w, grid) if per_voxel else w) * m for w, m in zip(weights, maps))


@dataclass
class TeacherSummary:
    """What the loss needs of one teacher: softened final prediction, confidence, normalised attention maps."""

    soft: torch.Tensor
    confidence: torch.Tensor
    attention: dict[int, torch.Tensor]


@dataclass
class CombinedTeachers:
    soft: torch.Tensor
    attention: dict[int, torch.Tensor]
    weights: torch.Tensor  # (K, B, 1, *spatial or 1s), for logging and tests


def multi_teacher_loss(
    student_logits: torch.Tensor,
    student_features: dict[int, torch.Tensor],
    teachers: CombinedTeachers,
    target: torch.Tensor,
    valid: torch.Tensor | None,
    config: MultiTeacherConfig,
    regions: bool,
) -> dict[str, torch.Tensor]:
    """The weighted terms for the student's final (B, C, *spatial) logits and tapped encoder features.

    ``target``: nnU-Net's target on the final grid, (B, 1, *spatial) labels or (B, R[+1], *spatial) region
    masks (an extra last channel marks the ignore label); ``valid``: (B, *spatial), False where it is ignored.
    """
    kl = soft_kl(student_logits, teachers.soft, config.temperature, regions, valid)
    stages = sorted(teachers.attention)
    feature = sum(
        attention_transfer(attention_map(student_features[i], config.exponent), teachers.attention[i]) for i in stages
    ) / max(1, len(stages))
    if regions:
        lovasz = lovasz_hinge(student_logits, target[:, : student_logits.shape[1]], valid)
    else:
        lovasz = lovasz_softmax(torch.softmax(student_logits.float(), 1), target[:, 0], valid)
    terms = {
        "kl": config.kl_weight * kl,
        "feature": config.feature_weight * feature,
        "lovasz": config.lovasz_weight * lovasz,
    }
    return {**terms, "total": sum(terms.values())}


@dataclass(frozen=True)
class MultiTeacherConfig:
    combination: str = "mean"  # mean | confidence | sample_confidence
    temperature: float = 4.0
    exponent: float = 2.0  # of the attention maps
    kl_weight: float = 1.0
    feature_weight: float = 0.9  # attention transfer's weight in the ``at`` baseline
    lovasz_weight: float = 1.0


class MultiTeacherKD(DistillationMethod):
    name = "multi_teacher"
    term_names = ("kl", "feature", "lovasz")
    inputs = ("valid", "targets")

    def __init__(self, config: MultiTeacherConfig = MultiTeacherConfig()):
        if config.combination not in COMBINATIONS:
            raise ValueError(f"unknown combination {config.combination!r}: choose one of {COMBINATIONS}")
        self.config = config

    def student_taps(self, n_stages: int) -> Taps:
        return Taps(encoder=tuple(range(1, n_stages)))

    teacher_taps = student_taps

    def summarize_teacher(self, captured: Captured, regions: bool) -> TeacherSummary:
        logits = captured.logits[captured.final]
        attention = {
            i: F.normalize(attention_map(f, self.config.exponent).flatten(1), dim=1).view_as(f[:, :1]).float()
            for i, f in captured.encoder.items()
        }
        return TeacherSummary(
            soft=soft_probabilities(logits, self.config.temperature, regions),
            confidence=teacher_confidence(soft_probabilities(logits, 1.0, regions), regions),
            attention=attention,
        )

    def combine_teachers(self, summaries: list[TeacherSummary], regions: bool) -> CombinedTeachers:
        weights = teacher_weights([s.confidence for s in summaries], self.config.combination)
        return CombinedTeachers(
            soft=weighted_sum([s.soft for s in summaries], weights),
            attention={i: weighted_sum([s.attention[i] for s in summaries], weights) for i in summaries[0].attention},
            weights=weights,
        )

    def loss(self, student, teacher, adapters, valid, regions, targets=None) -> dict[str, torch.Tensor]:
        final = student.final
        return multi_teacher_loss(
            student.logits[final], student.encoder, teacher, targets[final], valid.get(final), self.config, regions
        )
