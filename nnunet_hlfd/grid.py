"""Voxel grids of image files: the one place that says whether two files describe the same voxels."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class HasGrid(Protocol):
    """A ``SimpleITK.Image``, or a ``SimpleITK.ImageFileReader`` after ``ReadImageInformation()``."""

    def GetDimension(self) -> int: ...
    def GetSize(self) -> tuple[int, ...]: ...
    def GetSpacing(self) -> tuple[float, ...]: ...
    def GetOrigin(self) -> tuple[float, ...]: ...
    def GetDirection(self) -> tuple[float, ...]: ...


def grid(image: HasGrid) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Size, spacing, origin and direction of the first three axes (a 4D image's channels excluded)."""
    dim = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(dim, dim)[:3, :3]
    return image.GetSize()[:3], np.array(image.GetSpacing()[:3]), np.array(image.GetOrigin()[:3]), direction


def grid_differences(image: HasGrid, reference: HasGrid, tolerance: float, reference_name: str) -> list[str]:
    """What differs between two grids beyond ``tolerance`` (mm for spacing and origin, cosine for direction)."""
    size, *geometry = grid(image)
    size_r, *geometry_r = grid(reference)
    problems = [f"size {size} vs {reference_name} {size_r}"] if size != size_r else []
    for what, a, b in zip(("spacing", "origin", "direction"), geometry, geometry_r):
        if not np.allclose(a, b, rtol=0, atol=tolerance):
            problems.append(f"{what} {a.round(5).ravel().tolist()} vs {reference_name} {b.round(5).ravel().tolist()}")
    return problems


def same_grid_exactly(image: HasGrid, reference: HasGrid) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(grid(image), grid(reference)))
