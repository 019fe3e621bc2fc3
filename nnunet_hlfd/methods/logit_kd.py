"""Logit KD (Hinton et al., 2015) applied per voxel: T² · mean over voxels of KL(teacher ‖ student), softened by T.

On the final prediction, or (``deep_supervision=True``) on every deep-supervision output with nnU-Net's own
deep-supervision weights. Sigmoid (per-region Bernoulli) form for region datasets; nnU-Net's ignore label is
masked out. Defaults: T = 4 (mdistiller), weight 1 (CIRKD's λ_kd, same reduction).
"""

from dataclasses import dataclass

from nnunet_hlfd.methods.base import deep_supervision_weights
from nnunet_hlfd.methods.stage_pairs import StagePair, StagePairMethod, StagePairs


@dataclass(frozen=True)
class LogitKDConfig:
    weight: float = 1.0
    temperature: float = 4.0
    deep_supervision: bool = False


def logit_kd_pairs(n_stages: int, weight: float, deep_supervision: bool) -> StagePairs:
    final = n_stages - 2
    if not deep_supervision:
        return StagePairs(pixel=(StagePair(final, final, weight),))
    weights = deep_supervision_weights(n_stages - 1)
    return StagePairs(pixel=tuple(StagePair(final - k, final - k, weight * w) for k, w in enumerate(weights) if w))


class LogitKD(StagePairMethod):
    name = "logit_kd"

    def __init__(self, config: LogitKDConfig = LogitKDConfig()):
        self.config = config
        self.temperature = config.temperature

    def pairs_for(self, n_stages: int) -> StagePairs:
        return logit_kd_pairs(n_stages, self.config.weight, self.config.deep_supervision)
