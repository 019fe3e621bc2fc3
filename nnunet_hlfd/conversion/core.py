"""Challenge download -> nnU-Net raw dataset, all or nothing.

A converter (one module per challenge) only *discovers* cases and declares a :class:`DatasetSpec`;
this module does the rest for every challenge alike: checks each case (readable files, image/label
geometry, label values), writes into a hidden temporary folder beside the destination, writes
``dataset.json``, optionally runs nnU-Net's integrity check, and only then moves the dataset into place.
A failure removes the temporary folder, so a half-written dataset never appears and an existing one
is never damaged.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_hlfd.errors import CaseError, ConversionError
from nnunet_hlfd.grid import grid, grid_differences, same_grid_exactly
from nnunet_hlfd.image_files import incomplete
from nnunet_hlfd.workers import worker_pool

FILE_ENDING = ".nii.gz"
# Absolute tolerance for image/label geometry: millimetres for spacing and origin, cosines for direction.
DEFAULT_GEOMETRY_TOLERANCE = 1e-3
RE_DOWNLOAD = "the file is damaged or incomplete (e.g. an interrupted download or extraction): download it again"


@dataclass(frozen=True)
class SourceCase:
    """One case of a challenge download. ``label=None`` marks a test case (goes to ``imagesTs``).

    A 4D ``image`` is split into channels with nnU-Net's MSD splitter, which names the output after
    the file, so for 4D sources ``case_id`` must equal the file name without ``.nii.gz``.
    """

    case_id: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class DatasetSpec:
    """What a converter declares: the nnU-Net dataset it produces and how source labels map onto it."""

    dataset_id: int
    name: str
    channel_names: dict[int, str]
    labels: dict[str, int | tuple[int, ...]]
    source_label_values: tuple[int, ...]
    # source value -> output value; None keeps the values as they are
    label_map: dict[int, int] | None = None
    regions_class_order: tuple[int, ...] | None = None
    description: str = ""
    reference: str = ""
    licence: str = "see the challenge's terms of use"
    # an extra hint appended to the error about unexpected label values
    label_value_hint: str = ""
    extra_dataset_json: dict = field(default_factory=dict)
    # extra JSON files written beside dataset.json (file name -> content)
    extra_files: dict[str, object] = field(default_factory=dict)
    # names of the output label values for the summary (default: from ``labels``)
    value_names: dict[int, str] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.dataset_id <= 999:
            raise ConversionError(f"Dataset id {self.dataset_id} is outside nnU-Net's range 1-999: choose another -d.")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", self.name):
            raise ConversionError(f"Dataset name {self.name!r}: use letters, digits, '-' and '_' only.")

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    @property
    def output_label_values(self) -> tuple[int, ...]:
        if self.label_map is None:
            return self.source_label_values
        return tuple(sorted(set(self.label_map.values())))


@dataclass
class CaseReport:
    case_id: str
    is_test: bool
    output_values: tuple[int, ...] = ()
    label_header_aligned: bool = False


@dataclass
class ConversionSummary:
    folder: Path
    training: int
    test: int
    skipped: list[str]
    cases_with_value: dict[int, int]
    labels_aligned: list[str]
    value_names: dict[int, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"Wrote {self.folder}",
            f"  training cases: {self.training}",
            f"  test cases (imagesTs): {self.test}",
            f"  skipped input entries (not cases): {len(self.skipped)} {self.skipped[:5] if self.skipped else ''}",
        ]
        for value, n in sorted(self.cases_with_value.items()):
            name = f" ({self.value_names[value]})" if value in self.value_names else ""
            lines.append(f"  label value {value}{name} present in {n}/{self.training} training cases")
        if self.labels_aligned:
            lines.append(
                f"  label headers aligned to their image within tolerance: {len(self.labels_aligned)} "
                f"({', '.join(self.labels_aligned[:5])})"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# per-case work (runs in worker processes: module-level functions only)


def check_complete(case_id: str, path: Path, what: str) -> None:
    """Refuse a truncated or corrupt file (SimpleITK would read it and fill in zeros)."""
    problem = incomplete(path)
    if problem:
        raise CaseError(case_id, f"{what} file {path} is {problem}", RE_DOWNLOAD)


def _read(case_id: str, path: Path, what: str) -> sitk.Image:
    if not path.is_file():
        raise CaseError(case_id, f"{what} file {path} is missing", "restore the file or remove the case folder")
    check_complete(case_id, path, what)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CaseError(case_id, f"cannot read {what} file {path}: {detail}", RE_DOWNLOAD) from None


def check_geometry(case_id: str, image: sitk.Image, label: sitk.Image, tolerance: float) -> bool:
    """Raise unless image and label share a grid; returns True if the label header differs within tolerance."""
    problems = grid_differences(label, image, tolerance, "image")
    if problems:
        raise CaseError(
            case_id,
            "label and image are not on the same voxel grid: " + "; ".join(problems),
            "this label does not belong to this image, or one of them was resampled/reoriented: "
            "use the files exactly as the challenge distributes them",
        )
    return not same_grid_exactly(label, image)


def _value_counts(array: np.ndarray) -> dict[float, int]:
    flat = array.ravel()
    if flat.dtype.kind in "ui" and flat.size and flat.min() >= 0 and flat.max() < 2**16:
        counts = np.bincount(flat.astype(np.int64, copy=False))
        return {int(v): int(c) for v, c in enumerate(counts) if c}
    values, counts = np.unique(flat, return_counts=True)
    return {v.item(): int(c) for v, c in zip(values, counts)}


def convert_case(
    case: SourceCase, spec: DatasetSpec, out_dir: str, tolerance: float = DEFAULT_GEOMETRY_TOLERANCE
) -> CaseReport:
    """Check one case and write it into ``out_dir`` (the temporary dataset folder)."""
    from nnunetv2.dataset_conversion.convert_MSD_dataset import split_4d_nifti

    out = Path(out_dir)
    image = _read(case.case_id, case.image, "image")
    n_channels = image.GetSize()[3] if image.GetDimension() == 4 else 1
    if image.GetDimension() not in (3, 4) or n_channels != len(spec.channel_names):
        raise CaseError(
            case.case_id,
            f"image {case.image} has {image.GetDimension()} dimensions and {n_channels} channel(s); "
            f"{len(spec.channel_names)} channel(s) ({', '.join(spec.channel_names.values())}) are expected",
            "check that the file is this dataset's image",
        )
    report = CaseReport(case.case_id, is_test=case.label is None)
    images_dir = out / ("imagesTs" if report.is_test else "imagesTr")

    if case.label is not None:
        label = _read(case.case_id, case.label, "label")
        if label.GetDimension() != 3:
            raise CaseError(case.case_id, f"label {case.label} is {label.GetDimension()}D, not 3D", RE_DOWNLOAD)
        report.label_header_aligned = check_geometry(case.case_id, image, label, tolerance)
        array = sitk.GetArrayViewFromImage(label)
        counts = _value_counts(array)
        unexpected = {v: c for v, c in counts.items() if v not in spec.source_label_values}
        if unexpected:
            listed = ", ".join(f"{v} ({c} voxels)" for v, c in sorted(unexpected.items()))
            raise CaseError(
                case.case_id,
                f"label {case.label} contains unexpected value(s) {listed}; expected only {spec.source_label_values}",
                "this is not a label map of this challenge, or it was resampled with interpolation "
                "(labels need nearest neighbour)" + spec.label_value_hint,
            )
        present = [int(v) for v in counts]
        if spec.label_map is not None:
            present = sorted({spec.label_map[v] for v in present})
        report.output_values = tuple(present)
        label_out = out / "labelsTr" / f"{case.case_id}{FILE_ENDING}"
        copy_as_is = (
            spec.label_map is None and not report.label_header_aligned and case.label.name.endswith(FILE_ENDING)
        )
        if copy_as_is:
            shutil.copyfile(case.label, label_out)
        else:
            lut = np.zeros(max(spec.source_label_values) + 1, dtype=np.uint8)
            for v in spec.source_label_values:
                lut[v] = v if spec.label_map is None else spec.label_map[v]
            index = array if array.dtype.kind == "u" else np.asarray(array).astype(np.int64)
            written = sitk.GetImageFromArray(lut[index])
            written.SetSpacing(image.GetSpacing()[:3])
            written.SetOrigin(image.GetOrigin()[:3])
            written.SetDirection(grid(image)[3].ravel().tolist())
            sitk.WriteImage(written, str(label_out), useCompression=True)

    if image.GetDimension() == 4:
        if case.image.name != f"{case.case_id}{FILE_ENDING}":
            raise ValueError(f"4D source {case.image} must be named {case.case_id}{FILE_ENDING}")
        split_4d_nifti(str(case.image), str(images_dir))  # nnU-Net's own MSD splitter
    elif case.image.name.endswith(FILE_ENDING):
        shutil.copyfile(case.image, images_dir / f"{case.case_id}_0000{FILE_ENDING}")
    else:  # e.g. LiTS's uncompressed .nii: same header, compressed
        sitk.WriteImage(image, str(images_dir / f"{case.case_id}_0000{FILE_ENDING}"), useCompression=True)
    return report


# ---------------------------------------------------------------------------------------------------
# the whole dataset


def resolve_output_root(output_root: str | os.PathLike | None) -> Path:
    root = output_root or os.environ.get("nnUNet_raw")
    if not root:
        raise ConversionError("No output folder: set nnUNet_raw (nnU-Net's raw data folder) or pass -o FOLDER.")
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(f"Output folder {root} does not exist: create it, or point nnUNet_raw/-o elsewhere.")
    return root


def _id_conflicts(spec: DatasetSpec, raw_root: Path) -> list[Path]:
    """Folders of *another* dataset with the same id, which would make nnU-Net's id lookup ambiguous."""
    roots = [raw_root] + [Path(os.environ[v]) for v in ("nnUNet_preprocessed", "nnUNet_results") if os.environ.get(v)]
    prefix = f"Dataset{spec.dataset_id:03d}_"
    return sorted(
        p for r in roots if r.is_dir() for p in r.glob(prefix + "*") if p.is_dir() and p.name != spec.folder_name
    )


