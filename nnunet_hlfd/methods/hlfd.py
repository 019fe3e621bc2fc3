"""HLFD: Hierarchical Layer-selective Feedback Distillation (Gorade et al., ISBI 2024), on nnU-Net's U-Nets.

Four terms, for a U-Net with n >= 3 stages (encoder stages 0..n-1, decoder stages 0..n-2, decoder stage 0
the lowest resolution, decoder stage n-2 the final prediction):

* FLFD unified: the attention map of the concatenation of the teacher's middle encoder stages 1..n-2,
  on the grid of the student's earliest stage 0, against that stage's map.
* FLFD individual: the teacher's bottleneck (encoder stage n-1) against each student middle encoder stage
  1..n-2, compared on the bottleneck grid; averaged.
* PLFD unified: the mean soft prediction of the teacher's middle decoder stages 1..n-3 (through the
  teacher's own deep-supervision heads), on the grid of the student's deepest trained decoder stage 1,
  against that stage's prediction.
* PLFD individual: the teacher's final prediction against each student decoder stage 1..n-2 (the final
  one included), each on the student stage's grid; averaged.

Decoder stage 0 (the lowest resolution) takes no part: nnU-Net trains its deep-supervision head with weight
0, so in a trained teacher it is a random projection, and in the student only distillation would train it
(see :func:`~nnunet_hlfd.methods.base.trained_decoder_stages`). With n = 3 the final head is the only trained
one and the unified term reads it.

``L = L_nnU-Net + ramp(epoch) * (alpha * L_PLFD + beta * L_FLFD)`` with
``L_X = unified_weight * X_unified + individual_weight * X_individual``.

Options beyond the authors' recipe (each a field of :class:`HLFDConfig`, hence a plans-block option):

* ``plfd_divergence``: the pixel-level divergence. ``kl``, the authors' per-voxel KL (mean over voxels);
  ``class_balanced_kl``, the same KL averaged within each ground-truth class, then over the classes present;
  ``channel_wise``, CWD's form: each class channel a distribution over the positions of the patch.
* ``flfd_mapping``: which teacher stages feed which student stages at the feature level. ``cross_stage``,
  the authors' feedback (above); ``same_stage``: teacher stage i to student stage i (unified: stage 0,
  individual: each stage 1..n-1); ``neighbouring``: teacher stages i and i+1 combined into student stage i
  (unified: stages 0, 1 into 0; individual: i, i+1 into i for i = 1..n-2, and the bottleneck into the
  bottleneck).
* ``rampup_fraction``: the distillation weights grow linearly from 0 to 1 over this share of the epochs.

Differences from the authors' code, on purpose (see README, "Stage mapping"): the student's predictions
come from its deep-supervision heads (or, with ``plfd_heads='adapters'``, from persistent learned 1×1
convs on the student side), never from convs created inside the loss; the unified PLFD term is a class-level
KL through the teacher's trained heads instead of a channel softmax over randomly projected features; KL is
the per-voxel mean for any number of classes; individual terms are averaged rather than summed, so the
unified/individual split means the same for every depth.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nnunet_hlfd.adapters import ClassHeads
from nnunet_hlfd.capture import StageLayoutError, UNetLayout
from nnunet_hlfd.losses import (
    attention_map,
    attention_transfer,
    channel_wise_kl,
    class_balanced_soft_kl,
    combined_attention_map,
    resize,
    soft_kl,
    soft_probabilities,
    spatial_probabilities,
    voxel_classes,
)
from nnunet_hlfd.methods.base import Captured, DistillationMethod, Taps, trained_decoder_stages

PLFD_HEADS = ("deep_supervision", "adapters")
PLFD_DIVERGENCES = ("kl", "class_balanced_kl", "channel_wise")
FLFD_MAPPINGS = ("cross_stage", "same_stage", "neighbouring")


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
    plfd_divergence: str = "kl"  # per-voxel KL (authors), class-balanced KL, or channel-wise (CWD's form)
    flfd_mapping: str = "cross_stage"  # authors' cross-stage feedback, same-stage or neighbouring-stage transfer
    rampup_fraction: float = 0.0  # share of the epochs over which the distillation weights grow from 0 to 1

    def __post_init__(self):
        for name, allowed in (
            ("plfd_heads", PLFD_HEADS),
            ("plfd_divergence", PLFD_DIVERGENCES),
            ("flfd_mapping", FLFD_MAPPINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.temperature <= 0 or self.exponent <= 0:
            raise ValueError("temperature and exponent must be positive")
        if not 0 <= self.rampup_fraction < 1:
            raise ValueError(f"rampup_fraction must be in [0, 1), got {self.rampup_fraction!r}")


@dataclass(frozen=True)
class HLFDStageMapping:
    """Which stage feeds which, for an n-stage U-Net (teacher and student share n)."""

    n_stages: int
    flfd_unified_teacher: tuple[int, ...]  # encoder stages, combined
    flfd_unified_student: int  # encoder stage
    flfd_individual: tuple[tuple[int, tuple[int, ...]], ...]  # (student encoder stage, teacher encoder stages)
    plfd_unified_teacher: tuple[int, ...]  # decoder stages, their predictions averaged
    plfd_unified_student: int  # decoder stage
    plfd_individual_teacher: int  # decoder stage (final prediction)
    plfd_individual_student: tuple[int, ...]  # decoder stages

    def table(self) -> list[tuple[str, str, str]]:
        """(term, teacher source, student target) rows, in nnU-Net module names."""

        def enc(stages):
            return ", ".join(f"encoder.stages[{i}]" for i in stages)

        def dec(stages):
            return ", ".join(f"decoder.seg_layers[{j}](decoder.stages[{j}])" for j in stages)

        individual = "; ".join(f"{enc(teacher)} -> {enc([student])}" for student, teacher in self.flfd_individual)
        return [
            ("FLFD unified", f"combination of {enc(self.flfd_unified_teacher)}", enc([self.flfd_unified_student])),
            ("FLFD individual", individual, "each pair, averaged"),
            ("PLFD unified", f"mean of {dec(self.plfd_unified_teacher)}", dec([self.plfd_unified_student])),
            ("PLFD individual", dec([self.plfd_individual_teacher]), f"each of {dec(self.plfd_individual_student)}"),
        ]


def hlfd_stage_mapping(n_stages: int, flfd_mapping: str = "cross_stage") -> HLFDStageMapping:
    if n_stages < 3:
        raise StageLayoutError(f"HLFD needs a U-Net with at least 3 stages (a middle stage), got {n_stages}")
    if flfd_mapping not in FLFD_MAPPINGS:
        raise ValueError(f"flfd_mapping must be one of {FLFD_MAPPINGS}, got {flfd_mapping!r}")
    middle, bottleneck, final = tuple(range(1, n_stages - 1)), n_stages - 1, n_stages - 2
    trained = trained_decoder_stages(n_stages)  # 1..final
    if flfd_mapping == "cross_stage":
        unified_teacher = middle
        individual = tuple((i, (bottleneck,)) for i in middle)
    elif flfd_mapping == "same_stage":
        unified_teacher = (0,)
        individual = tuple((i, (i,)) for i in range(1, n_stages))
    else:
        unified_teacher = (0, 1)
        individual = (*((i, (i, i + 1)) for i in middle), (bottleneck, (bottleneck,)))
    return HLFDStageMapping(
        n_stages=n_stages,
        flfd_unified_teacher=unified_teacher,
        flfd_unified_student=0,
        flfd_individual=individual,
        plfd_unified_teacher=tuple(j for j in trained if j != final) or (final,),
        plfd_unified_student=trained[0],
        plfd_individual_teacher=final,
        plfd_individual_student=trained,
    )


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape[2:])


def feature_transfer(student: torch.Tensor, teachers: Sequence[torch.Tensor], exponent: float) -> torch.Tensor:
    """Attention transfer from one teacher stage (the student's map resized onto its grid, the authors' IMD) or
    from a combination of stages (their combined map on the student's grid, the authors' recursive IMD)."""
    if len(teachers) == 1:
        t = attention_map(teachers[0], exponent)
        return attention_transfer(resize(attention_map(student, exponent), _spatial(t)), t)
    return attention_transfer(
        attention_map(student, exponent), combined_attention_map(teachers, _spatial(student), exponent)
    )


def pixel_divergence(
    student_logits: torch.Tensor,
    teacher_logits: Sequence[torch.Tensor],
    temperature: float,
    regions: bool,
    divergence: str = "kl",
    valid: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The student's prediction against the mean of one or more teacher predictions, on the student's grid.

    ``kl`` and ``class_balanced_kl``: the teachers' softened probabilities, resized and averaged, per voxel
    (``classes``, the ground truth on the student's grid, is needed by the balanced form). ``channel_wise``: the
    teachers' logits resized to the student's grid, turned into per-channel distributions over the valid
    positions and averaged.
    """
    grid = _spatial(student_logits)
    if divergence == "channel_wise":
        target = torch.stack(
            [spatial_probabilities(resize(t.float(), grid), temperature, valid) for t in teacher_logits]
        ).mean(dim=0)
        return channel_wise_kl(student_logits, target, temperature, valid)
    target = torch.stack([resize(soft_probabilities(t, temperature, regions), grid) for t in teacher_logits])
    target = target.mean(dim=0)
    if divergence == "class_balanced_kl":
        if classes is None:
            raise ValueError("the class-balanced KL needs the reference classes of the student's grid")
        return class_balanced_soft_kl(student_logits, target, temperature, regions, classes, valid)
    return soft_kl(student_logits, target, temperature, regions, valid)


