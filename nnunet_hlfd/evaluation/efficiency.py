"""``efficiency``: what a model costs end to end, measured for several models side by side in one process.

Per model (a results folder or a deploy bundle, one fold or an ensemble of folds), backend (PyTorch, ONNX Runtime),
test-time mirroring (TTA) and sliding-window step, the time per case split into

- **preprocessing**: nnU-Net's reading, cropping, resampling and normalisation of the raw images;
- **network**: nnU-Net's sliding window (Gaussian weighting, mirroring, the fold ensemble) on the preprocessed case;
- **export**: nnU-Net's resampling of the logits back to the image's grid, argmax and writing the file;

plus the peak memory of the network phase (GPU: ``torch.cuda.max_memory_allocated``; CPU: the process's peak
resident set size, reset before each measurement, and its growth over the size just before), parameters and
multiply-adds of one forward pass over one patch (PyTorch's ``FlopCounterMode``; MACs = FLOPs / 2). With reference
labels, every setting's exported segmentations are evaluated (``nnunet_hlfd evaluate``), so each row also has its
Dice: what a faster setting costs in accuracy.

Models and settings are measured in turns within each case and repeat, so drifting machine load hits all alike;
times are medians over repeats, averaged over cases. Before timing, one untimed turn on the first case (``warmup
"case"``), or, where a turn takes many minutes (3D at full size on a CPU), one untimed patch per model and backend
(``"tile"``: the allocator's, ONNX Runtime's and oneDNN's first-call set-up, without a second pass over the case).
Without images, a random case of the plans' median size is timed (network only: there is no file to read or write).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nnunet_hlfd.adapters import count_parameters
from nnunet_hlfd.deploy.trained import case_files, load_predictor, preprocess_with_properties
from nnunet_hlfd.errors import EvaluationError
from nnunet_hlfd.files import write_text

MARKDOWN_FILE = "efficiency.md"
JSON_FILE = "efficiency.json"
FIGURE_FILE = "efficiency.png"
BACKENDS = ("pytorch", "onnx")
PHASES = ("preprocessing", "network", "export")
WARMUPS = ("case", "tile")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    folder: Path  # a results folder or a deploy bundle
    folds: tuple[str, ...] = ("0",)


@dataclass(frozen=True)
class Setting:
    backend: str
    tta: bool
    step: float

    @property
    def label(self) -> str:
        return f"{self.backend}, TTA {'on' if self.tta else 'off'}, step {self.step:g}"


@dataclass
class _Loaded:
    spec: ModelSpec
    predictors: dict[str, object]  # backend -> nnUNetPredictor
    times: dict = field(default_factory=dict)  # (setting, phase, case) -> [seconds per repeat]
    peaks: dict = field(default_factory=dict)  # setting -> [measurements]


def count_macs(network: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device) -> int:
    """Multiply-adds of one forward pass on a zero tensor of ``input_shape`` (batch included)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(torch.zeros(input_shape, device=device))
    return counter.get_total_flops() // 2


def _rss_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
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


def _is_bundle(folder: Path) -> bool:
    from nnunet_hlfd.deploy.bundle import MANIFEST

    return (Path(folder) / MANIFEST).is_file()


def _load(spec: ModelSpec, backends: list[str], device: torch.device, checkpoint: str, scratch: Path) -> _Loaded:
    """The model's predictor per backend; a results folder is exported into ``scratch`` for ONNX Runtime."""
    from nnunet_hlfd.deploy.bundle import CHECKPOINT, export_bundle, parse_folds
    from nnunet_hlfd.deploy.onnx_predictor import load_bundle_predictor

    folds = parse_folds(list(spec.folds))
    # PyTorch's predictor always: it preprocesses (the same for both backends) and its network is counted
    chosen = CHECKPOINT if _is_bundle(spec.folder) else checkpoint
    predictors = {"pytorch": load_predictor(spec.folder, tuple(folds), chosen, device)}
    if "onnx" in backends:
        bundle = spec.folder
        if not _is_bundle(bundle):
            bundle = scratch / spec.name
            export_bundle(spec.folder, folds, bundle, checkpoint, log=lambda _: None)
        predictors["onnx"] = load_bundle_predictor(bundle, [str(f) for f in folds], device=device, allow_tqdm=False)
    for predictor in predictors.values():
        # a model whose schedule turned test-time mirroring off has no axes of its own: TTA on mirrors every spatial
        # axis, as nnU-Net's default trainer allows (meaningful for models trained with mirror augmentation, as the
        # benchmark's are)
        if predictor.allowed_mirroring_axes is None:
            predictor.allowed_mirroring_axes = tuple(range(len(predictor.configuration_manager.patch_size)))
    return _Loaded(spec, predictors)


