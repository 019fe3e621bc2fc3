"""Multi-scale contrastive KD (after Biswas, "Multi-Task Multi-Scale Contrastive Knowledge Distillation", 2024):
feature distillation at every encoder and decoder scale through student-side adapters, plus a supervised
voxel-wise contrastive loss between student and teacher embeddings.

- ``feature``: at every encoder stage 0..n-1 and decoder stage 0..n-2, a learned 1×1 conv maps the student's
  features to the teacher's channels; loss = mean over the scales of the mean squared error (FitNets at every
  scale; the adapters are trainable, checkpointed and DDP-synchronised with the student).
- ``contrastive``: at every decoder stage (where nnU-Net's deep-supervision targets give each voxel a class),
  anchors are drawn class-balanced: at most ``anchors_per_class`` valid voxels of each class present in the
  batch, which bounds memory at (classes × anchors_per_class)² similarities per scale. Each anchor's student
  embedding (adapted features, L2-normalised) is contrasted with the teacher embeddings of all drawn voxels,
  supervised-contrastive style (Khosla et al., 2020): teacher embeddings of the same class are positives,
  the others negatives, at temperature τ:

      L_i = −1/|P(i)| Σ_{p ∈ P(i)} log( exp(s_i·t_p/τ) / Σ_a exp(s_i·t_a/τ) ),   mean over anchors and scales.

  For region datasets a voxel's class is the set of regions it belongs to (Σ_r 2^r·[voxel in region r]).
  A scale with a single class drawn has no negatives and is skipped.

The authors' code contrasts whole flattened maps of different images (instance discrimination), creates its
adapters anew in every iteration and never trains them; here the contrast is label-supervised per voxel and the
adapters are learned (see ../shared/docs/hlfd-reference.md §11.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_hlfd.adapters import ChannelAdapters
from nnunet_hlfd.capture import UNetLayout
from nnunet_hlfd.losses import voxel_classes
from nnunet_hlfd.methods.base import Captured, DistillationMethod, Taps


def supervised_contrastive(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over the N anchors of the supervised contrastive loss of (N, D) student embeddings against the (N, D)
    teacher embeddings of the same voxels, positives = same ``labels`` (N,)."""
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    logits = s @ t.T / temperature
    log_probability = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]).float()
    return (-(log_probability * positive).sum(1) / positive.sum(1)).mean()


def sample_anchors(
    classes: torch.Tensor, valid: torch.Tensor | None, per_class: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flat indices into (B, *spatial) of at most ``per_class`` valid voxels of every class present."""
    flat = classes.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.reshape(-1).bool()
    chosen = []
    for c in torch.unique(flat[keep]):
        members = torch.nonzero(keep & (flat == c)).squeeze(1)
        order = torch.randperm(members.numel(), generator=generator, device="cpu")[:per_class]
        chosen.append(members[order.to(members.device)])
    return torch.cat(chosen) if chosen else flat.new_zeros(0)


def voxel_embeddings(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, C) features of the voxels at flat (B, *spatial) ``index``."""
    return features.movedim(1, -1).reshape(-1, features.shape[1])[index]


@dataclass(frozen=True)
class MultiScaleContrastiveConfig:
    feature_weight: float = 1.0
    contrastive_weight: float = 0.1
    temperature: float = 0.1  # SupCon's
    anchors_per_class: int = 256  # per scale: bounds the similarity matrix


class ScaleAdapters(nn.Module):
    """Student → teacher channels at every encoder and decoder stage."""

    def __init__(self, student: UNetLayout, teacher: UNetLayout):
        super().__init__()
        n = student.n_stages
        self.encoder = ChannelAdapters(
            dict(enumerate(student.encoder_channels)), dict(enumerate(teacher.encoder_channels)), student.conv_op
        )
        self.decoder = ChannelAdapters(
            dict(enumerate(student.decoder_channels)), dict(enumerate(teacher.decoder_channels)), student.conv_op
        )
        assert len(self.encoder.heads) == n and len(self.decoder.heads) == n - 1

    def forward(
        self, encoder: dict[int, torch.Tensor], decoder: dict[int, torch.Tensor]
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        return self.encoder(encoder), self.decoder(decoder)


def multi_scale_contrastive_loss(
    adapted: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]],
    teacher: Captured,
    classes: dict[int, torch.Tensor],
    valid: dict[int, torch.Tensor | None],
    config: MultiScaleContrastiveConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted ``feature`` and ``contrastive`` terms from the adapted student features (encoder, decoder), the
    teacher's features and the voxel classes of every decoder stage."""
    encoder, decoder = adapted
    pairs = [(s, teacher.encoder[i]) for i, s in encoder.items()] + [
        (s, teacher.decoder[j]) for j, s in decoder.items()
    ]
    feature = sum(F.mse_loss(s.float(), t.float()) for s, t in pairs) / len(pairs)
    contrastive = []
    for j, student_features in decoder.items():
        index = sample_anchors(classes[j], valid.get(j), config.anchors_per_class, generator)
        labels = classes[j].reshape(-1)[index]
        if torch.unique(labels).numel() < 2:
            continue  # no negatives at this scale
        contrastive.append(
            supervised_contrastive(
                voxel_embeddings(student_features, index),
                voxel_embeddings(teacher.decoder[j], index),
                labels,
                config.temperature,
            )
        )
    contrastive = torch.stack(contrastive).mean() if contrastive else feature.new_zeros(())
    terms = {"feature": config.feature_weight * feature, "contrastive": config.contrastive_weight * contrastive}
    return {**terms, "total": terms["feature"] + terms["contrastive"]}


class MultiScaleContrastiveKD(DistillationMethod):
    name = "multi_scale_contrastive"
    term_names = ("feature", "contrastive")
    inputs = ("valid", "targets")

    def __init__(self, config: MultiScaleContrastiveConfig = MultiScaleContrastiveConfig()):
        self.config = config

    def student_taps(self, n_stages: int) -> Taps:
        return Taps(encoder=tuple(range(n_stages)), decoder=tuple(range(n_stages - 1)))

    teacher_taps = student_taps

    def build_adapters(self, student: UNetLayout, teacher: UNetLayout, num_classes: int) -> nn.Module:
        return ScaleAdapters(student, teacher)

    def loss(self, student, teacher, adapters, valid, regions, targets=None) -> dict[str, torch.Tensor]:
        num_outputs = next(iter(student.logits.values())).shape[1]
        classes = {j: voxel_classes(targets[j], regions, num_outputs) for j in student.decoder}
        return multi_scale_contrastive_loss(
            adapters(student.encoder, student.decoder), teacher, classes, valid, self.config
        )
