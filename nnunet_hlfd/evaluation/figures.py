"""``visualize``: figures for a paper or a clinician.

- :func:`plot_case_contours`: an image slice with the reference's and each model's contours, per case;
- :func:`plot_attention_maps`: the stage-wise attention maps (channel mean of F², as attention transfer
  and HLFD use them) of several models on the same case, e.g. teacher, student alone and HLFD student;
- :func:`read_training_log`, then :func:`nnunet_hlfd.plots.plot_training_curves`: distillation terms and nnU-Net's
  losses per epoch, several runs overlaid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from nnunet_hlfd.deploy.trained import case_files, load_predictor, preprocess
from nnunet_hlfd.errors import EvaluationError
from nnunet_hlfd.evaluation.evaluate import Task, find_dataset_json, read_task
from nnunet_hlfd.image_files import incomplete
from nnunet_hlfd.plots import STYLE, save_figure

CLASS_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def _window(image: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(image, (0.5, 99.5))
    return float(low), float(high if high > low else low + 1)


# ---- contours -------------------------------------------------------------------------------------------
def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    if not path.is_file():
        raise EvaluationError(f"{path} not found")
    if problem := incomplete(path):
        raise EvaluationError(f"{path} is {problem}: restore or recreate it")
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()[::-1]


def choose_slice(reference: np.ndarray) -> int:
    """The axial slice (array axis 0) with the most reference foreground; the middle one if there is none."""
    area = (reference > 0).reshape(reference.shape[0], -1).sum(1)
    return int(area.argmax()) if area.any() else reference.shape[0] // 2


def _contours(ax, label_map: np.ndarray, task: Task, style: str = "-", width: float = 1.6) -> None:
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    for colour, target in zip(CLASS_COLOURS, task.targets):
        mask = region_or_label_to_mask(label_map, target.value)
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linestyles=style, linewidths=width)


def plot_case_contours(
    images: Path,
    references: Path,
    predictions: dict[str, Path],
    output: Path,
    cases: list[str] | None = None,
    dataset_json: str | os.PathLike | None = None,
    slice_index: int | None = None,
) -> list[Path]:
    """One PNG per case: the image, the reference's contours, and each prediction's contours (the reference
    dashed beneath them), colours per label/region."""
    first = next(iter(predictions.values()))
    task = read_task(json.loads(find_dataset_json(first, references, dataset_json).read_text()))
    channels = case_files(images, task.file_ending)
    cases = cases or sorted(channels)
    unknown = [c for c in cases if c not in channels]
    if unknown:
        raise EvaluationError(f"case(s) {unknown} have no image in {images}")
    written = []
    for case in tqdm(cases, desc="contours", unit="case", disable=len(cases) < 2):
        image, spacing = _read(Path(channels[case][0]))
        reference, _ = _read(references / f"{case}{task.file_ending}")
        labelled = {name: _read(folder / f"{case}{task.file_ending}")[0] for name, folder in predictions.items()}
        for name, seg in [("reference", reference), *labelled.items()]:
            if seg.shape != image.shape:
                raise EvaluationError(f"{case}: {name} has shape {seg.shape}, the image {image.shape}")
        z = choose_slice(reference) if slice_index is None else slice_index
        if not 0 <= z < image.shape[0]:
            raise EvaluationError(f"{case}: slice {z} outside 0..{image.shape[0] - 1}")
        low, high = _window(image[z])
        panels = [("image", None), ("reference", reference), *labelled.items()]
        with plt.rc_context(STYLE):
            fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
            for ax, (name, seg) in zip(axes[0], panels):
                ax.imshow(image[z], cmap="gray", vmin=low, vmax=high, aspect=spacing[1] / spacing[2])
                if seg is not None and name != "reference":
                    _contours(ax, reference[z], task, style="--", width=0.9)
                if seg is not None:
                    _contours(ax, seg[z], task)
                ax.set_title(name)
                ax.axis("off")
            handles = [plt.Line2D([], [], color=c, label=t.name) for c, t in zip(CLASS_COLOURS, task.targets)] + [
                plt.Line2D([], [], color="k", linestyle="--", label="reference (under predictions)")
            ]
            fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
            fig.suptitle(f"{case}, slice {z}")
            fig.tight_layout(rect=(0, 0.08, 1, 1))
            written.append(save_figure(fig, output / f"{case}_contours.png"))
    return written


# ---- attention maps -------------------------------------------------------------------------------------
def _crop(volume: torch.Tensor, centre: list[int], size: list[int]) -> torch.Tensor:
    """A (C, *size) window of (C, *spatial) around ``centre``, zero-padded where the volume is smaller."""
    pads = []
    for dim_size, s in zip(reversed(volume.shape[1:]), reversed(size)):
        missing = max(0, s - dim_size)
        pads += [missing // 2, missing - missing // 2]
    volume = torch.nn.functional.pad(volume, pads)
    offsets = [p for p in pads[::2]][::-1]
    slices = []
    for c, s, n, off in zip(centre, size, volume.shape[1:], offsets):
        start = min(max(0, c + off - s // 2), n - s)
        slices.append(slice(start, start + s))
    return volume[(slice(None), *slices)]


def stage_attention(network: torch.nn.Module, patch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Channel mean of F² of every encoder and decoder stage for one (C, *patch) input, each resized to the
    patch and min-max scaled to [0, 1]."""
    from nnunet_hlfd.capture import unet_layout, unet_recorder
    from nnunet_hlfd.losses import attention_map
    from nnunet_hlfd.losses.resize import resize

    n = unet_layout(network).n_stages
    recorder = unet_recorder(network, range(n), range(n - 1))
    try:
        with torch.no_grad(), recorder.recording() as features:
            network(patch[None])
        maps = {}
        for name in recorder.names:
            m = resize(attention_map(features[name], p=2), patch.shape[1:])[0, 0].float()
            maps[name] = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    finally:
        recorder.remove()
    return maps


