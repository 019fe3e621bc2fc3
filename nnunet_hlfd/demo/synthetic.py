"""A tiny synthetic CT-like dataset in nnU-Net's raw format, for tests and the demo.

Each case has an ellipsoidal "organ" (label 1) holding a "tumour" (label 2) whose intensity overlaps the
organ's, plus an unlabelled bright confounder, on correlated noise. Deterministic per case and seed.
"""

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

SPACING_ZYX = (2.0, 0.8, 0.8)


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def synthetic_case(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in HU-like units, label uint8) of one case, arrays in z, y, x order."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    dims = np.array(shape, dtype=float)
    organ_centre = dims / 2 + rng.uniform(-0.1, 0.1, 3) * dims
    organ_radii = dims * rng.uniform(0.22, 0.32, 3)
    organ = _ellipsoid(shape, organ_centre, organ_radii)
    tumour_radii = organ_radii * rng.uniform(0.3, 0.5)
    tumour_centre = organ_centre + rng.uniform(-0.35, 0.35, 3) * organ_radii
    tumour = _ellipsoid(shape, tumour_centre, tumour_radii) & organ
    confounder_centre = np.where(organ_centre > dims / 2, dims * 0.15, dims * 0.85)
    confounder = _ellipsoid(shape, confounder_centre, dims * 0.1)

    image = np.full(shape, -80.0)  # fat-like background
    image[organ] = 60.0
    image[tumour] = rng.uniform(85.0, 110.0)  # overlaps the organ once noise is added
    image[confounder] = 100.0
    noise = gaussian_filter(rng.normal(0.0, 1.0, shape), sigma=1.0)
    image = gaussian_filter(image, sigma=0.7) + 45.0 * noise / noise.std()
    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[tumour] = 2
    return image.astype(np.float32), label


def _write(array: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(reversed(SPACING_ZYX)))  # SimpleITK wants x, y, z
    sitk.WriteImage(img, str(path), useCompression=True)


def make_synthetic_dataset(
    raw_root: str | Path,
    dataset_id: int = 990,
    name: str = "HLFDSynthetic",
    num_training: int = 6,
    num_test: int = 2,
    shape: tuple[int, int, int] = (16, 32, 32),
    seed: int = 0,
    regions: bool = False,
    ignore_label: bool = False,
) -> Path:
    """Write ``Dataset<id>_<name>`` under ``raw_root`` and return its folder.

    Test cases go to ``imagesTs``, their labels to ``labelsTs`` (for evaluating predictions). With
    ``regions`` the labels are declared as nnU-Net regions (organ+tumour, tumour), as for KiTS. With
    ``ignore_label`` a band of every training label map (the first quarter of the x axis) is marked with
    nnU-Net's ignore label, as in sparsely annotated data.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(num_training + num_test):
        image, label = synthetic_case(shape, seed * 10_000 + i)
        split = "Tr" if i < num_training else "Ts"
        if ignore_label and split == "Tr":
            label[..., : shape[2] // 4] = 3
        case = f"case_{i:03d}"
        _write(image, folder / f"images{split}" / f"{case}_0000.nii.gz")
        _write(label, folder / f"labels{split}" / f"{case}.nii.gz")
    if regions:
        labels = {"background": 0, "organ_and_tumour": [1, 2], "tumour": 2}
        extra = {"regions_class_order": [1, 2]}
    else:
        labels = {"background": 0, "organ": 1, "tumour": 2}
        extra = {}
    if ignore_label:
        labels["ignore"] = 3
    generate_dataset_json(
        str(folder),
        {0: "CT"},
        labels,
        num_training,
        ".nii.gz",
        dataset_name=folder.name,
        description="Synthetic CT-like organ and tumour phantoms (nnunet_hlfd)",
        **extra,
    )
    return folder