def _check_cases(cases: Sequence[SourceCase], input_folder: Path) -> None:
    if not any(c.label is not None for c in cases):
        raise ConversionError(
            f"No training cases (image with label) found in {input_folder}: "
            "point at the folder the challenge's layout describes (see dataset_conversion/README.md)."
        )
    seen: dict[str, SourceCase] = {}
    for case in cases:
        if case.case_id in seen:
            raise ConversionError(
                f"Case id {case.case_id} occurs twice ({seen[case.case_id].image} and {case.image}): "
                "remove the duplicate download."
            )
        seen[case.case_id] = case


def _run_cases(
    cases: Sequence[SourceCase], spec: DatasetSpec, tmp: Path, num_processes: int, tolerance: float
) -> tuple[list[CaseReport], list[CaseError]]:
    reports, errors = [], []
    progress = tqdm(total=len(cases), desc=f"converting {spec.folder_name}", unit="case")
    if num_processes <= 1:
        for case in cases:
            try:
                reports.append(convert_case(case, spec, str(tmp), tolerance))
            except CaseError as e:
                errors.append(e)
            progress.update()
    else:
        with worker_pool(num_processes) as pool:
            futures = [pool.submit(convert_case, case, spec, str(tmp), tolerance) for case in cases]
            for future in as_completed(futures):
                try:
                    reports.append(future.result())
                except CaseError as e:
                    errors.append(e)
                progress.update()
    progress.close()
    return reports, errors


