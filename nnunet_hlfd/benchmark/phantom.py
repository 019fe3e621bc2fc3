"""CT phantoms from real KiTS label maps: the anatomy of kidneys, tumours and cysts is real, the image synthetic.

For benchmarks that need real shapes, sizes and positions when the challenge's CT images are not available.
Each label map is cropped around the kidneys (with a margin), resampled to a chosen spacing (nearest neighbour)
and given a CT-like image in Hounsfield units, on the label's own grid (its direction matrix and origin kept):

| structure | where | HU |
|---|---|---|
| air | outside an elliptic body outline fitted around the kidneys | −1000 |
| subcutaneous fat, then abdominal wall muscle | rings inside the outline | −100, 45 |
| soft tissue (bowel, mesentery) with fat pockets | the rest of the body | 35 ± slow variation, −80 |
| vertebra: cancellous, cortical shell, arch | midline, at the kidneys' depth | 230, 650, 500 |
| spinal canal | behind the vertebral body | 20 |
| psoas and paraspinal muscles | beside and behind the vertebra | 50, 55 |
| liver-like organ | patient right, anterior-lateral, above the kidneys' centre | 100 ± texture |
| spleen-like organ | patient left, posterior-lateral, above the kidneys' centre | 115 |
| perirenal fat | a 5 mm shell around the kidneys | −90 |
| kidney cortex / medulla (label 1) | < 5 mm / deeper from the kidney's surface | 170 / 105 (± 15 per case) |
| tumour (label 2) | per-case mean 55-135 (overlaps medulla, liver, soft tissue), texture ± 25 | core 10-35 in half |
| cyst (label 3) | near water | 12 |

then partial-volume blur (Gaussian, 0.6 voxel) and spatially correlated noise (Gaussian-smoothed, σ 1 voxel,
12 HU) plus white noise (6 HU), stored as int16. Directions come from the label's direction matrix (patient
left, posterior, superior, as ITK's LPS), so the outline, spine and organs sit where they would.

Everything is drawn from ``numpy.random.default_rng([seed, case number])``: the same case and seed give the same
image on any machine. The settings are fixed defaults, documented here, and were not tuned to favour any method.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_hlfd.errors import PhantomError
from nnunet_hlfd.files import file_sha256, replaced_atomically, write_text
from nnunet_hlfd.image_files import incomplete

IMAGE_FILE, LABEL_FILE = "imaging.nii.gz", "segmentation.nii.gz"
SETTINGS_FILE = "phantom_settings.json"


@dataclass(frozen=True)
class PhantomSettings:
    in_plane_mm: float = 2.0
    slice_mm: float = 4.0
    margin_mm: float = 40.0  # around the kidneys' bounding box
    seed: int = 0


# ---- geometry -----------------------------------------------------------------------------------------------
def patient_axes(image: sitk.Image) -> list[tuple[int, float]]:
    """For each numpy axis of ``GetArrayFromImage(image)``: (physical axis 0 = left, 1 = posterior, 2 = superior,
    sign of the index direction along it)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    axes = []
    for numpy_axis in range(3):
        column = direction[:, 2 - numpy_axis]  # numpy axes are SimpleITK's reversed
        physical = int(np.argmax(np.abs(column)))
        axes.append((physical, float(np.sign(column[physical]))))
    if sorted(a for a, _ in axes) != [0, 1, 2]:
        raise PhantomError(f"direction matrix {image.GetDirection()} is not close to an axis permutation")
    return axes


def crop_and_resample(label: sitk.Image, settings: PhantomSettings) -> sitk.Image:
    """The kidneys' bounding box plus the margin (clipped to the image), resampled to the phantom spacing."""
    array = sitk.GetArrayViewFromImage(label)
    present = np.nonzero(array > 0)
    if present[0].size == 0:
        raise PhantomError("the label map has no kidney (no voxel > 0)")
    spacing = label.GetSpacing()
    lower, upper = [], []
    for numpy_axis in range(3):
        margin = int(np.ceil(settings.margin_mm / spacing[2 - numpy_axis]))
        lower.append(max(0, int(present[numpy_axis].min()) - margin))
        upper.append(min(array.shape[numpy_axis], int(present[numpy_axis].max()) + 1 + margin))
    index = [int(v) for v in reversed(lower)]
    size = [int(u - lo) for u, lo in zip(reversed(upper), reversed(lower))]
    cropped = sitk.RegionOfInterest(label, size, index)
    axes = patient_axes(label)
    new_spacing = [0.0] * 3
    for numpy_axis, (physical, _) in enumerate(axes):
        new_spacing[2 - numpy_axis] = settings.slice_mm if physical == 2 else settings.in_plane_mm
    new_size = [max(1, int(round(n * s / t))) for n, s, t in zip(cropped.GetSize(), spacing, new_spacing)]
    return sitk.Resample(
        cropped, new_size, sitk.Transform(), sitk.sitkNearestNeighbor, cropped.GetOrigin(), new_spacing,
        cropped.GetDirection(), 0, cropped.GetPixelID(),
    )  # fmt: skip


