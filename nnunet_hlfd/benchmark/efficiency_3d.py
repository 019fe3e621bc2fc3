"""3D at full size on the CPU: what nnU-Net's planned ``3d_fullres`` teacher and its w0.5 / w0.25 students cost
end to end, measured side by side in one run (issue 27).

1. **Phantoms of realistic extent** (:mod:`nnunet_hlfd.benchmark.phantom`): real KiTS label maps cropped around the
   kidneys with their 40 mm margin, at the median native spacing of the label source's scans (read from every label
   header: KiTS19's is 3.0 × 0.82 × 0.82 mm), with a synthetic CT image.
2. **nnU-Net's own plan**: ``nnUNetv2_extract_fingerprint`` and ``nnUNetv2_plan_experiment`` on those cases, so the
   teacher has nnU-Net's default widths (32 → 320) and the patch and spacing its planner chooses for them.
3. **Three models of untrained weights** (timing does not depend on the weights; their Dice is meaningless and not
   measured): the teacher, and the w0.5 and w0.25 students derived from its configuration as the student trainers
   derive them (:func:`nnunet_hlfd.planning.derive_student_architecture`).
4. :func:`nnunet_hlfd.evaluation.efficiency.measure_efficiency` on the phantom cases: preprocessing, network
   (sliding window), export, per model and setting, models and settings in turns; then the students' speed-up over
   the teacher per setting and where each model's time goes.

The default settings fit 30 minutes on 2 CPU cores: nnU-Net's default prediction (PyTorch, TTA on, step 0.5), TTA
off, step 0.75, and ONNX Runtime with TTA off. Test-time mirroring runs the network 8 times per tile in 3D, so the
teacher with TTA is most of the run. ``--grid`` measures every combination (about 3× longer).

    python benchmarks/efficiency_3d.py --work /tmp/efficiency_3d            # 1 case, the default settings
    python benchmarks/efficiency_3d.py --work /tmp/efficiency_3d --cases 2 --grid
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from nnunet_hlfd.benchmark.phantom import PhantomSettings, label_cases, write_phantoms
from nnunet_hlfd.evaluation.efficiency import (
    ModelSpec,
    Setting,
    format_markdown,
    hardware,
    measure_efficiency,
    settings_grid,
    write_efficiency,
)
from nnunet_hlfd.files import write_text
from nnunet_hlfd.runtime import nnunet_environment, run_nnunet

DATASET_ID = 509
DATASET = f"Dataset{DATASET_ID}_KiTSPhantom3D"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
MODELS = {"teacher": 1.0, "w0.5": 0.5, "w0.25": 0.25}
# nnU-Net's default prediction first: the speed-ups are reported against the teacher in each setting
DEFAULT_SETTINGS = [
    Setting("pytorch", True, 0.5),
    Setting("pytorch", False, 0.5),
    Setting("pytorch", False, 0.75),
    Setting("onnx", False, 0.5),
]
SUMMARY_FILE = "efficiency_3d.md"
DEFAULT_LABELS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kits19"


def median_native_spacing(labels: Path) -> PhantomSettings:
    """Phantom settings at the median (in-plane, slice) spacing of every label map of ``labels`` (headers only)."""
    import SimpleITK as sitk

    in_plane, slices = [], []
    for _, path in label_cases(labels):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        # the spacing along the patient's superior axis is the slice spacing (phantom.patient_axes' convention)
        direction = np.array(reader.GetDirection()).reshape(3, 3)
        superior = int(np.argmax(np.abs(direction[2])))  # the image axis that runs along physical axis 2
        spacing = reader.GetSpacing()
        slices.append(spacing[superior])
        in_plane.append(float(np.mean([s for axis, s in enumerate(spacing) if axis != superior])))
    median_in_plane, median_slice = (round(float(np.median(values)), 3) for values in (in_plane, slices))
    return PhantomSettings(in_plane_mm=median_in_plane, slice_mm=median_slice)


def prepare_dataset(work: Path, labels: Path, cases: int, log) -> tuple[dict, Path]:
    """Phantoms, their raw dataset and nnU-Net's plan; returns (plans, imagesTr). Reuses what ``work`` holds."""
    from nnunet_hlfd.conversion.kits import KITS19, convert_kits

    settings = median_native_spacing(labels)
    log(f"phantoms of {cases} case(s) at {settings.slice_mm} × {settings.in_plane_mm} × {settings.in_plane_mm} mm")
    write_phantoms(labels, work / "phantoms", settings, max_cases=cases, progress=False)
    raw = work / "nnUNet_raw" / DATASET
    if not (raw / "dataset.json").is_file():
        (work / "nnUNet_raw").mkdir(parents=True, exist_ok=True)
        convert_kits(KITS19, work / "phantoms", "organ_tumor", DATASET_ID, DATASET.split("_", 1)[1],
                     output_root=work / "nnUNet_raw")  # fmt: skip
    plans_file = work / "nnUNet_preprocessed" / DATASET / f"{PLANS}.json"
    if not plans_file.is_file():
        env = nnunet_environment(work)
        for command in (["nnUNetv2_extract_fingerprint", "-d", str(DATASET_ID), "-np", "2"],
                        ["nnUNetv2_plan_experiment", "-d", str(DATASET_ID)]):  # fmt: skip
            log(" ".join(command))
            code, _ = run_nnunet(command, env, work / "logs" / f"{command[0]}.log")
            if code != 0:
                raise SystemExit(f"{command[0]} failed (exit {code}): see {work / 'logs' / command[0]}.log")
    return json.loads(plans_file.read_text()), raw / "imagesTr"