def _write_dataset_json(spec: DatasetSpec, folder: Path, n_train: int, n_test: int, source: Path) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(
        str(folder),
        channel_names=spec.channel_names,
        labels=spec.labels,
        num_training_cases=n_train,
        file_ending=FILE_ENDING,
        regions_class_order=spec.regions_class_order,
        dataset_name=spec.name,
        reference=spec.reference,
        description=spec.description,
        license=spec.licence,
        converted_by="nnunet_hlfd convert",
        numTest=n_test,
        conversion={"source": str(source), "label_map": spec.label_map, **spec.extra_dataset_json},
    )
    for name, content in spec.extra_files.items():
        (folder / name).write_text(json.dumps(content, indent=1) + "\n")


def _recover_interrupted_overwrite(destination: Path) -> None:
    """A run killed during --overwrite's swap leaves the old dataset under a hidden name: put it back if the
    swap had not happened yet (nothing else holds it), else remove it (the new dataset is in place). Said."""
    for old in sorted(destination.parent.glob(f".{destination.name}.replaced-*")):
        if destination.exists():
            shutil.rmtree(old)
            print(f"removed {old}: the copy of a dataset replaced by an interrupted --overwrite")
        else:
            os.replace(old, destination)
            print(f"restored {destination} from {old}, set aside by an interrupted --overwrite")


