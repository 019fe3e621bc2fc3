"""KiTS19, KiTS21 and KiTS23: ``case_XXXXX/imaging.nii.gz`` + a label file per case folder.

| challenge | case folders in | label file | labels |
|---|---|---|---|
| KiTS19 | ``kits19/data/`` | ``segmentation.nii.gz`` (absent for the test cases 210-299) | 1 kidney, 2 tumour |
| KiTS21 | ``kits21/data/`` | ``aggregated_MAJ_seg.nii.gz`` (annotators' majority vote) | 1 kidney, 2 tumour, 3 cyst |
| KiTS23 | ``kits23/dataset/`` | ``segmentation.nii.gz`` | 1 kidney, 2 tumour, 3 cyst |

Files are taken as they are: the KiTS headers (slice axis first, an unusual direction matrix) are kept, not
reoriented, so predictions come back on the challenge's own grid.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from nnunet_hlfd.conversion.core import ConversionError, ConversionSummary, DatasetSpec, SourceCase, convert_dataset
from nnunet_hlfd.conversion.tasks import task_labels

CASE_FOLDER = re.compile(r"case_\d{5}")
IMAGE_FILE = "imaging.nii.gz"


@dataclass(frozen=True)
class KiTSChallenge:
    name: str
    subfolder: str
    label_file: str
    source_values: tuple[int, ...]
    default_id: int
    # KiTS19 ships its test cases (imaging only, these ids) in the same folder; the later challenges keep them hidden
    test_ids: range | None
    get_imaging: str


KITS19 = KiTSChallenge(
    "KiTS19", "data", "segmentation.nii.gz", (0, 1, 2), 40, range(210, 300),
    "run `python -m starter_code.get_imaging` in the kits19 repository",
)  # fmt: skip
KITS21 = KiTSChallenge(
    "KiTS21", "data", "aggregated_MAJ_seg.nii.gz", (0, 1, 2, 3), 135, None,
    "run the kits21 repository's get_imaging script (see its README)",
)  # fmt: skip
KITS23 = KiTSChallenge(
    "KiTS2023", "dataset", "segmentation.nii.gz", (0, 1, 2, 3), 220, None,
    "run `kits23_download_data` from the kits23 repository",
)  # fmt: skip


def discover_kits(challenge: KiTSChallenge, input_folder: str | os.PathLike) -> tuple[list[SourceCase], list[str]]:
    """Cases and skipped entries of a KiTS download (the repository root or its case folder's parent)."""
    root = Path(input_folder)
    if (root / challenge.subfolder).is_dir():
        root = root / challenge.subfolder
    if not root.is_dir():
        raise ConversionError(f"{challenge.name} input folder {root} does not exist.")
    entries = sorted(root.iterdir())
    folders = [e for e in entries if e.is_dir() and CASE_FOLDER.fullmatch(e.name)]
    if not folders:
        raise ConversionError(
            f"No case_XXXXX folders in {root}: point at the {challenge.name} repository or its "
            f"'{challenge.subfolder}/' folder."
        )
    cases, problems = [], []
    for folder in folders:
        image, label = folder / IMAGE_FILE, folder / challenge.label_file
        if image.is_file() and label.is_file():
            cases.append(SourceCase(folder.name, image, label))
        elif image.is_file() and challenge.test_ids is not None and int(folder.name[5:]) in challenge.test_ids:
            cases.append(SourceCase(folder.name, image, None))  # a test case of the challenge: no label published
        elif image.is_file():
            problems.append(f"{folder.name}: {challenge.label_file} is missing; fix: download the case again")
        elif label.is_file():
            problems.append(f"{folder.name}: {IMAGE_FILE} is missing; fix: {challenge.get_imaging}")
        else:
            problems.append(f"{folder.name}: neither {IMAGE_FILE} nor {challenge.label_file}; fix: download it again")
    if problems:
        raise ConversionError(
            f"{len(problems)} {challenge.name} case(s) in {root} are incomplete; nothing was written:\n  "
            + "\n  ".join(problems)
        )
    return cases, [e.name for e in entries if e not in folders]


def convert_kits(
    challenge: KiTSChallenge,
    input_folder: str | os.PathLike,
    task: str = "organ_tumor",
    dataset_id: int | None = None,
    name: str | None = None,
    **options,
) -> ConversionSummary:
    """Convert a KiTS download; ``options`` go to :func:`convert_dataset` (output_root, overwrite, ...)."""
    labels = task_labels(task, "kidney", challenge.source_values)
    spec = DatasetSpec(
        dataset_id=challenge.default_id + labels.id_offset if dataset_id is None else dataset_id,
        name=challenge.name + labels.name_suffix if name is None else name,
        channel_names={0: "CT"},
        labels=labels.labels,
        source_label_values=challenge.source_values,
        label_map=labels.label_map,
        value_names=labels.value_names,
        regions_class_order=labels.regions_class_order,
        description=f"{challenge.name}, task {task}, converted by nnunet_hlfd",
        reference="https://kits-challenge.org",
        licence="CC BY-NC-SA 4.0",
        extra_dataset_json={"challenge": challenge.name, "task": task},
    )
    cases, skipped = discover_kits(challenge, input_folder)
    return convert_dataset(spec, cases, input_folder, skipped=skipped, **options)
