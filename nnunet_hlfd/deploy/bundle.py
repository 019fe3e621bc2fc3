"""A deploy bundle: what a trained nnU-Net model needs for prediction, and nothing else.

::

    BUNDLE/
      bundle.json                  manifest: source, trainer, configuration, folds, checks, the sha256 of every file
      plans.json  dataset.json     as in the results folder (nnU-Net's preprocessing and export read them)
      fold_X/network.onnx          the network without deep-supervision heads; dynamic batch, the plans' patch size
      fold_X/checkpoint_final.pth  weights only (no optimizer, no distillation adapters, no logs)
      fold_X/network_int8.onnx     with --quantize int8: the network quantized (QDQ), calibrated on training cases
      fold_X/network_fp16.onnx     with --quantize fp16: float16 weights and activations (for GPUs);
                                   ``predict`` runs either (``--float``: the float one)

The folder is also an nnU-Net model folder: ``nnUNetv2_predict_from_modelfolder -m BUNDLE -f X`` loads it. When the
trainer builds nnU-Net's network from the plans (every trainer of this package, and nnU-Net's own), the checkpoint
names ``nnUNetTrainer``, so that prediction from the bundle needs neither this package nor ``nnUNet_extTrainer``.

Each fold's ONNX network is run once on a random batch of two patches at export and compared with PyTorch; an
export that differs beyond :data:`EXPORT_TOLERANCE` is refused, so a bundle that exists is one that was checked.
Reading a bundle checks every file it uses against the manifest's sha256 (an edited intensity mean in plans.json
changes the segmentations as surely as an edited network).

``--overwrite`` replaces only a bundle: a folder whose manifest lists every file in it, which neither is nor holds
the model being exported or the current directory. Anything else (a results folder, ``$nnUNet_results``, a user's
folder, a file) is refused with what was found there, and nothing is touched.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from nnunet_hlfd.deploy.quantize import (
    DEFAULT_CALIBRATION_CASES,
    INT8,
    NETWORK_FILES,
    QUANTIZATIONS,
    agreement,
    calibration_cases,
    calibration_tiles,
    convert_fp16,
    cross_validation_cases,
    default_calibration_images,
    quantize_int8,
    random_tiles,
)
from nnunet_hlfd.errors import DeployError
from nnunet_hlfd.files import file_sha256, output_folder

MANIFEST = "bundle.json"
ONNX_FILE = "network.onnx"
CHECKPOINT = "checkpoint_final.pth"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 18
FORMAT = 2  # 2: every file hashed in the manifest's "files"; 1 (before): only the ONNX networks
# |onnx - torch| <= atol + rtol * |torch| on every logit of the check batch (float32 kernels differ by ~1e-5)
EXPORT_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}
STOCK_TRAINER = "nnUNetTrainer"


def fold_name(fold: int | str) -> str:
    return f"fold_{fold}"


def parse_folds(folds: list[str] | tuple) -> list[int | str]:
    parsed = []
    for fold in folds:
        if str(fold) == "all":
            parsed.append("all")
        elif str(fold).isdigit():
            parsed.append(int(fold))
        else:
            raise DeployError(f"fold {fold!r}: a fold is a number (0, 1, ...) or 'all'")
    if len(set(parsed)) != len(parsed):
        raise DeployError(f"folds {list(folds)}: a fold is given twice")
    return parsed


def finished_checkpoints(folder: Path, folds: list[int | str], checkpoint: str = CHECKPOINT) -> dict:
    """fold -> its checkpoint file, after checking that ``folder`` is a finished nnU-Net model for these folds."""
    folder = Path(folder)
    missing = [name for name in ("plans.json", "dataset.json") if not (folder / name).is_file()]
    if missing:
        raise DeployError(
            f"{folder} is not an nnU-Net results folder (no {' or '.join(missing)}): pass the model folder "
            "nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION"
        )
    files = {}
    for fold in folds:
        path = folder / fold_name(fold) / checkpoint
        if not path.is_file():
            present = sorted(p.name for p in (folder / fold_name(fold)).glob("checkpoint_*.pth"))
            if not present:
                raise DeployError(
                    f"{path.parent} has no checkpoint: fold {fold} was not trained (train it, or pick -f)"
                )
            raise DeployError(
                f"{path} not found: fold {fold} has not finished training (it has {', '.join(present)}). Finish it "
                f"with nnUNetv2_train ... {fold} --c, or export another checkpoint with -chk {present[-1]}"
            )
        files[fold] = path
    return files


def _load_checkpoint(path: Path) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which one
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DeployError(
            f"{path} cannot be read as a PyTorch checkpoint ({reason}): restore it, train the fold again, or "
            "export another checkpoint with -chk"
        ) from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint or "trainer_name" not in checkpoint:
        raise DeployError(f"{path} is not an nnU-Net checkpoint (no network_weights/trainer_name)")
    return checkpoint


def _weights_only(checkpoint: dict, trainer_name: str) -> dict:
    """What ``nnUNetPredictor.initialize_from_trained_model_folder`` reads, and nothing else."""
    return {
        "network_weights": checkpoint["network_weights"],
        "init_args": {
            "configuration": checkpoint["init_args"]["configuration"],
            "fold": checkpoint["init_args"]["fold"],
        },
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": checkpoint.get("inference_allowed_mirroring_axes"),
        "current_epoch": checkpoint.get("current_epoch"),
    }


def _builds_stock_network(trainer_name: str) -> bool:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    return trainer_class.build_network_architecture is nnUNetTrainer.build_network_architecture


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def export_onnx(network: torch.nn.Module, input_shape: tuple[int, ...], path: Path) -> str:
    """The network (deep supervision off, eval mode) as ONNX with a dynamic batch axis; returns the exporter used.

    PyTorch's ``torch.export``-based exporter when onnxscript is installed, else its TorchScript-based one (the GPU
    check's machine has no onnxscript); both give the same graph for nnU-Net's U-Nets."""
    network.eval()
    example = torch.randn((2, *input_shape[1:]))  # batch 2: a batch of 1 could be specialised as a constant
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes, once per export
        try:
            import onnxscript  # noqa: F401

            dynamo = True
        except ImportError:
            dynamo = False
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(
                network, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=OPSET, dynamo=True, dynamic_shapes=({0: batch},), external_data=False, verbose=False,
            )  # fmt: skip
        else:
            torch.onnx.export(
                network, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=OPSET, dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )  # fmt: skip
    return "torch.export" if dynamo else "torchscript"


def check_onnx(network: torch.nn.Module, path: Path, input_shape: tuple[int, ...]) -> float:
    """Largest |ONNX Runtime − PyTorch| over the logits of a random batch of two patches; refused beyond tolerance."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn((2, *input_shape[1:]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network(x).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise DeployError(f"the ONNX network of {path.parent.name} returns {got.shape}, PyTorch {expected.shape}")
    difference = np.abs(got - expected)
    if not np.all(difference <= EXPORT_TOLERANCE["atol"] + EXPORT_TOLERANCE["rtol"] * np.abs(expected)):
        raise DeployError(
            f"the ONNX network of {path.parent.name} differs from PyTorch by up to {difference.max():.3g} on random "
            f"input (allowed {EXPORT_TOLERANCE}): the export is wrong for this network; nothing was written"
        )
    return float(difference.max())


