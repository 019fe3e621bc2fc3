"""``evaluate``: a predictions folder against nnU-Net raw reference labels, per case and per label/region.

Everything is checked before a metric is computed (folders, dataset.json, case lists, every file's voxel
grid), so a mismatch fails in seconds with the case named, and nothing is written. The per-case CSV and the
summary JSON are written to temporary names and renamed, so a folder never holds half a result.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_hlfd.errors import EvaluationError
from nnunet_hlfd.evaluation.metrics import DEFAULT_TOLERANCE_MM, METRICS, SURFACE_DEFINITION, mask_metrics
from nnunet_hlfd.files import write_csv, write_text
from nnunet_hlfd.grid import grid_differences
from nnunet_hlfd.image_files import incomplete
from nnunet_hlfd.workers import worker_pool

PER_CASE_FILE = "metrics_per_case.csv"
SUMMARY_FILE = "metrics_summary.json"
GEOMETRY_TOLERANCE = 1e-3
# NSD tolerances as given: one value for every label/region (the key None), NAME=MM for some, or both.
ToleranceSpec = float | Mapping[str | None, float]
CSV_COLUMNS = ("case", "class", "label_or_region", *METRICS, "prediction_voxels", "reference_voxels")


@dataclass(frozen=True)
class Target:
    """A label or region of dataset.json, evaluated as one binary mask."""

    name: str
    value: int | tuple[int, ...]

    @property
    def key(self) -> str:
        return str(self.value)  # nnU-Net's summary.json keys: "1", "(1, 2, 3)"


@dataclass(frozen=True)
class Task:
    """What evaluating one dataset needs: its labels/regions, its ignore label and its file ending."""

    targets: tuple[Target, ...]
    ignore_label: int | None
    file_ending: str


def read_task(dataset_json: dict) -> Task:
    """Labels or regions (KiTS/LiTS hierarchies) as nnU-Net's LabelManager reads dataset.json."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    names = {str(_label_or_region(value)): name for name, value in dataset_json["labels"].items()}
    values = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    targets = [Target(names.get(str(v), str(v)), v) for v in map(_label_or_region, values)]
    return Task(tuple(targets), manager.ignore_label, dataset_json.get("file_ending", ".nii.gz"))


def _label_or_region(value) -> int | tuple[int, ...]:
    """A label as int, a region of several labels as a tuple (a one-label region is that label)."""
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value) if len(value) > 1 else int(value[0])
    return int(value)