def _patient_coordinates(shape, spacing_np, axes) -> list[np.ndarray]:
    """Broadcastable mm coordinates along patient left, posterior, superior (relative: origin at index 0)."""
    coordinates: list[np.ndarray | None] = [None, None, None]
    for numpy_axis, (physical, sign) in enumerate(axes):
        view = [1, 1, 1]
        view[numpy_axis] = shape[numpy_axis]
        coordinates[physical] = (np.arange(shape[numpy_axis]) * spacing_np[numpy_axis] * sign).reshape(view)
    return coordinates


def _ellipse(x, y, centre, semi) -> np.ndarray:
    return ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 <= 1


def _ellipsoid(x, y, z, centre, semi) -> np.ndarray:
    return ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2 <= 1


def _smooth_noise(rng, shape, sigma_voxels) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_voxels)
    return field / max(float(field.std()), 1e-6)


# ---- the image ----------------------------------------------------------------------------------------------
def synthesize_ct(label: np.ndarray, spacing_np, axes, rng: np.random.Generator) -> np.ndarray:
    """A float32 CT-like image (HU) for a cropped, resampled label array (0 background, 1 kidney, 2 tumour, 3 cyst)."""
    shape = label.shape
    spacing_np = np.asarray(spacing_np, dtype=float)
    x, y, z = _patient_coordinates(shape, spacing_np, axes)
    broadcast = np.broadcast_to
    kidney = label > 0
    kx, ky, kz = (broadcast(c, shape)[kidney] for c in (x, y, z))
    x_centre, y_kidneys, z_centre = (kx.min() + kx.max()) / 2, float(ky.mean()), (kz.min() + kz.max()) / 2
    half_width, z_span = (kx.max() - kx.min()) / 2, max(kz.max() - kz.min(), 20.0)
    jitter = lambda low, high: float(rng.uniform(low, high))  # noqa: E731

    image = np.full(shape, -1000.0, dtype=np.float32)
    # body outline: kidneys near the back; a compact abdomen in front of them
    posterior, anterior = ky.max() + 20 + jitter(0, 10), ky.min() - 70 - jitter(0, 20)
    body_centre, body_semi = (
        (x_centre, (posterior + anterior) / 2),
        (half_width + 25 + jitter(0, 10), (posterior - anterior) / 2),
    )
    fat_depth = jitter(10, 20)
    inner_semi = (body_semi[0] - fat_depth, body_semi[1] - fat_depth)
    cavity_semi = (inner_semi[0] - 8, inner_semi[1] - 8)
    body = _ellipse(x, y, body_centre, body_semi) & np.ones(shape, bool)
    wall = _ellipse(x, y, body_centre, inner_semi) & body
    cavity = _ellipse(x, y, body_centre, cavity_semi) & body
    image[body] = -100
    image[wall] = 45
    soft = 35 + 12 * _smooth_noise(rng, shape, 6 / spacing_np)
    pockets = _smooth_noise(rng, shape, 4 / spacing_np) > 1.3
    image[cavity] = np.where(pockets, -80, soft)[cavity]

    # spine and the muscles beside and behind it
    radius = jitter(14, 18)
    spine = (x_centre, y_kidneys + 10)
    canal = (x_centre, spine[1] + radius + 7)
    for centre_x in (x_centre - radius - 12, x_centre + radius + 12):
        image[_ellipse(x, y, (centre_x, spine[1] - 2), (12, 15)) & cavity] = 50  # psoas
    for centre_x in (x_centre - 25, x_centre + 25):
        image[_ellipse(x, y, (centre_x, canal[1] + 12), (20, 15)) & wall] = 55  # paraspinal
    vertebra = _ellipse(x, y, spine, (radius, radius)) & wall
    image[vertebra] = 650
    image[_ellipse(x, y, spine, (radius - 2.5, radius - 2.5)) & wall] = 230
    image[_ellipse(x, y, canal, (10, 10)) & wall] = 500  # posterior arch
    image[_ellipse(x, y, canal, (7, 7)) & wall] = 20  # spinal canal

    # liver-like (patient right = smaller "left" coordinate) and spleen-like organs above the kidneys' centre
    liver = _ellipsoid(
        x, y, z, (x_centre - 0.55 * body_semi[0], body_centre[1] - 0.15 * body_semi[1], z_centre + 0.3 * z_span),
        (0.45 * body_semi[0], 0.6 * body_semi[1], 0.6 * z_span + 40),
    ) & cavity  # fmt: skip
    image[liver] = (100 + 8 * _smooth_noise(rng, shape, 2 / spacing_np))[liver]
    spleen = _ellipsoid(
        x, y, z, (x_centre + 0.65 * body_semi[0], y_kidneys - 10, z_centre + 0.35 * z_span),
        (0.2 * body_semi[0], 0.3 * body_semi[1], 0.3 * z_span + 20),
    ) & cavity  # fmt: skip
    image[spleen] = 115

    # kidneys in their perirenal fat; cortex and medulla by depth; tumours and cysts
    depth_outside = ndimage.distance_transform_edt(~kidney, sampling=spacing_np)
    image[(depth_outside > 0) & (depth_outside <= 5)] = -90
    depth = ndimage.distance_transform_edt(kidney, sampling=spacing_np)
    cortex, medulla = 170 + jitter(-15, 15), 105 + jitter(-15, 15)
    image[kidney] = np.where(depth[kidney] < 5, cortex, medulla)
    tumour = label == 2
    if tumour.any():
        texture = 25 * _smooth_noise(rng, shape, 2 / spacing_np)
        image[tumour] = (jitter(55, 135) + texture)[tumour]
        if rng.random() < 0.5:
            tumour_depth = ndimage.distance_transform_edt(tumour, sampling=spacing_np)
            core = tumour_depth > 0.5 * tumour_depth.max()
            image[core] = (jitter(10, 35) + 0.4 * texture)[core]
    cyst = label == 3
    image[cyst] = 12

    # partial-volume blur, correlated and white noise
    image = ndimage.gaussian_filter(image, 0.6)
    image += 12 * _smooth_noise(rng, shape, 1.0) + 6 * rng.standard_normal(shape).astype(np.float32)
    return np.clip(image, -1024, 3071)