def bundle_entries(manifest: dict) -> set[str]:
    """Every path a bundle holds, relative to its folder (files and their folders), as its manifest lists them."""
    files = manifest.get("files") or {  # format 1 listed no files: what it always wrote
        name: ""
        for fold in manifest["folds"]
        for name in (f"{fold_name(fold)}/{ONNX_FILE}", f"{fold_name(fold)}/{CHECKPOINT}")
    } | {"plans.json": "", "dataset.json": ""}
    folders = {str(Path(name).parent) for name in files} - {"."}
    return {MANIFEST, *files, *folders}


def _found_there(path: Path) -> str:
    """What a folder that is not a bundle holds, in words, for the refusal."""
    nnunet_folders = {os.environ.get(v) for v in ("nnUNet_results", "nnUNet_raw", "nnUNet_preprocessed")} - {None}
    if any(path.resolve() == Path(f).resolve() for f in nnunet_folders):
        return "it is one of nnU-Net's folders (nnUNet_results, nnUNet_raw or nnUNet_preprocessed)"
    if (path / "plans.json").is_file() and any(path.glob("fold_*")):
        return "it is an nnU-Net results folder (plans.json and fold_* folders, no bundle.json)"
    entries = sorted(p.name for p in path.iterdir())
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    return f"it holds no {MANIFEST} but {shown}" if entries else f"it is an empty folder without {MANIFEST}"


