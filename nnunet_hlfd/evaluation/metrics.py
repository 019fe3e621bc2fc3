"""Per-case segmentation metrics for one binary mask pair, in physical units.

Overlap (A = prediction, B = reference, |.| = voxel count; every voxel has the same volume):

- Dice = 2|A∩B| / (|A| + |B|)
- VOE  = 1 − |A∩B| / |A∪B|            (volumetric overlap error = 1 − IoU)
- RVD  = (|A| − |B|) / |B|             (relative volume difference, signed: > 0 is over-segmentation)

Surface, by the normalised surface Dice's definition (Nikolov et al. 2018, DeepMind's ``surface-distance``
package, the KiTS21/23 and Medical Segmentation Decathlon evaluations): each mask's surface is made of surface
elements between voxels (marching-cubes faces, line segments in 2D), each weighted by its area (its length in
2D); MONAI's ``get_mask_edges`` with the spacing builds them from DeepMind's lookup tables, and each element's
distance to the other surface is exact and Euclidean in mm (A→B and B→A):

- HD95 = max(area-weighted 95th percentile of d(A→B), of d(B→A))       [mm]
- ASSD = area-weighted mean of all d(A→B) and d(B→A) together          [mm]
- NSD  = area of both surfaces within the tolerance of the other surface / area of both surfaces

Every surface metric of a report uses this one definition (:data:`SURFACE_DEFINITION`, recorded in each
summary). The same numbers: ``surface_distance.compute_surface_dice_at_tolerance`` (NSD),
``compute_robust_hausdorff(…, 95)`` (HD95), and ``compute_average_surface_distance``'s two directed means
weighted by each surface's total area (ASSD); MONAI's ``compute_surface_dice(use_subvoxels=True)`` gives NSD to
float32 precision. Boundary-voxel definitions (MONAI's default edges, medpy) give other numbers.

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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METRICS = ("Dice", "VOE", "RVD", "HD95", "ASSD", "NSD")
HIGHER_IS_BETTER = {"Dice": True, "VOE": False, "RVD": None, "HD95": False, "ASSD": False, "NSD": True}
UNITS = {"HD95": "mm", "ASSD": "mm"}
DEFAULT_TOLERANCE_MM = 1.0
SURFACE_DEFINITION = "surface elements (Nikolov et al. 2018)"


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


@dataclass(frozen=True)
class SurfaceDistances:
    """The surface elements of both masks: each one's distance (mm) to the other surface, and its area (mm²; mm
    for a 2D case)."""

    to_reference: np.ndarray  # from each element of the prediction's surface
    prediction_areas: np.ndarray
    to_prediction: np.ndarray  # from each element of the reference's surface
    reference_areas: np.ndarray


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Surface elements of two non-empty boolean masks on a grid of ``spacing`` (mm), and their distances.

    A 2D case stored as 1 x H x W is measured in its plane (contour lengths), as a 2D image would be. MONAI
    builds the elements; the distances are computed here in float64 (MONAI returns them as float32, which could
    move a distance across the tolerance).
    """
    from monai.metrics.utils import get_mask_edges
    from scipy.spatial import KDTree

    squeeze = tuple(i for i, s in enumerate(prediction.shape) if s == 1)
    spacing = [float(s) for i, s in enumerate(spacing) if i not in squeeze]
    prediction, reference = (np.ascontiguousarray(np.squeeze(m, axis=squeeze)) for m in (prediction, reference))
    edges_prediction, edges_reference, areas_prediction, areas_reference = get_mask_edges(
        prediction, reference, crop=True, spacing=spacing
    )
    scale = np.asarray(spacing, dtype=np.float64)
    points_prediction = np.argwhere(edges_prediction).astype(np.float64) * scale
    points_reference = np.argwhere(edges_reference).astype(np.float64) * scale
    return SurfaceDistances(
        to_reference=KDTree(points_reference).query(points_prediction)[0],
        prediction_areas=np.asarray(areas_prediction, dtype=np.float64)[edges_prediction],
        to_prediction=KDTree(points_prediction).query(points_reference)[0],
        reference_areas=np.asarray(areas_reference, dtype=np.float64)[edges_reference],
    )


def area_weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """The smallest distance below which ``percent`` % of the surface area lies (DeepMind's robust Hausdorff)."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order]) / areas.sum()
    index = min(int(np.searchsorted(cumulative, percent / 100.0)), len(distances) - 1)
    return float(distances[order][index])


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
    s = surface_distances(prediction, reference, spacing)
    distances = np.concatenate([s.to_reference, s.to_prediction])
    areas = np.concatenate([s.prediction_areas, s.reference_areas])
    return {
        "HD95": max(
            area_weighted_percentile(s.to_reference, s.prediction_areas, 95),
            area_weighted_percentile(s.to_prediction, s.reference_areas, 95),
        ),
        "ASSD": float((distances * areas).sum() / areas.sum()),
        "NSD": float(areas[distances <= tolerance_mm].sum() / areas.sum()),
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