def _configure(predictor, setting: Setting) -> None:
    predictor.tile_step_size = setting.step
    predictor.use_mirroring = setting.tta


def _network(predictor, data: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, dict]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = _rss_kib("VmRSS")
    reset = _reset_peak_rss()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        logits = predictor.predict_logits_from_preprocessed_data(data)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        return logits, {"seconds": seconds, "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    peak = _rss_kib("VmHWM") if reset else None
    return logits, {
        "seconds": seconds,
        "peak_mib": peak / 1024 if peak else None,
        "growth_mib": (peak - before) / 1024 if peak and before else None,
    }


def _export(predictor, logits: torch.Tensor, properties: dict, output_truncated: Path) -> float:
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    output_truncated.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    export_prediction_from_logits(
        logits,
        properties,
        predictor.configuration_manager,
        predictor.plans_manager,
        predictor.dataset_json,
        str(output_truncated),
        False,
    )
    return time.perf_counter() - start


def model_specs(named: dict[str, Path], default_folds: str) -> list[ModelSpec]:
    """``NAME=FOLDER[@FOLD,FOLD...]`` (already split into name and path) into specs; ``default_folds`` is ``-f``."""
    specs = []
    for name, path in named.items():
        folder, _, folds = str(path).partition("@")
        folds = tuple(f for f in (folds or default_folds).replace(" ", ",").split(",") if f)
        specs.append(ModelSpec(name.partition("@")[0], Path(folder), folds))
    return specs


def settings_grid(backends: list[str], tta: list[bool], steps: list[float]) -> list[Setting]:
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise EvaluationError(f"backend(s) {unknown}: choose among {list(BACKENDS)}")
    bad = [s for s in steps if not 0 < s <= 1]
    if bad:
        raise EvaluationError(f"step size(s) {bad}: each must be in (0, 1]")
    return [Setting(b, t, s) for b in backends for t in tta for s in steps]


def measure_efficiency(
    models: list[ModelSpec],
    devices: list[str],
    settings: list[Setting] | None = None,
    images: Path | None = None,
    references: Path | None = None,
    output: Path | None = None,
    checkpoint: str = "checkpoint_final.pth",
    num_cases: int = 1,
    repeats: int = 3,
    progress: bool = True,
    warmup: str = "case",
) -> list[dict]:
    """One row per device, model and setting. With ``references``, the segmentations go to ``output/predictions``
    and are evaluated there."""
    settings = settings or [Setting("pytorch", False, 0.5)]
    if warmup not in WARMUPS:
        raise EvaluationError(f"warm-up {warmup!r}: choose among {list(WARMUPS)}")
    if references is not None and (images is None or output is None):
        raise EvaluationError("reference labels need the images they belong to (-i) and an output folder")
    if references is not None and not Path(references).is_dir():
        raise EvaluationError(f"reference labels folder {references} does not exist")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise EvaluationError(f"model names {names}: each must be unique (NAME=PATH)")
    backends = sorted({s.backend for s in settings}, key=BACKENDS.index)
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EvaluationError("--device cuda: no CUDA GPU is visible to PyTorch here")
        with tempfile.TemporaryDirectory(prefix="efficiency_") as scratch:
            loaded = [_load(spec, backends, device, checkpoint, Path(scratch)) for spec in models]
            exports = Path(scratch) / "exports"  # segmentations that are timed but not evaluated
            rows += _measure_device(
                loaded,
                settings,
                device,
                images,
                references,
                output if references else exports,
                num_cases,
                repeats,
                progress,
                warmup,
            )
            del loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _case_list(predictor, images: Path | None, num_cases: int) -> dict[str, list[str] | None]:
    if images is None:
        return {"random": None}
    files = case_files(images, predictor.dataset_json["file_ending"])
    return dict(list(files.items())[:num_cases])


def _random_case(predictor) -> torch.Tensor:
    channels = len(predictor.dataset_json["channel_names"])
    shape = [int(round(s)) for s in predictor.configuration_manager.median_image_size_in_voxels]
    return torch.randn((channels, *shape), generator=torch.Generator().manual_seed(0))


def _predictions_folder(output: Path, device: str, model: str, setting: Setting) -> Path:
    tag = f"{setting.backend}_tta{'on' if setting.tta else 'off'}_step{setting.step:g}"
    return output / "predictions" / device / model / tag


def _preprocess(model: _Loaded, files: list[str] | None) -> tuple[torch.Tensor, dict | None, float]:
    """The case as this model's plans preprocess it (the same for both backends and every setting), its
    properties for the export, and the seconds it took."""
    predictor = model.predictors["pytorch"]
    start = time.perf_counter()
    if files is None:
        return _random_case(predictor), None, time.perf_counter() - start
    data, _, properties = preprocess_with_properties(predictor, files)
    return data, properties, time.perf_counter() - start


def _warm_up_on_a_tile(loaded: list[_Loaded], settings: list[Setting], device: torch.device) -> None:
    for model in loaded:
        for backend in dict.fromkeys(s.backend for s in settings):
            predictor = model.predictors[backend]
            channels = len(predictor.dataset_json["channel_names"])
            patch = [int(p) for p in predictor.configuration_manager.patch_size]
            with torch.no_grad():
                predictor.network(torch.zeros((1, channels, *patch), device=device))


def _measures(model: _Loaded, setting: Setting) -> bool:
    """False for PyTorch on an int8/fp16 bundle: PyTorch would run the bundle's float checkpoint, a row of the float
    model under the quantized one's name; only ONNX Runtime runs the quantized networks."""
    return setting.backend == "onnx" or _precision(model.predictors.get("onnx")) == "float32"


def _measure_device(
    loaded, settings, device, images, references, output, num_cases, repeats, progress, warmup="case"
) -> list[dict]:
    cases = _case_list(loaded[0].predictors["pytorch"], images, num_cases)
    runs = sum(1 + sum(_measures(m, s) for s in settings) for m in loaded)
    total = repeats * len(cases) * runs
    shapes: dict[str, list] = {m.spec.name: [] for m in loaded}
    if warmup == "tile":
        _warm_up_on_a_tile(loaded, settings, device)
    with tqdm(total=total, desc=f"efficiency ({device.type})", unit="run", disable=not progress) as bar:
        # one untimed turn on the first case first (allocator, ONNX Runtime's first-run set-up, cuDNN autotuning)
        for repeat in range(-1 if warmup == "case" else 0, repeats):
            timed = repeat >= 0
            for case, files in list(cases.items())[:1] if not timed else cases.items():
                prepared = {}
                for model in loaded:
                    data, properties, seconds = prepared[model.spec.name] = _preprocess(model, files)
                    if timed:
                        model.times.setdefault(("*", "preprocessing", case), []).append(seconds)
                        bar.update()
                    if repeat == 0:
                        shapes[model.spec.name].append((case, list(data.shape[1:])))
                for setting in settings:  # models and settings in turns: drifting load hits all alike
                    for model in (m for m in loaded if _measures(m, setting)):
                        predictor = model.predictors[setting.backend]
                        _configure(predictor, setting)
                        data, properties, _ = prepared[model.spec.name]
                        logits, measured = _network(predictor, data, device)
                        folder = _predictions_folder(output, device.type, model.spec.name, setting)
                        exported = (
                            _export(predictor, logits, properties, folder / case) if properties is not None else None
                        )
                        if timed:
                            model.times.setdefault((setting, "network", case), []).append(measured["seconds"])
                            if exported is not None:
                                model.times.setdefault((setting, "export", case), []).append(exported)
                            model.peaks.setdefault(setting, []).append(measured)
                            bar.update()
    return [
        _row(model, setting, device, cases, shapes, references, output)
        for setting in settings
        for model in loaded
        if _measures(model, setting)
    ]


def _median_per_case(model: _Loaded, setting, phase: str, cases) -> float | None:
    values = [model.times.get((setting, phase, case)) for case in cases]
    if any(v is None for v in values):
        return None
    return float(np.mean([np.median(v) for v in values]))


def _row(model: _Loaded, setting: Setting, device, cases, shapes, references, output) -> dict:
    predictor = model.predictors[setting.backend]
    network = model.predictors["pytorch"].network
    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
    channels = len(predictor.dataset_json["channel_names"])
    seconds = {
        "preprocessing": _median_per_case(model, "*", "preprocessing", cases),
        "network": _median_per_case(model, setting, "network", cases),
        "export": _median_per_case(model, setting, "export", cases),
    }
    peaks = model.peaks.get(setting, [])
    row = {
        "model": model.spec.name,
        "folder": str(model.spec.folder),
        "folds": list(model.spec.folds),
        "device": device.type,
        "backend": setting.backend,
        "precision": _precision(predictor) if setting.backend == "onnx" else "float32",
        "tta": setting.tta,
        "mirroring_axes": list(predictor.allowed_mirroring_axes) if setting.tta else None,
        "step_size": setting.step,
        "parameters": count_parameters(network),
        "patch_size": list(patch),
        "macs_per_patch": count_macs(network, (1, channels, *patch), device),
        "case_shapes": [shape for _, shape in shapes[model.spec.name]],
        "seconds": seconds,
        "seconds_per_case": sum(v for v in seconds.values() if v is not None),
        "peak_memory_mib": _max(p["peak_mib"] for p in peaks),
        "memory_growth_mib": _max(p.get("growth_mib") for p in peaks),
        "dice": None,
    }
    if references is not None:
        from nnunet_hlfd.evaluation.evaluate import evaluate_folder

        folder = _predictions_folder(output, device.type, model.spec.name, setting)
        # a results folder and a bundle both hold the model's dataset.json
        summary = evaluate_folder(folder, references, model.spec.folder / "dataset.json", chill=True, progress=False)
        row["dice"] = {name: c["metrics"]["Dice"]["mean"] for name, c in summary["classes"].items()}
    return row


def _precision(predictor) -> str:
    """int8 or fp16 for the ONNX Runtime predictor of a bundle exported with --quantize (it runs those networks)."""
    quantization = getattr(predictor, "bundle_manifest", None) and predictor.bundle_manifest.get("quantization")
    return quantization["type"] if quantization else "float32"


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
    try:
        import onnxruntime

        parts.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        pass
    return "; ".join(parts) + f"; torch {torch.__version__}"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def format_markdown(rows: list[dict], repeats: int, hardware_line: str, warmup: str = "case") -> str:
    classes = sorted({name for r in rows if r["dice"] for name in r["dice"]})
    head = ["model", "device", "backend", "TTA", "step", "parameters", "GMACs / patch", "preprocessing (s)",
            "network (s)", "export (s)", "s / case", "× first", "peak memory (MiB)"]  # fmt: skip
    head += [f"Dice {c}" for c in classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = {}
    for r in rows:
        first.setdefault(r["device"], r)
        ratio = r["seconds_per_case"] / first[r["device"]]["seconds_per_case"]
        memory = "–" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        if r["memory_growth_mib"] is not None:
            memory += f" (+{r['memory_growth_mib']:.0f})"
        dice = [("–" if not r["dice"] or r["dice"].get(c) is None else f"{r['dice'][c]:.3f}") for c in classes]
        folds = "" if r["folds"] == ["0"] else f" (folds {', '.join(r['folds'])})"
        backend = r["backend"] + (f" {r['precision']}" if r.get("precision", "float32") != "float32" else "")
        cells = [
            r["model"] + folds, r["device"], backend, "on" if r["tta"] else "off", f"{r['step_size']:g}",
            f"{r['parameters']:,}", f"{r['macs_per_patch'] / 1e9:.3f}", _seconds(r["seconds"]["preprocessing"]),
            _seconds(r["seconds"]["network"]), _seconds(r["seconds"]["export"]), f"{r['seconds_per_case']:.3f}",
            f"{ratio:.2f}", memory, *dice,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    shapes = sorted({tuple(s) for r in rows for s in r["case_shapes"]})
    note = (
        f"{len(rows[0]['case_shapes'])} case(s), preprocessed shape(s) "
        f"{', '.join('×'.join(map(str, s)) for s in shapes)}; median of {repeats} turn(s) per case after one "
        f"untimed {'turn on the first case' if warmup == 'case' else 'patch per model and backend'}, models and "
        "settings measured alternately in one process. s / case = "
        "preprocessing + network (sliding window, incl. TTA and the fold ensemble) + export (resampling to the "
        "image grid, writing). Peak memory of the network phase: GPU max_memory_allocated; CPU peak resident set "
        "size of the process (+ growth during it). " + hardware_line + "."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def plot_accuracy_vs_time(rows: list[dict], path: Path) -> Path | None:
    """Dice per label/region against seconds per case, one point per model and setting (None: no Dice measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from nnunet_hlfd.plots import save_figure

    classes = sorted({name for r in rows if r["dice"] for name in r["dice"]})
    if not classes:
        return None
    fig, axes = plt.subplots(1, len(classes), figsize=(5.5 * len(classes), 4.2), squeeze=False)
    models = list(dict.fromkeys(r["model"] for r in rows))
    colours = plt.get_cmap("tab10")
    markers = {("pytorch", False): "o", ("pytorch", True): "s", ("onnx", False): "^", ("onnx", True): "D"}
    for ax, name in zip(axes[0], classes):
        for r in rows:
            if not r["dice"] or r["dice"].get(name) is None:
                continue
            ax.scatter(
                r["seconds_per_case"], r["dice"][name], color=colours(models.index(r["model"]) % 10),
                marker=markers[(r["backend"], r["tta"])], s=60 if r["step_size"] == 0.5 else 30, alpha=0.85,
            )  # fmt: skip
        ax.set_title(f"Dice {name}")
        ax.set_xlabel(f"seconds per case ({rows[0]['device']})")
        ax.set_xscale("log")
        seconds = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "1235" else "")  # 1, 2, 3, 5, 10, 20, ...
        ax.xaxis.set_major_formatter(seconds)
        ax.xaxis.set_minor_formatter(seconds)
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], color=colours(i % 10), marker="o", linestyle="", label=m) for i, m in enumerate(models)
    ]
    shown = [key for key in markers if any((r["backend"], r["tta"]) == key for r in rows)]
    if len(shown) > 1:  # markers tell backend and TTA apart only when they vary
        handles += [
            plt.Line2D([], [], color="black", marker=markers[key], linestyle="",
                       label=f"{key[0]}, TTA {'on' if key[1] else 'off'}")
            for key in shown
        ]  # fmt: skip
    axes[0][-1].legend(handles=handles, fontsize=8, loc="lower right")
    steps = sorted({r["step_size"] for r in rows})
    fig.suptitle(
        "Dice against time per case"
        + (" (large markers: step 0.5; small: larger steps)" if len(steps) > 1 else f" (step {steps[0]:g})")
    )
    return save_figure(fig, path)


def write_efficiency(rows: list[dict], markdown: str, output: Path) -> list[Path]:
    write_text(output / JSON_FILE, json.dumps(rows, indent=2))
    write_text(output / MARKDOWN_FILE, markdown)
    figure = plot_accuracy_vs_time(rows, output / FIGURE_FILE)
    return [output / JSON_FILE, output / MARKDOWN_FILE, *([figure] if figure else [])]