def check_replaceable(output: Path, model: Path) -> None:
    """``--overwrite`` replaces a bundle written by export and nothing else: refuse any other ``output``."""
    output_abs, model_abs, here = output.resolve(), model.resolve(), Path.cwd().resolve()
    refuse = f"--overwrite replaces only a bundle written by nnunet_hlfd export, and {output} "
    if output.is_symlink() or not output.is_dir():
        raise DeployError(refuse + "is " + ("a link" if output.is_symlink() else "a file") + ": choose another -o")
    if output_abs == here or output_abs in here.parents:
        raise DeployError(refuse + f"is (or holds) the current directory {here}: choose another -o")
    if output_abs == model_abs or output_abs in model_abs.parents:
        raise DeployError(refuse + f"holds the model being exported ({model}): choose another -o")
    if not (output / MANIFEST).is_file():
        raise DeployError(refuse + f"is not one: {_found_there(output)}. Choose another -o; nothing was written")
    manifest = read_manifest(output)
    unexpected = sorted(
        str(p.relative_to(output))
        for p in output.rglob("*")
        if str(p.relative_to(output)) not in bundle_entries(manifest)
    )
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        raise DeployError(
            refuse + f"holds files a bundle does not ({shown}): move them out or choose another -o; nothing was written"
        )


def _refuse_before_writing(
    folder: Path, folds: list, output: Path, checkpoint: str, overwrite: bool, quantization: Quantization | None
) -> dict:
    """fold -> checkpoint, after every check that needs no network (each checkpoint read whole)."""
    if quantization is not None and quantization.kind not in QUANTIZATIONS:
        raise DeployError(f"--quantize {quantization.kind}: choose among {list(QUANTIZATIONS)}")
    if not folds:
        raise DeployError("no fold given: pass -f 0 (or several, e.g. -f 0 1 2 3 4, for an ensemble)")
    files = finished_checkpoints(folder, folds, checkpoint)
    if output.resolve() == folder.resolve() or folder.resolve() in output.resolve().parents:
        raise DeployError(f"-o {output} lies inside the results folder {folder}: write the bundle elsewhere")
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise DeployError(f"{output} exists: choose another -o, or pass --overwrite to replace a bundle there")
        check_replaceable(output, folder)
    output_folder(output)  # not below a file
    for path in files.values():
        _load_checkpoint(path)  # before nnU-Net's loader reads it: a truncated file is refused with its name
    if quantization is not None and quantization.kind != INT8:
        if quantization.images is not None or quantization.case_count != DEFAULT_CALIBRATION_CASES:
            raise DeployError(f"--quantize {quantization.kind} needs no calibration: drop --calibration_images/_cases")
    elif quantization is not None:
        dataset_json = json.loads((folder / "dataset.json").read_text())
        if quantization.images is None:  # the dataset's imagesTr, of the cases its cross-validation folds hold
            images, allowed = default_calibration_images(folder), cross_validation_cases(folder)
        else:
            images, allowed = quantization.images, None
        quantization.cases = calibration_cases(images, dataset_json, quantization.case_count, allowed)
        quantization.images = images
    return files


@dataclass
class Quantization:
    """What ``--quantize`` asks for: the kind, and the training images it is calibrated on (``None``: the dataset's
    imagesTr in nnUNet_raw); ``cases`` is filled in by the checks before anything is written."""

    kind: str = INT8
    images: Path | None = None
    case_count: int = DEFAULT_CALIBRATION_CASES
    cases: dict = field(default_factory=dict)


