"""Challenge downloads -> nnU-Net raw datasets. ``core`` does the checking and the all-or-nothing writing;
each challenge module only finds its cases and declares its labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nnunet_hlfd.conversion.core import ConversionError, ConversionSummary, convert_dataset
from nnunet_hlfd.conversion.kits import KITS19, KITS21, KITS23, convert_kits
from nnunet_hlfd.conversion.lits import convert_lits
from nnunet_hlfd.conversion.msd import convert_msd
from nnunet_hlfd.conversion.prostate import convert_multisite_prostate


@dataclass(frozen=True)
class Converter:
    function: Callable[..., ConversionSummary]
    help: str
    has_task: bool = False
    has_binarize: bool = False


def _kits(challenge):
    return lambda input_folder, **kw: convert_kits(challenge, input_folder, **kw)


CONVERTERS: dict[str, Converter] = {
    "kits19": Converter(_kits(KITS19), "KiTS19: data/case_XXXXX/{imaging,segmentation}.nii.gz (id 40)", True),
    "kits21": Converter(_kits(KITS21), "KiTS21: data/case_XXXXX/{imaging,aggregated_MAJ_seg}.nii.gz (id 135)", True),
    "kits23": Converter(_kits(KITS23), "KiTS23: dataset/case_XXXXX/{imaging,segmentation}.nii.gz (id 220)", True),
    "lits": Converter(convert_lits, "LiTS: volume-N.nii + segmentation-N.nii, test-volume-N.nii (id 29)", True),
    "msd": Converter(convert_msd, "MSD task folder TaskXX_Name, e.g. Task03_Liver, Task05_Prostate (id XX)"),
    "prostate-multisite": Converter(
        convert_multisite_prostate,
        "six-site prostate T2: SITE/CaseNN.nii.gz + CaseNN_segmentation.nii.gz (id 170)",
        has_binarize=True,
    ),  # fmt: skip
}

__all__ = ["CONVERTERS", "ConversionError", "ConversionSummary", "Converter", "convert_dataset"]