def make_phantom(label_file: Path, case_number: int, settings: PhantomSettings) -> tuple[sitk.Image, sitk.Image]:
    """(image, label) of one case: the cropped, resampled real label and its synthetic CT."""
    label = crop_and_resample(sitk.ReadImage(str(label_file)), settings)
    array = sitk.GetArrayFromImage(label)
    axes = patient_axes(label)
    rng = np.random.default_rng([settings.seed, case_number])
    hu = synthesize_ct(array, tuple(reversed(label.GetSpacing())), axes, rng)
    image = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
    image.CopyInformation(label)
    return image, label


# ---- a KiTS-layout folder -----------------------------------------------------------------------------------
CASE = re.compile(r"case_(\d{5})")


def label_cases(labels_folder: Path) -> list[tuple[str, Path]]:
    """(case id, label file) of every ``case_XXXXX/segmentation.nii.gz`` in a KiTS19 or KiTS23 folder."""
    root = Path(labels_folder)
    for sub in ("data", "dataset"):
        if (root / sub).is_dir():
            root = root / sub
    cases = [
        (d.name, d / LABEL_FILE)
        for d in sorted(root.iterdir())
        if CASE.fullmatch(d.name) and (d / LABEL_FILE).is_file()
    ]
    if not cases:
        raise PhantomError(f"no case_XXXXX/{LABEL_FILE} in {root}: point at a KiTS19 or KiTS23 label folder")
    return cases


def check_label_source(
    labels_folder: Path, output: Path, settings: PhantomSettings, max_cases: int | None = None
) -> list[tuple[str, Path]]:
    """(case id, label file) of the cases to make phantoms of, after the refusals that must come before anything is
    written: a labels folder that is missing or holds a label file that is not whole, and a phantom folder made
    from other label maps or with other settings. Returns the cases."""
    labels_folder, output = Path(labels_folder), Path(output)
    if not labels_folder.is_dir():
        raise PhantomError(f"labels folder {labels_folder} does not exist: point at a KiTS19 or KiTS23 label folder")
    cases = label_cases(labels_folder)[:max_cases]
    settings_file = output / SETTINGS_FILE
    if settings_file.is_file():
        previous = json.loads(settings_file.read_text())
        if {k: previous.get(k) for k in asdict(settings)} != asdict(settings):
            raise PhantomError(
                f"{output} holds phantoms made with other settings ({previous}): choose another folder or remove it"
            )
        recorded, now = previous.get("labels"), label_fingerprints(cases)
        if recorded is None:  # a record from before the fingerprints: its path decides
            recorded = now if previous.get("source") == str(labels_folder.resolve()) else {}
        differ = sorted(c for c in {*recorded, *now} if recorded.get(c) != now.get(c))
        if differ:
            raise PhantomError(
                f"{output} holds phantoms of other label maps (made from {previous.get('source')}), not of "
                f"{labels_folder} ({len(now)} cases; {len(differ)} differ from, or are not among, the {len(recorded)} "
                f"recorded, e.g. {differ[0]}): a work folder holds one label source. Use a new --work folder, or "
                "point at the labels it was made from"
            )
    pending = [(case, f) for case, f in cases if not (output / case / IMAGE_FILE).is_file()]
    broken = [f"{f} is {problem}" for _, f in pending if (problem := incomplete(f))]
    if broken:
        raise PhantomError("; ".join(broken) + ": restore the label file(s) from the challenge's download")
    return cases