def untrained_model(folder: Path, plans: dict, dataset_json: dict, width: float, seed: int = 0) -> Path:
    """A results folder of one fold whose weights are nnU-Net's initialisation: the teacher (width 1) or a student
    of the teacher's configuration at ``width``, described in its plans as the student trainers write them."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_hlfd.planning import derive_student_architecture, student_configuration

    plans = json.loads(json.dumps(plans))
    teacher = plans["configurations"][CONFIGURATION]
    if width < 1:
        architecture = derive_student_architecture(teacher["architecture"], width)
        record = {"width": width, "weights": "untrained (for timing only)"}
        plans["configurations"][CONFIGURATION] = student_configuration(teacher, teacher, architecture, record)
    manager = PlansManager(plans)
    configuration = manager.get_configuration(CONFIGURATION)
    channels = determine_num_input_channels(manager, configuration, dataset_json)
    heads = manager.get_label_manager(dataset_json).num_segmentation_heads
    torch.manual_seed(seed)
    network = nnUNetTrainer.build_network_architecture(manager, configuration, channels, heads, False)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    write_text(folder / "plans.json", json.dumps(plans, indent=2))
    write_text(folder / "dataset.json", json.dumps(dataset_json, indent=2))
    torch.save(
        {
            "network_weights": network.state_dict(),
            "init_args": {"configuration": CONFIGURATION, "fold": 0},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": tuple(range(len(configuration.patch_size))),
        },
        folder / "fold_0" / "checkpoint_final.pth",
    )
    return folder


def tiles_per_case(patch: list[int], shapes: list[list[int]], steps: list[float]) -> dict[float, list[int]]:
    """Sliding-window tiles of each preprocessed case per step, as nnU-Net counts them."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    counts = {}
    for step in steps:
        counts[step] = [
            int(np.prod([len(s) for s in compute_steps_for_sliding_window(np.maximum(shape, patch), patch, step)]))
            for shape in shapes
        ]
    return counts


