"""Trained nnU-Net models, loaded the way ``nnUNetv2_predict`` loads them, and their preprocessing."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import torch

from nnunet_hlfd.errors import EvaluationError
from nnunet_hlfd.ext_path import EXT_TRAINER_DIR
from nnunet_hlfd.image_files import incomplete


def _find_our_trainers() -> None:
    """nnU-Net finds the trainer class of a results folder by name (to build its network): make sure it also
    looks among this package's trainers, as ``nnUNetv2_predict`` does after the set-up line."""
    folders = [f for f in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if f]
    if EXT_TRAINER_DIR not in folders:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([*folders, EXT_TRAINER_DIR])


def load_predictor(folder: Path, fold: int | str | tuple, checkpoint: str, device: torch.device):
    """An ``nnUNetPredictor`` for one fold (or a tuple of folds: their ensemble) of a results folder or deploy bundle
    (no mirroring, no progress bars)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = Path(folder)
    if not (folder / "plans.json").is_file() or not (folder / "dataset.json").is_file():
        raise EvaluationError(
            f"{folder} is not an nnU-Net results folder (no plans.json/dataset.json): pass "
            "nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION"
        )
    folds = tuple(fold) if isinstance(fold, (tuple, list)) else (fold,)
    for fold in folds:
        if not (folder / f"fold_{fold}" / checkpoint).is_file():
            raise EvaluationError(
                f"{folder / f'fold_{fold}' / checkpoint} not found: is fold {fold} trained (-f, -chk)?"
            )
    _find_our_trainers()
    folds = tuple(int(f) if str(f).isdigit() else f for f in folds)
    # nnU-Net narrates its trainer search folder by folder, and warns on every CPU predictor: keep it quiet
    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_mirroring=False,
            perform_everything_on_device=device.type == "cuda",
            device=device,
            allow_tqdm=False,
        )
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds, checkpoint_name=checkpoint)
    return predictor


def _require_folder(images: Path) -> None:
    if not Path(images).is_dir():
        raise EvaluationError(f"images folder {images} does not exist")


def case_files(images: Path, file_ending: str) -> dict[str, list[str]]:
    """case id -> its channel files (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...)."""
    from nnunetv2.utilities.utils import (
        create_lists_from_splitted_dataset_folder,
        get_identifiers_from_splitted_dataset_folder,
    )

    _require_folder(images)
    ids = get_identifiers_from_splitted_dataset_folder(str(images), file_ending)
    if not len(ids):
        raise EvaluationError(f"no images ending in _0000{file_ending} in {images}")
    return dict(zip(ids, create_lists_from_splitted_dataset_folder(str(images), file_ending, ids)))


CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")


def checked_input_cases(images: Path, dataset_json: dict) -> dict[str, list[str]]:
    """:func:`case_files`, after checking what nnU-Net's predictor would trip over (an ``IndexError`` or "Background
    workers died") or segment wrongly with exit code 0: files that are no case's channel (a prediction written into
    the input folder), a case with another number of channels than the model's, a file that is not whole."""
    file_ending = dataset_json["file_ending"]
    _require_folder(images)
    named = (p.name for p in Path(images).glob(f"*{file_ending}"))
    strays = sorted(name for name in named if not CHANNEL_SUFFIX.search(name[: -len(file_ending)]))
    if strays:
        raise EvaluationError(
            f"{images} holds {', '.join(strays[:3])}{' ...' if len(strays) > 3 else ''}, not named CASE_XXXX"
            f"{file_ending} (a channel of a case): predictions written into the input folder? Move them out"
        )
    cases = case_files(images, file_ending)
    channels = list(dataset_json["channel_names"].values())
    wanted = [f"_{i:04d}{file_ending}" for i in range(len(channels))]
    for case, files in cases.items():
        got = sorted(Path(f).name[len(case) :] for f in files)
        if got != wanted:
            raise EvaluationError(
                f"case {case} in {images} has the channel files {got}, the model takes {len(channels)} channel(s) "
                f"{channels} as {wanted}: give each case exactly these files"
            )
    broken = [f"{f} is {problem}" for files in cases.values() for f in files if (problem := incomplete(Path(f)))]
    if broken:
        raise EvaluationError("; ".join(broken) + ": restore or recreate the file(s)")
    return cases


def preprocess(
    predictor, image_files: list[str], seg_file: str | None = None
) -> tuple[torch.Tensor, np.ndarray | None]:
    """A case preprocessed as this model's plans say: (C, *spatial) float tensor, and the label map if given.
    A file that is not whole is refused (nnU-Net's reader would fill its missing part with zeros)."""
    data, seg, _ = preprocess_with_properties(predictor, image_files, seg_file)
    return data, seg


def preprocess_with_properties(
    predictor, image_files: list[str], seg_file: str | None = None
) -> tuple[torch.Tensor, np.ndarray | None, dict]:
    """:func:`preprocess`, plus the properties nnU-Net's export needs to resample a prediction back."""
    files = [Path(f) for f in [*image_files, *([seg_file] if seg_file else [])]]
    broken = [f"{path} is {problem}" for path in files if (problem := incomplete(path))]
    if broken:
        raise EvaluationError("; ".join(broken) + ": restore or recreate the file(s)")
    configuration = predictor.configuration_manager
    preprocessor = configuration.preprocessor_class(verbose=False)
    data, seg, properties = preprocessor.run_case(
        image_files, seg_file, predictor.plans_manager, configuration, predictor.dataset_json
    )
    return torch.from_numpy(np.ascontiguousarray(data)).float(), (seg[0] if seg_file else None), properties
