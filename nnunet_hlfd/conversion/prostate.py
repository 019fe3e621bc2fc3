"""Multi-site prostate T2 MRI (the six-site set of Liu et al., MICCAI 2020: RUNMC, BMC, I2CVB/HCRUDB, UCL,
BIDMC, HK): one folder per site, each with ``CaseNN.nii.gz`` and ``CaseNN_segmentation.nii.gz`` (or
``CaseNN_Segmentation.nii.gz``; both spellings occur).

Case ids are ``<site>_CaseNN``; ``sites.json`` beside ``dataset.json`` maps each site to its cases, so teachers
can later be trained per site. Label: prostate 1. Some copies of the set store the mask as 0/255 or with more
than one foreground value; ``binarize=True`` (``--binarize``) maps every non-zero value to prostate.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nnunet_hlfd.conversion.core import ConversionError, ConversionSummary, DatasetSpec, SourceCase, convert_dataset

IMAGE = re.compile(r"(Case\d+)\.nii\.gz")
LABEL = re.compile(r"(Case\d+)_[Ss]egmentation\.nii\.gz")
SITE = re.compile(r"[A-Za-z0-9-]+")
DEFAULT_ID = 170


def discover_multisite_prostate(input_folder: str | os.PathLike) -> tuple[list[SourceCase], list[str], dict]:
    root = Path(input_folder)
    if not root.is_dir():
        raise ConversionError(f"Prostate input folder {root} does not exist.")
    sites = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    cases, skipped, problems, site_map = [], [], [], {}
    for site in sites:
        if not SITE.fullmatch(site.name):
            problems.append(f"site folder {site.name!r}: use letters, digits and '-' only; fix: rename it")
            continue
        images, labels = {}, {}
        for f in sorted(site.iterdir()):
            if m := IMAGE.fullmatch(f.name):
                images[m.group(1)] = f
            elif m := LABEL.fullmatch(f.name):
                if m.group(1) in labels:
                    problems.append(f"{site.name}/{m.group(1)}: both label spellings exist; fix: keep one")
                labels[m.group(1)] = f
            else:
                skipped.append(f"{site.name}/{f.name}")
        problems += [f"{site.name}/{c}: no {c}_segmentation.nii.gz" for c in sorted(set(images) - set(labels))]
        problems += [f"{site.name}/{c}: no image {c}.nii.gz" for c in sorted(set(labels) - set(images))]
        ids = []
        for c in sorted(set(images) & set(labels)):
            ids.append(f"{site.name}_{c}")
            cases.append(SourceCase(ids[-1], images[c], labels[c]))
        if ids:
            site_map[site.name] = ids
    if problems:
        raise ConversionError(
            "The multi-site prostate folder is incomplete; nothing was written:\n  " + "\n  ".join(problems)
        )
    if not cases:
        raise ConversionError(
            f"No site folders with CaseNN.nii.gz + CaseNN_segmentation.nii.gz under {root}: point at the folder "
            "that holds one subfolder per site."
        )
    return cases, skipped, site_map


def convert_multisite_prostate(
    input_folder: str | os.PathLike,
    dataset_id: int | None = None,
    name: str | None = None,
    binarize: bool = False,
    **options,
) -> ConversionSummary:
    cases, skipped, site_map = discover_multisite_prostate(input_folder)
    values = tuple(range(256)) if binarize else (0, 1)
    spec = DatasetSpec(
        dataset_id=DEFAULT_ID if dataset_id is None else dataset_id,
        name="ProstateMultiSite" if name is None else name,
        channel_names={0: "T2"},
        labels={"background": 0, "prostate": 1},
        source_label_values=values,
        label_map={v: int(v > 0) for v in values} if binarize else None,
        description="Multi-site prostate T2 MRI, converted by nnunet_hlfd; sites in sites.json",
        reference="Liu et al., MS-Net / SAML (MICCAI 2020)",
        label_value_hint="; if this site stores the prostate as 255 or with zonal labels, pass --binarize",
        extra_dataset_json={"sites": sorted(site_map), "binarize": binarize},
        extra_files={"sites.json": site_map},
    )
    return convert_dataset(spec, cases, input_folder, skipped=skipped, **options)