def _move_into_place(tmp: Path, destination: Path) -> None:
    """Swap ``tmp`` in; an existing dataset is set aside first and restored if the swap fails."""
    if not destination.exists():
        os.replace(tmp, destination)
        return
    old = destination.with_name(f".{destination.name}.replaced-{uuid.uuid4().hex[:8]}")
    os.replace(destination, old)
    try:
        os.replace(tmp, destination)
    except OSError:
        os.replace(old, destination)
        raise
    shutil.rmtree(old)


def convert_dataset(
    spec: DatasetSpec,
    cases: Sequence[SourceCase],
    input_folder: str | os.PathLike,
    output_root: str | os.PathLike | None = None,
    overwrite: bool = False,
    num_processes: int = 1,
    verify: bool = False,
    skipped: Sequence[str] = (),
    tolerance: float = DEFAULT_GEOMETRY_TOLERANCE,
) -> ConversionSummary:
    """Convert ``cases`` into ``<output_root>/DatasetXXX_Name``; nothing appears there unless every case succeeded."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConversionError(
            f"--tolerance {tolerance}: the geometry tolerance must be a finite number ≥ 0 (mm for spacing and origin, "
            f"cosine for direction; default {DEFAULT_GEOMETRY_TOLERANCE})"
        )
    input_folder = Path(input_folder)
    root = resolve_output_root(output_root)
    destination = root.resolve() / spec.folder_name
    _recover_interrupted_overwrite(destination)
    if destination.exists() and not overwrite:
        raise ConversionError(
            f"{destination} already exists. Pass --overwrite to replace it (the old dataset stays untouched until "
            "the new one is complete), or choose another dataset id with -d."
        )
    conflicts = _id_conflicts(spec, root)
    if conflicts:
        raise ConversionError(
            f"Dataset id {spec.dataset_id} is already used by {', '.join(map(str, conflicts))}; nnU-Net could not "
            "tell the two apart. Choose another id with -d."
        )
    _check_cases(cases, input_folder)

    for stale in root.glob(f".{spec.folder_name}.partial-*"):  # left by a run that was killed; ours by name
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{spec.folder_name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir(parents=True)
        reports, errors = _run_cases(cases, spec, tmp, num_processes, tolerance)
        if errors:
            errors.sort(key=lambda e: e.case_id)
            state = "the existing dataset is untouched" if destination.exists() else "nothing was written"
            raise ConversionError(
                f"{spec.folder_name}: {len(errors)} of {len(cases)} case(s) could not be converted; {state}.\n  "
                + "\n  ".join(str(e) for e in errors)
            )
        train = sorted((r for r in reports if not r.is_test), key=lambda r: r.case_id)
        n_test = len(reports) - len(train)
        if n_test == 0:
            (tmp / "imagesTs").rmdir()
        _write_dataset_json(spec, tmp, len(train), n_test, input_folder)
        if verify:
            from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

            try:
                verify_dataset_integrity(str(tmp), max(1, num_processes))
            except (AssertionError, RuntimeError) as e:
                raise ConversionError(
                    f"nnU-Net's integrity check failed on the converted {spec.folder_name} ({e}); nothing was moved "
                    "into place. Please report this: the converter's own checks should have caught it."
                ) from e
        _move_into_place(tmp, destination)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

    counts: dict[int, int] = {}
    for r in train:
        for v in r.output_values:
            counts[v] = counts.get(v, 0) + 1
    return ConversionSummary(
        folder=destination,
        training=len(train),
        test=n_test,
        skipped=list(skipped),
        cases_with_value=counts,
        labels_aligned=sorted(r.case_id for r in train if r.label_header_aligned),
        value_names=spec.value_names or {v: k for k, v in spec.labels.items() if isinstance(v, int)},
    )