def speedups(rows: list[dict]) -> str:
    """Per setting, each model's seconds per case and phases as a share, and its speed-up over the teacher."""
    lines = [
        "| setting | model | s / case | speed-up vs teacher | preprocessing | network | export |",
        "|---|---|---|---|---|---|---|",
    ]
    settings = list(dict.fromkeys((r["backend"], r["tta"], r["step_size"]) for r in rows))
    for backend, tta, step in settings:
        group = [r for r in rows if (r["backend"], r["tta"], r["step_size"]) == (backend, tta, step)]
        teacher = next(r for r in group if r["model"] == "teacher")
        for r in group:
            total = r["seconds_per_case"]
            shares = [f"{(r['seconds'][phase] or 0) / total:.0%}" for phase in ("preprocessing", "network", "export")]
            label = Setting(backend, tta, step).label
            lines.append(f"| {label} | {r['model']} | {total:.1f} | {teacher['seconds_per_case'] / total:.2f}× | "
                         + " | ".join(shares) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def summary(plans: dict, rows: list[dict], tiles: dict, minutes: float, grid_note: str, hardware_line: str) -> str:
    configuration = plans["configurations"][CONFIGURATION]
    features = configuration["architecture"]["arch_kwargs"]["features_per_stage"]
    shapes = rows[0]["case_shapes"]
    lines = [
        "# 3D at full size on the CPU: teacher against its students",
        "",
        f"nnU-Net's plan for the phantoms: `3d_fullres`, spacing {configuration['spacing']} mm, patch "
        f"{configuration['patch_size']}, features {features} (students: the same × 0.5 and × 0.25). Preprocessed "
        f"case shape(s) {shapes}; sliding-window tiles per case: "
        + ", ".join(f"step {s:g}: {c}" for s, c in tiles.items())
        + ". Untrained weights (timing only; no Dice).",
        "",
        speedups(rows),
        format_markdown(rows, 1, hardware_line, warmup="tile"),
        f"{grid_note} Whole run: {minutes:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="work folder (phantoms, plans, models, results)")
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="KiTS label folder (default: %(default)s)")
    parser.add_argument("--cases", type=int, default=1, help="phantom cases to time (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="timed turns per case (default: %(default)s)")
    parser.add_argument(
        "--grid", action="store_true", help="every combination of backend, TTA on/off and step 0.5/0.75"
    )
    args = parser.parse_args(argv)
    if not args.labels.is_dir():
        parser.error(f"--labels {args.labels} is not a folder: point at a KiTS19 label folder (../shared/data/kits19)")
    if args.cases < 1 or args.repeats < 1:
        parser.error("--cases and --repeats must be at least 1")

    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - started) / 60:6.1f} min] {message}", flush=True)

    work = args.work.resolve()
    plans, images = prepare_dataset(work, args.labels, args.cases, log)
    dataset_json = json.loads((images.parent / "dataset.json").read_text())
    models = []
    for name, width in MODELS.items():
        folder = work / "models" / name
        if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
            untrained_model(folder, plans, dataset_json, width)
        models.append(ModelSpec(name, folder))
    settings = settings_grid(["pytorch", "onnx"], [True, False], [0.5, 0.75]) if args.grid else DEFAULT_SETTINGS
    grid_note = (
        "Settings: every combination." if args.grid else
        "Settings: nnU-Net's default (PyTorch, TTA on, step 0.5), TTA off, step 0.75, and ONNX Runtime with TTA off "
        "(--grid: every combination)."
    )  # fmt: skip
    log(f"measuring {len(models)} models × {len(settings)} settings on {args.cases} case(s)")
    rows = measure_efficiency(
        models, ["cpu"], settings, images=images, output=work / "efficiency", num_cases=args.cases,
        repeats=args.repeats, warmup="tile",
    )  # fmt: skip
    configuration = plans["configurations"][CONFIGURATION]
    tiles = tiles_per_case(configuration["patch_size"], rows[0]["case_shapes"], sorted({s.step for s in settings}))
    hardware_line = hardware(["cpu"])
    write_efficiency(rows, format_markdown(rows, args.repeats, hardware_line, warmup="tile"), work / "efficiency")
    text = summary(plans, rows, tiles, (time.perf_counter() - started) / 60, grid_note, hardware_line)
    write_text(work / SUMMARY_FILE, text)
    print(text)
    log(f"done: {work / SUMMARY_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
