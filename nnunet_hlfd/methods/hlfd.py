"""HLFD: Hierarchical Layer-selective Feedback Distillation (Gorade et al., ISBI 2024), on nnU-Net's U-Nets.

Four terms, for a U-Net with n >= 3 stages (encoder stages 0..n-1, decoder stages 0..n-2, decoder stage 0
the lowest resolution, decoder stage n-2 the final prediction):

* FLFD unified: the attention map of the concatenation of the teacher's middle encoder stages 1..n-2,
  on the grid of the student's earliest stage 0, against that stage's map.
* FLFD individual: the teacher's bottleneck (encoder stage n-1) against each student middle encoder stage
  1..n-2, compared on the bottleneck grid; averaged.
* PLFD unified: the mean soft prediction of the teacher's decoder stages 0..n-3 (every stage but the
  final one, through the teacher's own deep-supervision heads), on the grid of the student's deepest
  decoder stage 0, against that stage's prediction.
* PLFD individual: the teacher's final prediction against each student decoder stage 1..n-2 (the final
  one included), each on the student stage's grid; averaged.

``L = L_nnU-Net + alpha * L_PLFD + beta * L_FLFD`` with
``L_X = unified_weight * X_unified + individual_weight * X_individual``.

Differences from the authors' code, on purpose (see README, "Stage mapping"): the student's predictions
come from its deep-supervision heads (or, with ``plfd_heads='adapters'``, from persistent learned 1×1
convs on the student side), never from convs created inside the loss; the unified PLFD term is a class-level
KL through the teacher's trained heads instead of a channel softmax over randomly projected features; KL is
the per-voxel mean for any number of classes; individual terms are averaged rather than summed, so the
unified/individual split means the same for every depth.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from nnunet_hlfd.adapters import ClassHeads
from nnunet_hlfd.capture import StageLayoutError, UNetLayout
from nnunet_hlfd.losses import (
    attention_map,
    attention_transfer,
    combined_attention_map,
    resize,
    soft_kl,
    soft_probabilities,
)
from nnunet_hlfd.methods.base import Captured, DistillationMethod, Taps
from nnunet_hlfd.methods.stage_pairs import feature_pair_loss, pixel_pair_loss, spread

PLFD_HEADS = ("deep_supervision", "adapters")


@dataclass(frozen=True)
class HLFDConfig:
    """HLFD hyper-parameters; defaults from the authors' ``train_kd.py`` (alpha, beta1, T, exponent 4)."""

    alpha: float = 0.1  # weight of PLFD (pixel level)
    beta: float = 0.9  # weight of FLFD (feature level)
    unified_weight: float = 0.5
    individual_weight: float = 0.5
    temperature: float = 4.0
    exponent: float = 4.0  # p of the attention maps
    plfd_heads: str = "deep_supervision"  # where student class logits come from: DS heads or learned adapters

    def __post_init__(self):
        if self.plfd_heads not in PLFD_HEADS:
            raise ValueError(f"plfd_heads must be one of {PLFD_HEADS}, got {self.plfd_heads!r}")
        if self.temperature <= 0 or self.exponent <= 0:
            raise ValueError("temperature and exponent must be positive")


@dataclass(frozen=True)
class HLFDStageMapping:
    """Which stage feeds which, for an n-stage U-Net (teacher and student share n)."""

    n_stages: int
    flfd_unified_teacher: tuple[int, ...]  # encoder stages
    flfd_unified_student: int  # encoder stage
    flfd_individual_teacher: int  # encoder stage (bottleneck)
    flfd_individual_student: tuple[int, ...]  # encoder stages
    plfd_unified_teacher: tuple[int, ...]  # decoder stages
    plfd_unified_student: int  # decoder stage
    plfd_individual_teacher: int  # decoder stage (final prediction)
    plfd_individual_student: tuple[int, ...]  # decoder stages

    def table(self) -> list[tuple[str, str, str]]:
        """(term, teacher source, student target) rows, in nnU-Net module names."""

        def enc(stages):
            return ", ".join(f"encoder.stages[{i}]" for i in stages)

        def dec(stages):
            return ", ".join(f"decoder.seg_layers[{j}](decoder.stages[{j}])" for j in stages)

        return [
            ("FLFD unified", f"combination of {enc(self.flfd_unified_teacher)}", enc([self.flfd_unified_student])),
            ("FLFD individual", enc([self.flfd_individual_teacher]), f"each of {enc(self.flfd_individual_student)}"),
            ("PLFD unified", f"mean of {dec(self.plfd_unified_teacher)}", dec([self.plfd_unified_student])),
            ("PLFD individual", dec([self.plfd_individual_teacher]), f"each of {dec(self.plfd_individual_student)}"),
        ]


def hlfd_stage_mapping(n_stages: int) -> HLFDStageMapping:
    if n_stages < 3:
        raise StageLayoutError(f"HLFD needs a U-Net with at least 3 stages (a middle stage), got {n_stages}")
    middle = tuple(range(1, n_stages - 1))
    final = n_stages - 2
    return HLFDStageMapping(
        n_stages=n_stages,
        flfd_unified_teacher=middle,
        flfd_unified_student=0,
        flfd_individual_teacher=n_stages - 1,
        flfd_individual_student=middle,
        plfd_unified_teacher=tuple(range(0, final)),
        plfd_unified_student=0,
        plfd_individual_teacher=final,
        plfd_individual_student=tuple(range(1, final + 1)),
    )


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape[2:])