def hlfd_loss(
    student_encoder: Mapping[int, torch.Tensor],
    teacher_encoder: Mapping[int, torch.Tensor],
    student_logits: Mapping[int, torch.Tensor],
    teacher_logits: Mapping[int, torch.Tensor],
    mapping: HLFDStageMapping,
    config: HLFDConfig,
    regions: bool,
    valid: Mapping[int, torch.Tensor | None] | None = None,
    classes: Mapping[int, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The four HLFD terms, their level sums and ``total = alpha * plfd + beta * flfd`` (before any ramp-up).

    Encoder features are keyed by encoder stage, logits by decoder stage. ``valid`` (by decoder stage) masks
    nnU-Net's ignore label out of the pixel-level terms; attention maps are not masked, because one coarse
    attention position mixes labelled and unlabelled voxels. ``classes`` (by decoder stage): every voxel's
    ground-truth class, for ``plfd_divergence='class_balanced_kl'``.
    """
    p, T, divergence = config.exponent, config.temperature, config.plfd_divergence
    valid, classes = valid or {}, classes or {}

    # FLFD unified: a combination of teacher encoder stages -> the student's earliest stage
    s0 = student_encoder[mapping.flfd_unified_student]
    teacher_mix = combined_attention_map([teacher_encoder[i] for i in mapping.flfd_unified_teacher], _spatial(s0), p)
    flfd_unified = attention_transfer(attention_map(s0, p), teacher_mix)

    # FLFD individual: teacher stage(s) -> each later student stage (cross-stage: the bottleneck, on its grid)
    flfd_individual = torch.stack(
        [
            feature_transfer(student_encoder[s], [teacher_encoder[t] for t in teachers], p)
            for s, teachers in mapping.flfd_individual
        ]
    ).mean()

    def pixel(student_stage: int, teacher_stages: Sequence[int]) -> torch.Tensor:
        return pixel_divergence(
            student_logits[student_stage],
            [teacher_logits[j] for j in teacher_stages],
            T,
            regions,
            divergence,
            valid.get(student_stage),
            classes.get(student_stage),
        )

    # PLFD unified: mean prediction of the teacher's middle decoder stages -> the student's deepest trained stage
    plfd_unified = pixel(mapping.plfd_unified_student, mapping.plfd_unified_teacher)
    # PLFD individual: the teacher's final prediction -> each student decoder stage, on that stage's grid
    plfd_individual = torch.stack(
        [pixel(j, [mapping.plfd_individual_teacher]) for j in mapping.plfd_individual_student]
    ).mean()

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
        if config.plfd_divergence == "class_balanced_kl":  # the balanced KL needs the classes
            self.inputs = ("valid", "targets")

    def mapping(self, n_stages: int) -> HLFDStageMapping:
        return hlfd_stage_mapping(n_stages, self.config.flfd_mapping)

    def student_taps(self, n_stages: int) -> Taps:
        m = self.mapping(n_stages)
        decoder = self._pixel_stages(m) if self.config.plfd_heads == "adapters" else ()
        encoder = {m.flfd_unified_student, *(s for s, _ in m.flfd_individual)}
        return Taps(encoder=tuple(sorted(encoder)), decoder=decoder)

    def teacher_taps(self, n_stages: int) -> Taps:
        m = self.mapping(n_stages)
        encoder = {*m.flfd_unified_teacher, *(t for _, teachers in m.flfd_individual for t in teachers)}
        return Taps(encoder=tuple(sorted(encoder)))

    @staticmethod
    def _pixel_stages(m: HLFDStageMapping) -> tuple[int, ...]:
        return tuple(sorted({m.plfd_unified_student, *m.plfd_individual_student}))

    def build_adapters(self, student: UNetLayout, teacher: UNetLayout, num_classes: int) -> nn.Module | None:
        if self.config.plfd_heads != "adapters":
            return None
        stages = self._pixel_stages(self.mapping(student.n_stages))
        return ClassHeads({j: student.decoder_channels[j] for j in stages}, num_classes, student.conv_op)

    def weight_at(self, progress: float) -> float:
        ramp = self.config.rampup_fraction
        return 1.0 if ramp == 0 else min(1.0, max(0.0, progress) / ramp)

    def loss(
        self, student: Captured, teacher: Captured, adapters, valid, regions: bool, targets=None
    ) -> dict[str, torch.Tensor]:
        m = self.mapping(teacher.n_stages)
        stages = self._pixel_stages(m)
        if adapters is None and not set(stages) <= set(student.logits):
            raise RuntimeError(
                "HLFD reads the student's intermediate predictions from its deep-supervision outputs: keep "
                "enable_deep_supervision = True, or use plfd_heads='adapters'"
            )
        student_logits = adapters(student.decoder) if adapters is not None else student.logits
        classes = None
        if "targets" in self.inputs:
            num_outputs = student_logits[m.plfd_individual_teacher].shape[1]
            classes = {j: voxel_classes(targets[j], regions, num_outputs) for j in stages}
        return hlfd_loss(
            student.encoder, teacher.encoder, student_logits, teacher.logits, m, self.config, regions, valid, classes
        )
