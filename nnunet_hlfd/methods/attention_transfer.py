"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017) between the same encoder stages of student and teacher.

A(f) = channel mean of |f|^p, L2-normalised per sample; loss = mean over stages 1..n-1 (every stage but the
first, as in mdistiller) of ‖A_S − A_T‖² summed over positions and averaged over the batch. p = 2 is the
original; p = 4 is what the medical KD codes (EMKD, HLFD) use. Weight 0.9: the medical codes' weight for this
reduction (the original's β = 1000 is for the mean over positions, see README).
"""

from dataclasses import dataclass

from nnunet_hlfd.methods.stage_pairs import StagePairMethod, StagePairs, spread


@dataclass(frozen=True)
class AttentionTransferConfig:
    weight: float = 0.9
    exponent: float = 2.0


class AttentionTransfer(StagePairMethod):
    name = "at"

    def __init__(self, config: AttentionTransferConfig = AttentionTransferConfig()):
        self.config = config
        self.exponent = config.exponent

    def pairs_for(self, n_stages: int) -> StagePairs:
        return StagePairs(feature=spread(self.config.weight, [(i, i) for i in range(1, n_stages)]))