def parse_tolerances(items: Sequence[str]) -> dict[str | None, float]:
    """``--tolerance-mm`` values: one bare ``MM`` for every label/region, ``NAME=MM`` pairs, or both (the bare
    value then serves the labels/regions not named), e.g. ``kidney=1.0331 masses=1.1329 tumor=1.1498``."""
    parsed: dict[str | None, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        key = name if sep else None
        if sep and not name:
            raise EvaluationError(f"--tolerance-mm '{item}': NAME=MM needs the label/region's name before '='")
        if key in parsed:
            what = f"'{key}'" if key else "a value for every label/region"
            raise EvaluationError(f"--tolerance-mm gives {what} twice: give each once")
        try:
            parsed[key] = float(value)
        except ValueError:
            raise EvaluationError(
                f"--tolerance-mm '{item}': '{value}' is not a number of mm; give MM (all labels/regions) or NAME=MM, "
                "and put --tolerance-mm after the folders"
            ) from None
    return parsed


def resolve_tolerances(spec: ToleranceSpec, task: Task) -> dict[str, float]:
    """Label/region name -> NSD tolerance (mm), every target of ``task`` given a finite, positive tolerance."""
    spec = {None: spec} if isinstance(spec, (int, float)) else dict(spec)
    names = [t.name for t in task.targets]
    unknown = sorted(k for k in spec if k is not None and k not in names)
    if unknown:
        raise EvaluationError(
            f"--tolerance-mm names {', '.join(unknown)}, which dataset.json does not define: the labels/regions are "
            f"{', '.join(names)}"
        )
    for key, value in spec.items():
        if not (math.isfinite(value) and value > 0):
            raise EvaluationError(
                f"--tolerance-mm {key + '=' if key else ''}{value}: a tolerance must be a finite distance > 0 mm"
            )
    missing = [n for n in names if n not in spec and None not in spec]
    if missing:
        raise EvaluationError(
            f"--tolerance-mm gives no tolerance for {', '.join(missing)}: add NAME=MM for each, or one bare MM for "
            "the labels/regions not named"
        )
    return {n: float(spec.get(n, spec.get(None))) for n in names}


def find_dataset_json(predictions: Path, references: Path, dataset_json: str | os.PathLike | None) -> Path:
    """The explicit file, else the one nnUNetv2_predict copies into its output, else nnUNet_raw's."""
    candidates = (
        [Path(dataset_json)] if dataset_json else [predictions / "dataset.json", references.parent / "dataset.json"]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise EvaluationError(
        f"no dataset.json found (looked for {', '.join(map(str, candidates))}): pass it with --dataset-json, e.g. "
        "nnUNet_raw/DatasetXXX_Name/dataset.json"
    )


def _cases(folder: Path, file_ending: str, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvaluationError(f"{what} folder {folder} does not exist")
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir()) if p.name.endswith(file_ending)}


def pair_cases(
    predictions: Path, references: Path, file_ending: str, chill: bool = False
) -> dict[str, tuple[Path, Path]]:
    """case id -> (prediction, reference). Every prediction needs a reference; every reference needs a
    prediction unless ``chill`` (e.g. one fold's validation folder against all of gt_segmentations)."""
    predicted = _cases(predictions, file_ending, "predictions")
    reference = _cases(references, file_ending, "reference")
    if not reference:
        raise EvaluationError(f"no reference labels ending in {file_ending} in {references}")
    if not predicted:
        raise EvaluationError(
            f"no predictions ending in {file_ending} in {predictions} (is it the nnUNetv2_predict output folder?)"
        )
    orphans = sorted(set(predicted) - set(reference))
    if orphans:
        raise EvaluationError(
            f"{len(orphans)} prediction(s) have no reference label in {references}: {first_names(orphans)}. Are these "
            "folders from the same dataset and split (imagesTs predictions need labelsTs)?"
        )
    missing = sorted(set(reference) - set(predicted))
    if missing and not chill:
        raise EvaluationError(
            f"{len(missing)} reference case(s) have no prediction in {predictions}: {first_names(missing)}. Predict "
            "them, or pass --chill to evaluate only the predicted cases (e.g. a fold's validation folder)."
        )
    return {case: (predicted[case], reference[case]) for case in sorted(predicted)}


def first_names(names: list[str], n: int = 5) -> str:
    """The first ``n`` names, and how many more there are."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise EvaluationError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from None
    return reader


def check_whole_files(pairs: dict[str, tuple[Path, Path]]) -> None:
    """Raise unless every prediction and reference file is whole (a truncated one reads as zeros)."""
    problems = [
        (case, kind, path, problem)
        for case, files in pairs.items()
        for kind, path in zip(("prediction", "reference"), files)
        if (problem := incomplete(path))
    ]
    if problems:
        listed = "\n  ".join(f"{case}: {kind} {path} is {problem}" for case, kind, path, problem in problems[:5])
        more = f"\n  and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise EvaluationError(
            f"{len(problems)} file(s) are not whole:\n  {listed}{more}\nA killed nnUNetv2_predict leaves a cut "
            "prediction: delete it and predict that case again (--continue_prediction keeps files that exist). "
            "A cut reference: copy or convert it again."
        )


def check_grids(pairs: dict[str, tuple[Path, Path]], tolerance: float = GEOMETRY_TOLERANCE) -> None:
    """Raise unless each prediction lies on its reference's voxel grid (headers only: fast)."""
    problems = []
    for case, (prediction, reference) in pairs.items():
        differences = grid_differences(_header(prediction), _header(reference), tolerance, "reference")
        if differences:
            problems.append(f"{case}: " + "; ".join(differences))
    if problems:
        raise EvaluationError(
            f"{len(problems)} prediction(s) are not on their reference's voxel grid:\n  "
            + "\n  ".join(problems[:5])
            + "\nPredictions must be in the reference's original geometry, as nnUNetv2_predict writes them: were "
            "they resampled, cropped, or predicted from other images?"
        )


def evaluate_case(
    case: str, prediction_file: Path, reference_file: Path, task: Task, tolerances_mm: Mapping[str, float]
) -> list[dict]:
    """One row per label/region of one case."""
    prediction_image, reference_image = sitk.ReadImage(str(prediction_file)), sitk.ReadImage(str(reference_file))
    prediction = sitk.GetArrayFromImage(prediction_image)
    reference = sitk.GetArrayFromImage(reference_image)
    spacing = reference_image.GetSpacing()[::-1]  # array axes are (z, y, x)
    allowed = {0, *(v for t in task.targets for v in np.atleast_1d(t.value))}
    ignore_label = {task.ignore_label} if task.ignore_label is not None else set()
    for what, path, labels, valid in (
        ("prediction", prediction_file, prediction, allowed),
        ("reference", reference_file, reference, allowed | ignore_label),
    ):
        unexpected = sorted(set(np.unique(labels).tolist()) - valid)
        if unexpected:
            raise EvaluationError(
                f"{case}: {what} {path} has label values {unexpected} that dataset.json does not define: wrong "
                f"dataset.json, or a {what} of another dataset?"
            )
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    ignore = reference == task.ignore_label if task.ignore_label is not None else None
    rows = []
    for target in task.targets:
        metrics = mask_metrics(
            region_or_label_to_mask(prediction, target.value),
            region_or_label_to_mask(reference, target.value),
            spacing,
            tolerances_mm[target.name],
            ignore,
        )
        rows.append({"case": case, "class": target.name, "label_or_region": target.key, **metrics})
    return rows


def _evaluate_case_star(args: tuple) -> list[dict]:
    return evaluate_case(*args)


def summarize(rows: list[dict], task: Task) -> dict:
    """Per label/region and metric: mean, std, median over the cases where the metric is defined, and n."""
    classes = {}
    for target in task.targets:
        own = [r for r in rows if r["label_or_region"] == target.key]
        stats = {}
        for metric in METRICS:
            values = np.array([r[metric] for r in own if not math.isnan(r[metric])], dtype=np.float64)
            stats[metric] = {
                "mean": float(values.mean()) if values.size else None,
                "std": float(values.std(ddof=1)) if values.size >= 2 else None,
                "median": float(np.median(values)) if values.size else None,
                "n": int(values.size),
            }
        classes[target.name] = {
            "label_or_region": target.key,
            "metrics": stats,
            "cases": len(own),
            "reference_empty": sum(r["reference_voxels"] == 0 for r in own),
            "prediction_empty": sum(r["prediction_voxels"] == 0 for r in own),
            "both_empty": sum(r["reference_voxels"] == 0 and r["prediction_voxels"] == 0 for r in own),
        }
    foreground = {}
    for metric in METRICS:
        means = [c["metrics"][metric]["mean"] for c in classes.values() if c["metrics"][metric]["mean"] is not None]
        foreground[metric] = float(np.mean(means)) if means else None
    return {"classes": classes, "foreground_mean": foreground}


def write_results(rows: list[dict], summary: dict, output: Path) -> None:
    write_csv(output / PER_CASE_FILE, rows, CSV_COLUMNS)
    write_text(output / SUMMARY_FILE, json.dumps(summary, indent=2))


def read_per_case(path: Path) -> list[dict]:
    """Rows of a per-case CSV with numbers as floats (an empty cell, i.e. an undefined RVD, as NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for metric in METRICS:
            row[metric] = float(row[metric]) if row[metric] != "" else float("nan")
    return rows


def evaluate_folder(
    predictions: str | os.PathLike,
    references: str | os.PathLike,
    dataset_json: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    tolerance_mm: ToleranceSpec = DEFAULT_TOLERANCE_MM,
    num_processes: int = 1,
    chill: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluate, write ``metrics_per_case.csv`` and ``metrics_summary.json`` into ``output`` (default: the
    predictions folder) and return the summary. ``tolerance_mm``: NSD's tolerance for every label/region, or per
    name (see :func:`parse_tolerances`)."""
    predictions, references = Path(predictions), Path(references)
    dataset_json_file = find_dataset_json(predictions, references, dataset_json)
    task = read_task(json.loads(dataset_json_file.read_text()))
    tolerances = resolve_tolerances(tolerance_mm, task)
    pairs = pair_cases(predictions, references, task.file_ending, chill)
    check_whole_files(pairs)
    check_grids(pairs)
    jobs = [(case, p, r, task, tolerances) for case, (p, r) in pairs.items()]
    bar = dict(total=len(jobs), desc="evaluate", unit="case", disable=not progress)
    if num_processes > 1:
        with worker_pool(num_processes) as pool:
            per_case = list(tqdm(pool.map(_evaluate_case_star, jobs), **bar))
    else:
        per_case = [evaluate_case(*job) for job in tqdm(jobs, **bar)]
    rows = [row for case_rows in per_case for row in case_rows]
    summary = {
        "predictions": str(predictions.resolve()),
        "references": str(references.resolve()),
        "dataset_json": str(dataset_json_file.resolve()),
        "surface_metrics": SURFACE_DEFINITION,
        "nsd_tolerance_mm": tolerances,
        "num_cases": len(pairs),
        **summarize(rows, task),
    }
    write_results(rows, summary, Path(output) if output else predictions)
    return summary
