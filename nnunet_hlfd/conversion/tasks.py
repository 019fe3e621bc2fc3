"""The two tasks of the HLFD paper for an organ+tumour challenge, as nnU-Net labels.

- ``organ_tumor``: the challenge's own labels (KiTS21/23: its hierarchical regions, as nnU-Net's KiTS23
  conversion declares them).
- ``tumor``: HLFD's binary "tumor" task, tumour = 1 and everything else background. Only the tumour label
  counts; the authors' ``mask >> 1`` would also turn a KiTS21/23 cyst (3) into tumour, which we do not.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS = ("organ_tumor", "tumor")
TUMOR_TASK_ID_OFFSET = 500  # default id of the tumour-only dataset: the organ+tumour default + 500
TUMOR = 2  # the tumour label in KiTS and LiTS

# KiTS "HEC" regions (kits23 repository, configuration/labels.py; nnU-Net's Dataset220_KiTS2023):
# kidney and masses, masses (tumour + cyst), tumour; painted kidney, then cyst, then tumour.
KITS_HEC_REGIONS = {"background": 0, "kidney": (1, 2, 3), "masses": (2, 3), "tumor": 2}
KITS_HEC_REGIONS_CLASS_ORDER = (1, 3, 2)


@dataclass(frozen=True)
class TaskLabels:
    labels: dict[str, int | tuple[int, ...]]
    label_map: dict[int, int] | None
    regions_class_order: tuple[int, ...] | None
    name_suffix: str
    id_offset: int
    value_names: dict[int, str]


def task_labels(task: str, organ: str, source_values: tuple[int, ...]) -> TaskLabels:
    """nnU-Net labels for ``task`` on a challenge with labels background 0, organ 1, tumour 2 (and cyst 3)."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}: choose one of {TASKS}.")
    if task == "tumor":
        tumor_only = {v: int(v == TUMOR) for v in source_values}
        names = {0: "background", 1: "tumor"}
        return TaskLabels({"background": 0, "tumor": 1}, tumor_only, None, "Tumor", TUMOR_TASK_ID_OFFSET, names)
    names = {0: "background", 1: organ, 2: "tumor"}
    if 3 in source_values:
        names[3] = "cyst"
        return TaskLabels(dict(KITS_HEC_REGIONS), None, KITS_HEC_REGIONS_CLASS_ORDER, "", 0, names)
    return TaskLabels({"background": 0, organ: 1, "tumor": 2}, None, None, "", 0, names)