def plot_attention_maps(
    models: dict[str, Path],
    images: Path,
    case: str,
    output: Path,
    reference: Path | None = None,
    fold: int | str = 0,
    checkpoint: str = "checkpoint_final.pth",
) -> Path:
    """One figure: a row per model (input patch, then its encoder and decoder stages), the patch centred on
    the reference foreground when ``reference`` (a labels folder) is given."""
    rows = []
    for name, folder in tqdm(models.items(), desc="attention", unit="model"):
        predictor = load_predictor(Path(folder), fold, checkpoint, torch.device("cpu"))
        ending = predictor.dataset_json["file_ending"]
        files = case_files(images, ending)
        if case not in files:
            raise EvaluationError(f"case {case} has no image in {images} (cases: {', '.join(sorted(files)[:5])}...)")
        seg_file = str(reference / f"{case}{ending}") if reference is not None else None
        if seg_file is not None and not Path(seg_file).is_file():
            raise EvaluationError(f"{seg_file} not found")
        data, seg = preprocess(predictor, files[case], seg_file)
        foreground = np.argwhere(seg > 0) if seg is not None else np.zeros((0, data.ndim - 1))
        centre = (
            foreground.mean(0).round().astype(int).tolist() if len(foreground) else [s // 2 for s in data.shape[1:]]
        )
        patch_size = list(predictor.configuration_manager.patch_size)
        if len(patch_size) == 2:  # a 2d configuration: the slice through the centre
            data, centre = data[:, centre[0]], centre[1:]
        patch = _crop(data, centre, patch_size)
        rows.append((name, patch, stage_attention(predictor.network, patch)))
    names = rows[0][2].keys()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(rows), len(names) + 1, figsize=(1.9 * (len(names) + 1), 2.1 * len(rows)))
        axes = np.atleast_2d(axes)
        for r, (name, patch, maps) in enumerate(rows):
            middle = patch.shape[1] // 2 if patch.ndim == 4 else None
            image = patch[0, middle] if middle is not None else patch[0]
            axes[r, 0].imshow(image.numpy(), cmap="gray")
            axes[r, 0].set_ylabel(name)
            for c, (stage, m) in enumerate(maps.items(), start=1):
                shown = m[middle] if middle is not None else m
                axes[r, c].imshow(shown.numpy(), cmap="jet", vmin=0, vmax=1)
                if r == 0:
                    axes[r, c].set_title(stage.replace("encoder.", "enc ").replace("decoder.", "dec "))
            axes[r, 0].set_title("input" if r == 0 else "")
            for ax in axes[r]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(f"{case}: stage-wise attention (channel mean of F², per map scaled to [0, 1])")
        fig.tight_layout()
        return save_figure(fig, output / f"{case}_attention.png")


# ---- training curves ------------------------------------------------------------------------------------
def read_training_log(path: Path) -> dict[str, dict[str, list]]:
    """Per fold of a results folder (or for one fold folder): nnU-Net's per-epoch log from the newest checkpoint."""
    path = Path(path)
    folds = sorted(path.glob("fold_*")) if not path.name.startswith("fold_") else [path]
    logs = {}
    for fold in folds:
        checkpoint = next(
            (fold / n for n in ("checkpoint_final.pth", "checkpoint_latest.pth") if (fold / n).is_file()), None
        )
        if checkpoint is not None:
            logs[fold.name] = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    if not logs:
        raise EvaluationError(f"no checkpoint_final.pth or checkpoint_latest.pth under {path}")
    return logs