def hlfd_loss(
    student_encoder: Mapping[int, torch.Tensor],
    teacher_encoder: Mapping[int, torch.Tensor],
    student_logits: Mapping[int, torch.Tensor],
    teacher_logits: Mapping[int, torch.Tensor],
    mapping: HLFDStageMapping,
    config: HLFDConfig,
    regions: bool,
    valid: Mapping[int, torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """The four HLFD terms, their level sums and ``total = alpha * plfd + beta * flfd``.

    Encoder features are keyed by encoder stage, logits by decoder stage. ``valid`` (by decoder stage) masks
    nnU-Net's ignore label out of the pixel-level terms; attention maps are not masked, because one coarse
    attention position mixes labelled and unlabelled voxels.
    """
    p, T = config.exponent, config.temperature
    valid = valid or {}

    # FLFD unified: combination of the teacher's middle encoder stages -> the student's earliest stage
    s0 = student_encoder[mapping.flfd_unified_student]
    teacher_mix = combined_attention_map([teacher_encoder[i] for i in mapping.flfd_unified_teacher], _spatial(s0), p)
    flfd_unified = attention_transfer(attention_map(s0, p), teacher_mix)

    # FLFD individual: the teacher's bottleneck -> each student middle stage, on the bottleneck grid
    to_bottleneck = [(i, mapping.flfd_individual_teacher) for i in mapping.flfd_individual_student]
    flfd_individual = feature_pair_loss(student_encoder, teacher_encoder, spread(1.0, to_bottleneck), p)

    # PLFD unified: mean soft prediction of the teacher's non-final decoder stages -> student's deepest stage
    deepest = student_logits[mapping.plfd_unified_student]
    teacher_mean = torch.stack(
        [
            resize(soft_probabilities(teacher_logits[j], T, regions), _spatial(deepest))
            for j in mapping.plfd_unified_teacher
        ]
    ).mean(dim=0)
    plfd_unified = soft_kl(deepest, teacher_mean, T, regions, valid.get(mapping.plfd_unified_student))

    # PLFD individual: the teacher's final prediction -> each student decoder stage, on that stage's grid
    from_final = [(j, mapping.plfd_individual_teacher) for j in mapping.plfd_individual_student]
    plfd_individual = pixel_pair_loss(student_logits, teacher_logits, spread(1.0, from_final), T, regions, valid)

    flfd = config.unified_weight * flfd_unified + config.individual_weight * flfd_individual
    plfd = config.unified_weight * plfd_unified + config.individual_weight * plfd_individual
    return {
        "flfd_unified": flfd_unified,
        "flfd_individual": flfd_individual,
        "plfd_unified": plfd_unified,
        "plfd_individual": plfd_individual,
        "flfd": flfd,
        "plfd": plfd,
        "total": config.alpha * plfd + config.beta * flfd,
    }


class HLFD(DistillationMethod):
    name = "hlfd"
    term_names = ("flfd_unified", "flfd_individual", "plfd_unified", "plfd_individual")

    def __init__(self, config: HLFDConfig = HLFDConfig()):
        self.config = config

    def student_taps(self, n_stages: int) -> Taps:
        m = hlfd_stage_mapping(n_stages)
        decoder = self._adapter_stages(m) if self.config.plfd_heads == "adapters" else ()
        return Taps(encoder=(m.flfd_unified_student, *m.flfd_individual_student), decoder=decoder)

    def teacher_taps(self, n_stages: int) -> Taps:
        m = hlfd_stage_mapping(n_stages)
        return Taps(encoder=(*m.flfd_unified_teacher, m.flfd_individual_teacher))

    @staticmethod
    def _adapter_stages(m: HLFDStageMapping) -> tuple[int, ...]:
        return tuple(sorted({m.plfd_unified_student, *m.plfd_individual_student}))

    def build_adapters(self, student: UNetLayout, teacher: UNetLayout, num_classes: int) -> nn.Module | None:
        if self.config.plfd_heads != "adapters":
            return None
        stages = self._adapter_stages(hlfd_stage_mapping(student.n_stages))
        return ClassHeads({j: student.decoder_channels[j] for j in stages}, num_classes, student.conv_op)

    def loss(self, student: Captured, teacher: Captured, adapters, valid, regions: bool) -> dict[str, torch.Tensor]:
        n = max(teacher.logits) + 2
        if adapters is None and len(student.logits) != n - 1:
            raise RuntimeError(
                "HLFD reads the student's intermediate predictions from its deep-supervision outputs: keep "
                "enable_deep_supervision = True, or use plfd_heads='adapters'"
            )
        student_logits = adapters(student.decoder) if adapters is not None else student.logits
        return hlfd_loss(
            student.encoder,
            teacher.encoder,
            student_logits,
            teacher.logits,
            hlfd_stage_mapping(n),
            self.config,
            regions,
            valid,
        )