def label_fingerprints(cases: list[tuple[str, Path]]) -> dict[str, str]:
    """case id -> sha256 of its label file: what a phantom folder was made from."""
    return {case: file_sha256(path) for case, path in cases}


def write_phantoms(
    labels_folder: Path, output: Path, settings: PhantomSettings = PhantomSettings(), max_cases: int | None = None,
    progress: bool = True,
) -> list[str]:  # fmt: skip
    """Write ``output/case_XXXXX/{imaging,segmentation}.nii.gz`` for every labelled case (the KiTS layout, so the
    KiTS converters read it). Resumable: finished cases are kept, each file is written whole or not at all.
    Refuses (:func:`check_label_source`) an output folder made from other label maps or with other settings, and
    label files that are not whole. Returns the case ids."""
    from tqdm import tqdm

    output = Path(output)
    cases = check_label_source(labels_folder, output, settings, max_cases)
    settings_file = output / SETTINGS_FILE
    output.mkdir(parents=True, exist_ok=True)
    if not settings_file.is_file() or "labels" not in json.loads(settings_file.read_text()):
        record = {**asdict(settings), "source": str(Path(labels_folder).resolve()), "labels": label_fingerprints(cases)}
        write_text(settings_file, json.dumps(record, indent=2))
    for case_id, label_file in tqdm(cases, desc="phantoms", unit="case", disable=not progress):
        folder = output / case_id
        if (folder / IMAGE_FILE).is_file() and (folder / LABEL_FILE).is_file():
            continue
        image, label = make_phantom(label_file, int(CASE.fullmatch(case_id).group(1)), settings)
        for what, path in ((label, folder / LABEL_FILE), (image, folder / IMAGE_FILE)):
            with replaced_atomically(path) as tmp:
                sitk.WriteImage(what, str(tmp), useCompression=True)
    for extra in ("kits.json", "kits23.json", "LICENSE"):  # metadata and licence travel with the labels
        source = Path(labels_folder) / extra
        if source.is_file() and not (output / extra).exists():
            shutil.copy2(source, output / extra)
    return [case_id for case_id, _ in cases]


def _radiological(section: np.ndarray, axes: list[tuple[int, float]], slice_axis: int) -> np.ndarray:
    """An axial section (``axes``: :func:`patient_axes` of its volume) as radiologists view it: anterior at the
    top, the patient's right on the left."""
    in_plane = [axis for i, axis in enumerate(axes) if i != slice_axis]
    if in_plane[0][0] == 0:  # rows run left-right: put posterior down the rows instead
        section, in_plane = section.T, in_plane[::-1]
    if in_plane[0][1] < 0:
        section = section[::-1]
    if in_plane[1][1] < 0:
        section = section[:, ::-1]
    return section


def plot_phantom_samples(folder: Path, case_ids: list[str], output_png: Path) -> None:
    """One axial slice through each case's largest tumour cross-section: the phantom (window −200..300 HU) with the
    label contours (kidney green, tumour red, cyst blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(case_ids), figsize=(3.2 * len(case_ids), 3.4), squeeze=False)
    for ax, case_id in zip(axes[0], case_ids):
        label_image = sitk.ReadImage(str(Path(folder) / case_id / LABEL_FILE))
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(folder) / case_id / IMAGE_FILE)))
        label = sitk.GetArrayFromImage(label_image)
        axes = patient_axes(label_image)
        slice_axis = next(i for i, (physical, _) in enumerate(axes) if physical == 2)
        area = np.moveaxis(label == 2 if (label == 2).any() else label > 0, slice_axis, 0).sum((1, 2))
        k = int(np.argmax(area))
        img, lab = (_radiological(np.moveaxis(a, slice_axis, 0)[k], axes, slice_axis) for a in (image, label))
        ax.imshow(img, cmap="gray", vmin=-200, vmax=300)
        for value, colour in ((1, "lime"), (2, "red"), (3, "deepskyblue")):
            if (lab >= value).any() if value == 1 else (lab == value).any():
                ax.contour(lab >= value if value == 1 else lab == value, levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"{case_id}, slice {k}", fontsize=9)
        ax.axis("off")
    figure.tight_layout()
    with replaced_atomically(Path(output_png)) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
