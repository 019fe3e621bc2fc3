"""Per-case segmentation metrics for one binary mask pair, in physical units.

Overlap (A = prediction, B = reference, |.| = voxel count; every voxel has the same volume):

- Dice = 2|A∩B| / (|A| + |B|)
- VOE  = 1 − |A∩B| / |A∪B|            (volumetric overlap error = 1 − IoU)
- RVD  = (|A| − |B|) / |B|             (relative volume difference, signed: > 0 is over-segmentation)

Surface (from MONAI's exact Euclidean distances between the two masks' boundary voxels, scaled by the
voxel spacing; A→B and B→A):

- HD95 = max(95th percentile of d(A→B), 95th percentile of d(B→A))    [mm]
- ASSD = mean of all d(A→B) and d(B→A) together                        [mm]
- NSD  = share of boundary voxels of both masks within ``tolerance_mm`` of the other boundary

Empty masks have explicit values, so no NaN ever reaches a mean:

==================  =====  ===  =========  ===================  ===
case                Dice   VOE  RVD        HD95, ASSD           NSD
==================  =====  ===  =========  ===================  ===
both empty          1      0    0          0                    1
reference empty     0      1    undefined  image diagonal (mm)  0
prediction empty    0      1    −1         image diagonal (mm)  0
==================  =====  ===  =========  ===================  ===

A distance to a structure that is not there does not exist; the image diagonal is the largest distance the
image can hold, so a missed or hallucinated structure scores as the worst possible one instead of vanishing
from the mean. RVD relative to an empty reference is undefined: it is left out of RVD's mean (the summary
says over how many cases each mean is taken).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

METRICS = ("Dice", "VOE", "RVD", "HD95", "ASSD", "NSD")
HIGHER_IS_BETTER = {"Dice": True, "VOE": False, "RVD": None, "HD95": False, "ASSD": False, "NSD": True}
UNITS = {"HD95": "mm", "ASSD": "mm"}
DEFAULT_TOLERANCE_MM = 1.0


def overlap_metrics(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Dice, VOE and RVD of two boolean masks (RVD is NaN, i.e. undefined, for an empty reference)."""
    a, b = int(prediction.sum()), int(reference.sum())
    intersection = int(np.logical_and(prediction, reference).sum())
    union = a + b - intersection
    if union == 0:
        return {"Dice": 1.0, "VOE": 0.0, "RVD": 0.0}
    return {
        "Dice": 2 * intersection / (a + b),
        "VOE": 1 - intersection / union,
        "RVD": (a - b) / b if b else float("nan"),
    }


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.linalg.norm(np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)))


def boundary_distances(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each boundary voxel of ``prediction`` to ``reference``'s boundary, and back.

    Both masks must be non-empty. MONAI extracts the boundaries (mask minus its erosion) and measures exact
    Euclidean distances with the spacing; 2D masks (one slice of a 3D image) work the same way.
    """
    from monai.metrics.utils import get_edge_surface_distance

    squeeze = [i for i, s in enumerate(prediction.shape) if s == 1]  # a 2D case stored as 1 x H x W
    keep = [i for i in range(prediction.ndim) if i not in squeeze]
    prediction, reference = (np.squeeze(m, axis=tuple(squeeze)) for m in (prediction, reference))
    spacing = [float(spacing[i]) for i in keep]
    with warnings.catch_warnings():  # MONAI 1.5-1.6 warn about an argument their own code passes
        warnings.simplefilter("ignore", FutureWarning)
        _, (to_reference, to_prediction), _ = get_edge_surface_distance(
            torch.from_numpy(np.ascontiguousarray(prediction)),
            torch.from_numpy(np.ascontiguousarray(reference)),
            spacing=spacing,
            symmetric=True,
            warn_empty=False,
        )
    return to_reference.double().numpy(), to_prediction.double().numpy()


def surface_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> dict[str, float]:
    """HD95, ASSD (mm) and NSD at ``tolerance_mm`` of two boolean masks on a grid of ``spacing`` (mm)."""
    has_prediction, has_reference = bool(prediction.any()), bool(reference.any())
    if not has_prediction and not has_reference:
        return {"HD95": 0.0, "ASSD": 0.0, "NSD": 1.0}
    if not (has_prediction and has_reference):
        worst = image_diagonal_mm(reference.shape, spacing)
        return {"HD95": worst, "ASSD": worst, "NSD": 0.0}
    to_reference, to_prediction = boundary_distances(prediction, reference, spacing)
    both = np.concatenate([to_reference, to_prediction])
    return {
        "HD95": float(max(np.percentile(to_reference, 95), np.percentile(to_prediction, 95))),
        "ASSD": float(both.mean()),
        "NSD": float((both <= tolerance_mm).mean()),
    }


def mask_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    ignore: np.ndarray | None = None,
) -> dict[str, float | int | bool]:
    """All of :data:`METRICS` plus voxel counts and empty flags; voxels in ``ignore`` count for neither mask."""
    if ignore is not None:
        prediction, reference = prediction & ~ignore, reference & ~ignore
    return {
        **overlap_metrics(prediction, reference),
        **surface_metrics(prediction, reference, spacing, tolerance_mm),
        "prediction_voxels": int(prediction.sum()),
        "reference_voxels": int(reference.sum()),
    }
