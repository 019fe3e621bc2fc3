"""LiTS (Liver Tumor Segmentation challenge): ``volume-N.nii`` + ``segmentation-N.nii``, test ``test-volume-N.nii``.

The download comes in several folders ("Training Batch 1", "Training Batch 2", the test volumes); point at
the folder that holds them all, they are found recursively. Labels: 1 liver, 2 tumour. The files are
uncompressed ``.nii``; they are rewritten as ``.nii.gz`` with their header unchanged (the authors' code
transposes LiTS volumes; we keep the challenge's geometry). Case ids: ``lits_NNN``, test ``lits_test_NNN``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nnunet_hlfd.conversion.core import ConversionError, ConversionSummary, DatasetSpec, SourceCase, convert_dataset
from nnunet_hlfd.conversion.tasks import task_labels

FILE = re.compile(r"(test-volume|volume|segmentation)-(\d+)\.nii(\.gz)?")
SOURCE_VALUES = (0, 1, 2)
DEFAULT_ID = 29


def discover_lits(input_folder: str | os.PathLike) -> tuple[list[SourceCase], list[str]]:
    root = Path(input_folder)
    if not root.is_dir():
        raise ConversionError(f"LiTS input folder {root} does not exist.")
    found: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}, "test-volume": {}}
    duplicates = []
    for path in sorted(root.rglob("*.nii*")):
        match = FILE.fullmatch(path.name)
        if match is None or path.name.startswith("."):
            continue
        kind, number = match.group(1), int(match.group(2))
        if number in found[kind]:
            duplicates.append(f"{path.name}: {found[kind][number]} and {path}")
        found[kind][number] = path
    if duplicates:
        raise ConversionError("LiTS files occur twice; remove one copy of each:\n  " + "\n  ".join(duplicates))
    if not any(found.values()):
        raise ConversionError(f"No volume-N.nii / segmentation-N.nii files under {root}: point at the LiTS download.")
    volumes, segmentations = found["volume"], found["segmentation"]
    problems = [f"volume-{n}: segmentation-{n}.nii is missing" for n in sorted(set(volumes) - set(segmentations))]
    problems += [f"segmentation-{n}: volume-{n}.nii is missing" for n in sorted(set(segmentations) - set(volumes))]
    if problems:
        raise ConversionError(
            "The LiTS download is incomplete; nothing was written:\n  "
            + "\n  ".join(problems)
            + "\nfix: extract every training batch into the input folder."
        )
    cases = [SourceCase(f"lits_{n:03d}", volumes[n], segmentations[n]) for n in sorted(volumes)]
    cases += [SourceCase(f"lits_test_{n:03d}", p, None) for n, p in sorted(found["test-volume"].items())]
    return cases, []


def convert_lits(
    input_folder: str | os.PathLike,
    task: str = "organ_tumor",
    dataset_id: int | None = None,
    name: str | None = None,
    **options,
) -> ConversionSummary:
    labels = task_labels(task, "liver", SOURCE_VALUES)
    spec = DatasetSpec(
        dataset_id=DEFAULT_ID + labels.id_offset if dataset_id is None else dataset_id,
        name="LiTS" + labels.name_suffix if name is None else name,
        channel_names={0: "CT"},
        labels=labels.labels,
        source_label_values=SOURCE_VALUES,
        label_map=labels.label_map,
        value_names=labels.value_names,
        description=f"LiTS, task {task}, converted by nnunet_hlfd",
        reference="https://competitions.codalab.org/competitions/17094",
        licence="CC BY-NC-SA 4.0",
        extra_dataset_json={"challenge": "LiTS", "task": task},
    )
    cases, skipped = discover_lits(input_folder)
    return convert_dataset(spec, cases, input_folder, skipped=skipped, **options)
