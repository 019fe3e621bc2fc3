"""``efficiency``: what a model costs, measured for several trained models side by side in one process.

Per model (an nnU-Net results folder, e.g. the teacher's and the student's) and device:

- parameters of the exported network (adapters are training-only and not part of it);
- multiply-adds of one forward pass over one patch, counted by PyTorch's own ``FlopCounterMode``
  (convolutions, transposed convolutions and matrix products; MACs = FLOPs / 2);
- sliding-window inference time per case (nnU-Net's predictor, no mirroring, on the preprocessed case) and
  peak memory during it: on a GPU, ``torch.cuda.max_memory_allocated``; on the CPU, the process's peak
  resident set size (VmHWM, reset before each measurement), also given as the growth over the resident size
  just before.

Models are measured in turns (teacher, student, teacher, student, ...) so that drifting machine load hits
every model alike; times are medians over the repeats.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nnunet_hlfd.adapters import count_parameters
from nnunet_hlfd.errors import EvaluationError
from nnunet_hlfd.evaluation.trained import case_files, load_predictor, preprocess
from nnunet_hlfd.files import write_text

MARKDOWN_FILE = "efficiency.md"
JSON_FILE = "efficiency.json"


@dataclass
class Model:
    name: str
    folder: Path
    predictor: object  # nnUNetPredictor
    cases: list[torch.Tensor]  # preprocessed, (C, *spatial)


def count_macs(network: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device) -> int:
    """Multiply-adds of one forward pass on a zero tensor of ``input_shape`` (batch included)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(torch.zeros(input_shape, device=device))
    return counter.get_total_flops() // 2


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux lets a process reset its peak resident size (VmHWM) by writing 5 to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def prepare_cases(predictor, images: Path | None, num_cases: int) -> list[torch.Tensor]:
    """The first ``num_cases`` cases of ``images``, preprocessed for this model, or, without images, one random
    case of the configuration's median image size (sliding-window time depends on the shape, not the content)."""
    if images is None:
        channels = len(predictor.dataset_json["channel_names"])
        shape = [int(round(s)) for s in predictor.configuration_manager.median_image_size_in_voxels]
        return [torch.randn((channels, *shape), generator=torch.Generator().manual_seed(0))]
    files = list(case_files(images, predictor.dataset_json["file_ending"]).values())[:num_cases]
    return [preprocess(predictor, f)[0] for f in files]


def _measure(model: Model, case: torch.Tensor, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = _rss_kib("VmRSS")
    reset = _reset_peak_rss()
    start = time.perf_counter()
    with torch.no_grad():
        model.predictor.predict_sliding_window_return_logits(case)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        return {"seconds": seconds, "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    peak = _rss_kib("VmHWM") if reset else None
    return {
        "seconds": seconds,
        "peak_mib": peak / 1024 if peak else None,
        "growth_mib": (peak - before) / 1024 if peak and before else None,
    }


def measure_efficiency(
    folders: dict[str, Path],
    devices: list[str],
    fold: int | str = 0,
    checkpoint: str = "checkpoint_final.pth",
    images: Path | None = None,
    num_cases: int = 1,
    repeats: int = 3,
    progress: bool = True,
) -> list[dict]:
    """One row per device and model."""
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EvaluationError("--device cuda: no CUDA GPU is visible to PyTorch here")
        models = []
        for name, folder in folders.items():
            predictor = load_predictor(Path(folder), fold, checkpoint, device)
            models.append(Model(name, Path(folder), predictor, prepare_cases(predictor, images, num_cases)))
        for model in models:  # warm-up (cuDNN autotuning, allocator, first-call overheads): not timed
            _measure(model, model.cases[0], device)
        times = {m.name: [[] for _ in m.cases] for m in models}
        peaks = {m.name: [] for m in models}
        total = repeats * sum(len(m.cases) for m in models)
        with tqdm(total=total, desc=f"efficiency ({device_name})", unit="case", disable=not progress) as bar:
            for _ in range(repeats):
                for model in models:
                    for i, case in enumerate(model.cases):
                        measured = _measure(model, case, device)
                        times[model.name][i].append(measured["seconds"])
                        peaks[model.name].append(measured)
                        bar.update()
        for model in models:
            network = model.predictor.network
            patch = tuple(model.predictor.configuration_manager.patch_size)
            per_case = [float(np.median(t)) for t in times[model.name]]
            rows.append(
                {
                    "model": model.name,
                    "folder": str(model.folder),
                    "device": device_name,
                    "parameters": count_parameters(network),
                    "patch_size": list(patch),
                    "macs_per_patch": count_macs(network, (1, model.cases[0].shape[0], *patch), device),
                    "case_shapes": [list(c.shape[1:]) for c in model.cases],
                    "seconds_per_case": float(np.mean(per_case)),
                    "peak_memory_mib": _max(p["peak_mib"] for p in peaks[model.name]),
                    "memory_growth_mib": _max(p.get("growth_mib") for p in peaks[model.name]),
                }
            )
        del models
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _max(values) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def hardware(devices: list[str]) -> str:
    parts = [
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}"
    ]
    if "cuda" in devices and torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    return "; ".join(parts) + f"; torch {torch.__version__}"


def format_markdown(rows: list[dict], repeats: int, hardware_line: str) -> str:
    head = ["model", "device", "parameters", "× first", "GMACs / patch", "patch", "s / case", "peak memory (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = {}
    for r in rows:
        first.setdefault(r["device"], r)
        ratio = r["parameters"] / first[r["device"]]["parameters"]
        memory = "–" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        if r["memory_growth_mib"] is not None:
            memory += f" (+{r['memory_growth_mib']:.0f})"
        lines.append(
            f"| {r['model']} | {r['device']} | {r['parameters']:,} | {ratio:.2f} | {r['macs_per_patch'] / 1e9:.3f} | "
            f"{'×'.join(map(str, r['patch_size']))} | {r['seconds_per_case']:.3f} | {memory} |"
        )
    shapes = {tuple(map(tuple, r["case_shapes"])) for r in rows}
    note = (
        f"Sliding window (step 0.5, no mirroring) on {len(rows[0]['case_shapes'])} preprocessed case(s) of shape(s) "
        f"{', '.join('×'.join(map(str, s)) for s in sorted({s for group in shapes for s in group}))}; "
        f"median of {repeats} turns per case, models measured alternately in one process. Peak memory: GPU "
        "max_memory_allocated; CPU peak resident set size of the process (+ growth during inference). "
        + hardware_line
        + "."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_efficiency(rows: list[dict], markdown: str, output: Path) -> None:
    write_text(output / JSON_FILE, json.dumps(rows, indent=2))
    write_text(output / MARKDOWN_FILE, markdown)
