"""Medical Segmentation Decathlon tasks (Task03_Liver, Task05_Prostate, ...): ``TaskXX_Name/`` with
``imagesTr/``, ``labelsTr/``, ``imagesTs/`` and the MSD ``dataset.json``.

Multi-channel (4D) images are split into ``_0000``, ``_0001``, ... with nnU-Net's own MSD splitter, and
``dataset.json`` is translated the way nnU-Net's ``nnUNetv2_convert_MSD_dataset`` does it (modality ->
channel_names, labels inverted). On top of that converter: every case is read and checked (geometry, label
values, channel count), output is all or nothing, and ``--overwrite``/``--verify`` work as for the
other challenges. macOS ``._*`` files in the MSD tarballs are skipped.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from nnunet_hlfd.conversion.core import (
    FILE_ENDING,
    ConversionError,
    ConversionSummary,
    DatasetSpec,
    SourceCase,
    convert_dataset,
)

TASK_FOLDER = re.compile(r"Task(\d+)_(\w+)")


def _files(folder: Path) -> tuple[list[Path], list[str]]:
    if not folder.is_dir():
        return [], []
    entries = sorted(folder.iterdir())
    keep = [e for e in entries if e.name.endswith(FILE_ENDING) and not e.name.startswith((".", "_"))]
    return keep, [f"{folder.name}/{e.name}" for e in entries if e not in keep]


def discover_msd(input_folder: str | os.PathLike) -> tuple[list[SourceCase], list[str], dict]:
    root = Path(input_folder)
    meta_file = root / "dataset.json"
    for required in (root / "imagesTr", root / "labelsTr", meta_file):
        if not required.exists():
            raise ConversionError(
                f"{required} is missing: point at an extracted MSD task folder (TaskXX_Name with imagesTr/, "
                "labelsTr/, imagesTs/ and dataset.json)."
            )
    try:
        meta = json.loads(meta_file.read_text())
        meta["modality"], meta["labels"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ConversionError(f"{meta_file} is not an MSD dataset.json ({e}): extract the task again.") from None
    images, skipped = _files(root / "imagesTr")
    labels, skipped_labels = _files(root / "labelsTr")
    tests, skipped_tests = _files(root / "imagesTs")
    case_id = lambda p: p.name[: -len(FILE_ENDING)]  # noqa: E731
    image_ids, label_ids = {case_id(p) for p in images}, {case_id(p) for p in labels}
    problems = [f"imagesTr/{i}{FILE_ENDING} has no label in labelsTr/" for i in sorted(image_ids - label_ids)]
    problems += [f"labelsTr/{i}{FILE_ENDING} has no image in imagesTr/" for i in sorted(label_ids - image_ids)]
    if problems:
        raise ConversionError(
            f"The MSD task {root.name} is incomplete; nothing was written:\n  " + "\n  ".join(problems)
            + "\nfix: extract the task's tarball again."
        )  # fmt: skip
    cases = [SourceCase(case_id(p), p, root / "labelsTr" / p.name) for p in images]
    cases += [SourceCase(case_id(p), p, None) for p in tests]
    return cases, skipped + skipped_labels + skipped_tests, meta


def convert_msd(
    input_folder: str | os.PathLike, dataset_id: int | None = None, name: str | None = None, **options
) -> ConversionSummary:
    root = Path(input_folder)
    match = TASK_FOLDER.fullmatch(root.resolve().name)
    if match is None and (dataset_id is None or name is None):
        raise ConversionError(
            f"Cannot infer the MSD task from the folder name {root.name!r} (expected TaskXX_Name): "
            "rename it or pass -d and --name."
        )
    cases, skipped, meta = discover_msd(root)
    values = tuple(sorted(int(v) for v in meta["labels"]))
    spec = DatasetSpec(
        dataset_id=int(match.group(1)) if dataset_id is None else dataset_id,
        name=match.group(2) if name is None else name,
        channel_names={int(k): v for k, v in meta["modality"].items()},
        labels={label: int(value) for value, label in meta["labels"].items()},
        source_label_values=values,
        description=meta.get("description", "") + " (MSD, converted by nnunet_hlfd)",
        reference=meta.get("reference", "http://medicaldecathlon.com"),
        licence=meta.get("licence", "CC-BY-SA 4.0"),
        extra_dataset_json={"challenge": "Medical Segmentation Decathlon", "task": root.resolve().name},
    )
    return convert_dataset(spec, cases, root, skipped=skipped, **options)