def _export_fold(network: torch.nn.Module, path: Path, fold_folder: Path, input_shape: tuple, trainer: str) -> dict:
    """One fold's weights-only checkpoint and checked ONNX network; returns its record for the manifest."""
    full = _load_checkpoint(path)
    network.load_state_dict(full["network_weights"])
    fold_folder.mkdir()
    torch.save(_weights_only(full, trainer), fold_folder / CHECKPOINT)
    exporter = export_onnx(network, input_shape, fold_folder / ONNX_FILE)
    return {
        "source_checkpoint": str(path.resolve()),
        "configuration": full["init_args"]["configuration"],
        "epochs": full.get("current_epoch"),
        "exporter": exporter,
        "onnx_vs_pytorch_max_abs": check_onnx(network, fold_folder / ONNX_FILE, input_shape),
    }


def export_bundle(
    folder: Path,
    folds: list[int | str],
    output: Path,
    checkpoint: str = CHECKPOINT,
    overwrite: bool = False,
    log=print,
    quantization: Quantization | None = None,
) -> dict:
    """Writes the bundle of ``folds`` of the results ``folder`` to ``output`` (whole or not at all); returns its
    manifest. With ``quantization``, each fold also gets its int8 network."""
    import onnx
    import onnxruntime

    from nnunet_hlfd.adapters import count_parameters
    from nnunet_hlfd.deploy.trained import load_predictor

    folder, output = Path(folder), Path(output)
    files = _refuse_before_writing(folder, folds, output, checkpoint, overwrite, quantization)
    predictor = load_predictor(folder, folds[0], checkpoint, torch.device("cpu"))
    previous_stage = predictor.configuration_manager.previous_stage_name
    if previous_stage is not None:
        raise DeployError(
            f"{folder} is a cascade stage (it needs the predictions of {previous_stage}): predict with nnU-Net's "
            "commands; a bundle holds a single-stage model"
        )
    patch = [int(p) for p in predictor.configuration_manager.patch_size]
    channels = len(predictor.dataset_json["channel_names"])
    trainer = predictor.trainer_name
    checkpoint_trainer = STOCK_TRAINER if _builds_stock_network(trainer) else trainer

    output.parent.mkdir(parents=True, exist_ok=True)
    # a fresh folder of our own beside the target (same file system, so the final rename is atomic)
    partial = Path(tempfile.mkdtemp(prefix=f".partial.{output.name}.", dir=output.parent))
    try:
        shutil.copy2(folder / "plans.json", partial / "plans.json")
        shutil.copy2(folder / "dataset.json", partial / "dataset.json")
        records = {}
        for fold, path in files.items():
            log(f"fold {fold}: exporting {path}")
            records[str(fold)] = record = _export_fold(
                predictor.network, path, partial / fold_name(fold), (1, channels, *patch), checkpoint_trainer
            )
            log(f"fold {fold}: ONNX Runtime vs PyTorch on a random batch: max |difference| "
                f"{record['onnx_vs_pytorch_max_abs']:.2g}")  # fmt: skip
        quantized = None
        if quantization is not None:
            quantized = _quantize_folds(predictor, quantization, partial, records, (1, channels, *patch), log)
        hashed = sorted(str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": str(folder.resolve()),
            "trainer": trainer,
            "checkpoint_trainer": checkpoint_trainer,
            "configuration": records[str(folds[0])]["configuration"],
            "folds": list(records),
            "input_shape": ["batch", channels, *patch],
            "output_channels": predictor.label_manager.num_segmentation_heads,
            "inference_allowed_mirroring_axes": predictor.allowed_mirroring_axes,
            "parameters": count_parameters(predictor.network),
            "opset": OPSET,
            "export_tolerance": EXPORT_TOLERANCE,
            "quantization": quantized,
            "fold_records": records,
            "files": {name: file_sha256(partial / name) for name in hashed},
            "versions": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "nnunetv2": _version("nnunetv2"),
            },
            "results_folder_bytes": sum(folder_bytes(folder / fold_name(f)) for f in files),
            "bundle_bytes": folder_bytes(partial),
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _move_into_place(partial, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # ours; gone already when the bundle is in place
    return manifest


def _quantize_folds(
    predictor, quantization: Quantization, partial: Path, records: dict, input_shape: tuple, log
) -> dict:
    """Each fold's reduced-precision network beside its float one; the agreement of the two goes into the fold's
    record. Returns the manifest's ``quantization``."""
    kind, file = quantization.kind, NETWORK_FILES[quantization.kind]
    if kind == INT8:
        log(f"int8: calibrating on {len(quantization.cases)} case(s) of {quantization.images}")
        tiles, where = calibration_tiles(predictor, quantization.cases), "calibration tiles"
    else:
        tiles, where = random_tiles(input_shape), "random patches"
    settings = {}
    for fold, record in records.items():
        float_onnx, reduced_onnx = partial / fold_name(fold) / ONNX_FILE, partial / fold_name(fold) / file
        if kind == INT8:
            settings = quantize_int8(float_onnx, reduced_onnx, tiles, INPUT_NAME)
        else:
            settings = convert_fp16(float_onnx, reduced_onnx)
        record[f"{kind}_vs_float"] = agreed = agreement(float_onnx, reduced_onnx, tiles, INPUT_NAME)
        log(
            f"fold {fold}: {kind} vs float on {len(tiles)} {where}: same class in {agreed['argmax_agreement']:.2%} of "
            f"voxels, largest logit change {agreed['max_abs_logit_change']:.2g}"
        )
    calibration = {}
    if kind == INT8:
        calibration = {
            "calibration_images": str(Path(quantization.images).resolve()),
            "calibration_cases": sorted(quantization.cases),
            "calibration_tiles": len(tiles),
        }
    return {**settings, "network_file": file, **calibration}


def _move_into_place(partial: Path, output: Path) -> None:
    """``partial`` renamed to ``output``; a bundle already there (checked by :func:`check_replaceable`) is moved
    aside first and removed only once the new one is in place."""
    if not output.exists():
        partial.rename(output)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".replaced.{output.name}.", dir=output.parent))
    output.rename(aside / output.name)
    try:
        partial.rename(output)
    except OSError:
        (aside / output.name).rename(output)
        raise
    finally:
        if output.exists():
            shutil.rmtree(aside, ignore_errors=True)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def read_manifest(bundle: Path) -> dict:
    """The manifest of a bundle, refused with the fix when it is missing, not JSON or not a bundle manifest."""
    bundle = Path(bundle)
    if not (bundle / MANIFEST).is_file():
        hint = (
            " (it is a results folder: export it first with nnunet_hlfd export)"
            if (bundle / "plans.json").is_file()
            else ""
        )
        raise DeployError(f"{bundle} is not a deploy bundle: no {MANIFEST}{hint}")
    try:
        manifest = json.loads((bundle / MANIFEST).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DeployError(f"{bundle / MANIFEST} is not JSON ({error}): export the bundle again") from None
    needed = {"format", "folds", "configuration", "checkpoint_trainer", "inference_allowed_mirroring_axes"}
    if not isinstance(manifest, dict) or needed - set(manifest):
        raise DeployError(
            f"{bundle / MANIFEST} is not a bundle manifest (it lacks {sorted(needed - set(manifest or {}))}): "
            "export the bundle again"
        )
    return manifest


def read_bundle(bundle: Path, folds: list[int | str] | None = None) -> dict:
    """The manifest of a bundle, after checking that plans.json, dataset.json and the files of ``folds`` (default:
    all) are the exported ones (sha256)."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if manifest["format"] < FORMAT or not isinstance(manifest.get("files"), dict):
        raise DeployError(
            f"{bundle} was written by an older nnunet_hlfd export that did not hash plans.json and dataset.json: "
            "export it again from its results folder"
        )
    chosen = [str(f) for f in parse_folds(folds)] if folds else manifest["folds"]
    unknown = sorted(set(chosen) - set(manifest["folds"]))
    if unknown:
        raise DeployError(f"{bundle} holds folds {manifest['folds']}, not {unknown}: pick -f among them")
    used = [name for name in manifest["files"] if "/" not in name or name.split("/")[0] in map(fold_name, chosen)]
    for name in used:
        path = bundle / name
        if not path.is_file():
            raise DeployError(f"{path} is missing: the bundle is incomplete; export it again")
        if file_sha256(path) != manifest["files"][name]:
            raise DeployError(
                f"{path} is not the exported file (its sha256 differs from {MANIFEST}'s): it was edited or damaged "
                "after export; export the bundle again"
            )
    manifest["chosen_folds"] = chosen
    return manifest
