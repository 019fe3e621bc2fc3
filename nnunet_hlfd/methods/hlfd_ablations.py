"""HLFD's ablations: the ``--loss_type`` variants of the authors' ``train_kd.py``, on nnU-Net's U-Nets.

Each is ``alpha * pixel + beta * feature`` (alpha 0.1, beta 0.9, T 4, p 4, as in the authors' code) with
terms averaged within a level, like our HLFD; the student's predictions come from its deep-supervision heads,
never from convs created inside the loss (see README, "Differences from the authors' code"). For an n-stage
U-Net: final = decoder stage n-2 (the prediction), bottleneck = encoder stage n-1.

- ``attention_only`` (``attn_kd``, "baseline"): AT(bottleneck, bottleneck) with weight 1, nothing else.
- ``without_feedback`` (``wo_feedback``, "SKD"): KL(final, final) and AT(bottleneck, bottleneck).
- ``layerwise`` (``deep_kd``, "DKD"): KL(stage j, stage j) for every decoder stage whose head nnU-Net trains
  (1..final: the lowest head is untrained) and AT(stage i, stage i) for every encoder stage (the code's KL of a
  student stage with itself is read as the teacher's stage).
- ``individual_feedback`` (``indv_feedback``, "HIFD"): KL(stage j, final) for j = 1..final and
  AT(stage i, bottleneck) for i = 1..n-1 (the code uses a subset of these stages).
- ``concatenated_feedback`` (``cat_feedback_ours``, "IFD"): ``without_feedback`` plus KL(learned 1×1 of the
  concatenated decoder stages 0..final-1, final) and AT(concatenated encoder stages 0..n-2, bottleneck).

HLFD's own term ablations (FLFD only, PLFD only, unified only, individual only) are HLFD configurations.
"""

from dataclasses import dataclass

import torch
from torch import nn

from nnunet_hlfd.adapters import ClassHeads
from nnunet_hlfd.capture import UNetLayout
from nnunet_hlfd.losses import (
    attention_map,
    attention_transfer,
    combined_attention_map,
    resize,
    soft_kl,
    soft_probabilities,
)
from nnunet_hlfd.methods.base import Captured, Taps, trained_decoder_stages
from nnunet_hlfd.methods.stage_pairs import StagePairMethod, StagePairs, spread

VARIANTS = ("attention_only", "without_feedback", "layerwise", "individual_feedback")


@dataclass(frozen=True)
class AblationConfig:
    variant: str = "without_feedback"
    alpha: float = 0.1  # pixel level
    beta: float = 0.9  # feature level
    temperature: float = 4.0
    exponent: float = 4.0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")


def ablation_pairs(variant: str, n_stages: int, alpha: float, beta: float) -> StagePairs:
    final, bottleneck = n_stages - 2, n_stages - 1
    if variant == "attention_only":
        return StagePairs(feature=spread(beta, [(bottleneck, bottleneck)]))
    if variant == "without_feedback":
        return StagePairs(pixel=spread(alpha, [(final, final)]), feature=spread(beta, [(bottleneck, bottleneck)]))
    if variant == "layerwise":
        return StagePairs(
            pixel=spread(alpha, [(j, j) for j in trained_decoder_stages(n_stages)]),
            feature=spread(beta, [(i, i) for i in range(n_stages)]),
        )
    if variant == "individual_feedback":
        return StagePairs(
            pixel=spread(alpha, [(j, final) for j in trained_decoder_stages(n_stages)]),
            feature=spread(beta, [(i, bottleneck) for i in range(1, n_stages)]),
        )
    raise ValueError(variant)


class HLFDAblation(StagePairMethod):
    name = "hlfd_ablation"

    def __init__(self, config: AblationConfig = AblationConfig()):
        self.config = config
        self.temperature, self.exponent = config.temperature, config.exponent

    def pairs_for(self, n_stages: int) -> StagePairs:
        return ablation_pairs(self.config.variant, n_stages, self.config.alpha, self.config.beta)


@dataclass(frozen=True)
class ConcatenatedFeedbackConfig:
    alpha: float = 0.1
    beta: float = 0.9
    temperature: float = 4.0
    exponent: float = 4.0


def concatenated_prediction(per_stage_logits: dict[int, torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
    """A 1×1 conv of the concatenation of resized stage features equals the sum of per-stage 1×1 convs, each
    resized: both are linear and act per voxel. So the full-resolution concatenation is never built."""
    return sum(resize(logits, size) for logits in per_stage_logits.values())


class ConcatenatedFeedback(StagePairMethod):
    """``cat_feedback_ours``: the student's intermediate stages, concatenated, against the teacher's final layer."""

    name = "hlfd_concatenated_feedback"
    term_names = ("pixel", "feature", "pixel_concatenated", "feature_concatenated")

    def __init__(self, config: ConcatenatedFeedbackConfig = ConcatenatedFeedbackConfig()):
        self.config = config
        self.temperature, self.exponent = config.temperature, config.exponent

    def pairs_for(self, n_stages: int) -> StagePairs:
        return ablation_pairs("without_feedback", n_stages, 0.5 * self.config.alpha, 0.5 * self.config.beta)

    def student_taps(self, n_stages: int) -> Taps:
        return Taps(encoder=tuple(range(n_stages)), decoder=tuple(range(n_stages - 2)))

    def build_adapters(self, student: UNetLayout, teacher: UNetLayout, num_classes: int) -> nn.Module:
        # the learned 1×1 conv of the concatenation, split per stage (see concatenated_prediction)
        return ClassHeads(
            {j: student.decoder_channels[j] for j in range(student.n_stages - 2)}, num_classes, student.conv_op
        )

    def loss(
        self, student: Captured, teacher: Captured, adapters, valid, regions: bool, targets=None
    ) -> dict[str, torch.Tensor]:
        terms = super().loss(student, teacher, adapters, valid, regions)
        n = teacher.n_stages
        final, bottleneck = n - 2, n - 1
        c, T, p = self.config, self.config.temperature, self.config.exponent
        target = soft_probabilities(teacher.logits[final], T, regions)
        prediction = concatenated_prediction(adapters(student.decoder), tuple(target.shape[2:]))
        pixel_cat = soft_kl(prediction, target, T, regions, valid.get(final))
        t_map = attention_map(teacher.encoder[bottleneck], p)
        s_map = combined_attention_map([student.encoder[i] for i in range(n - 1)], tuple(t_map.shape[2:]), p)
        feature_cat = attention_transfer(s_map, t_map)
        total = terms["total"] + 0.5 * c.alpha * pixel_cat + 0.5 * c.beta * feature_cat
        return {**terms, "pixel_concatenated": pixel_cat, "feature_concatenated": feature_cat, "total": total}
