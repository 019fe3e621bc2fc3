"""The demo: synthetic data -> plan and preprocess -> teacher -> student alone and HLFD student -> predict -> table.

Every step is nnU-Net's own command or API (planning is ``nnUNetv2_plan_and_preprocess``; training is what
``nnUNetv2_train`` runs, in this process); the only thing the demo adds is the data and the table.
"""

import contextlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_hlfd.demo.synthetic import make_synthetic_dataset
from nnunet_hlfd.evaluation.evaluate import evaluate_folder
from nnunet_hlfd.runtime import (
    SCHEDULE_KEY,
    model_folder,
    nnunet_command,
    nnunet_environment,
    plan_schedule,
    run_nnunet,
)

DATASET_ID = 991
DATASET_NAME = "HLFDDemo"
CONFIGURATION = "3d_fullres"


# The demo's three models: the teacher follows the plans' schedule with stock nnU-Net (nnUNetTrainerHLFDTeacher),
# the students learn from it.
TEACHER, STUDENT, HLFD = "nnUNetTrainerHLFDTeacher", "nnUNetTrainerStudent", "nnUNetTrainerHLFD"
# A few epochs and iterations, no mirroring (8x faster validation): checks that everything runs, teaches nothing.
DEBUG_SCHEDULE = {"epochs": 2, "iterations": 3, "val_iterations": 2, "mirroring": False}


@dataclass(frozen=True)
class DemoProfile:
    schedule: dict  # written into the plans (nnunet_hlfd.trainers.planned_schedule), shared by the three models
    num_training: int
    num_test: int
    shape: tuple[int, int, int]


PROFILES = {
    # about 10 minutes on 2 CPU cores: long enough for the teacher to clearly beat chance
    "default": DemoProfile(
        {"epochs": 50, "iterations": 12, "val_iterations": 4, "mirroring": False}, 20, 6, (16, 32, 32)
    ),
    # a smoke run of the same pipeline (about 1 minute); its numbers mean nothing
    "quick": DemoProfile(DEBUG_SCHEDULE, 6, 2, (16, 32, 32)),
}


def write_schedule(
    preprocessed: Path, configuration: str, schedule: dict, teacher: str = TEACHER, plans: str = "nnUNetPlans"
) -> None:
    """Write the schedule and the teacher trainer into the dataset's plans, once, before anything trains."""
    plans_file = preprocessed / f"{plans}.json"
    written = json.loads(plans_file.read_text())
    plan_schedule(written["configurations"][configuration], {SCHEDULE_KEY: schedule}, teacher)
    plans_file.write_text(json.dumps(written, indent=2))


def _say(message: str) -> None:
    print(message, flush=True)


def _run(step: str, args: list[str], env: dict, log: Path) -> float:
    """Run an nnU-Net command, its output into ``log``."""
    _say(f"{step}: {' '.join(args)}")
    code, elapsed = run_nnunet(args, env, log)
    print(f"  done in {elapsed:.0f} s (log: {log})", flush=True)
    if code != 0:
        raise RuntimeError(f"{step} failed (exit code {code}); see {log}")
    return elapsed


class _EpochProgress:
    """A stream for nnU-Net's output: everything into the log, the epochs it announces as one progress line."""

    def __init__(self, log, terminal, epochs: int):
        self.log, self.terminal, self.epochs = log, terminal, epochs

    def write(self, text: str) -> int:
        match = re.search(r"Epoch (\d+)\s*$", text)
        if match:
            print(f"\r  epoch {int(match.group(1)) + 1}/{self.epochs}", end="", flush=True, file=self.terminal)
        return self.log.write(text)

    def flush(self) -> None:
        self.log.flush()


def _train(step: str, trainer: str, log: Path, epochs: int) -> float:
    """Train fold 0 as ``nnUNetv2_train`` does (nnU-Net's ``get_trainer_from_args`` and ``run_training``), in this
    process: no second start-up of nnU-Net for each model, and no validation of fold 0 after training (its workers
    would start nnU-Net once more; the demo evaluates every model on its held-out test cases instead)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    _say(f"{step}: as nnUNetv2_train {DATASET_ID} {CONFIGURATION} 0 -tr {trainer} -device cpu, in this process")
    start, terminal = time.perf_counter(), sys.stdout
    with open(log, "w") as f, contextlib.redirect_stdout(_EpochProgress(f, terminal, epochs)):
        with contextlib.redirect_stderr(f):
            try:
                nnunet_trainer = get_trainer_from_args(
                    str(DATASET_ID), CONFIGURATION, 0, trainer, device=torch.device("cpu")
                )
                nnunet_trainer.run_training()
            except Exception as error:
                raise RuntimeError(f"{step} failed ({error!r}); see {log}") from error
    elapsed = time.perf_counter() - start
    print(f"\r  done in {elapsed:.0f} s (log: {log})" + " " * 10, flush=True)
    return elapsed


def _predict(model_folder: Path, images: Path, output: Path) -> tuple[int, float]:
    """Predict every case with nnU-Net's predictor, in this process (no worker pools, so the time is the
    model's: preprocessing, sliding window and resampling of one case).

    Returns (parameters, median seconds per case).
    """
    import numpy as np
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_hlfd.adapters import count_parameters
    from nnunet_hlfd.deploy.trained import load_predictor

    predictor = load_predictor(model_folder, 0, "checkpoint_final.pth", torch.device("cpu"))
    output.mkdir(parents=True, exist_ok=True)
    io, seconds = SimpleITKIO(), []
    for image in sorted(images.glob("*_0000.nii.gz")):
        data, properties = io.read_images([str(image)])
        start = time.perf_counter()
        segmentation = predictor.predict_single_npy_array(data, properties)
        seconds.append(time.perf_counter() - start)
        io.write_seg(segmentation, str(output / image.name.replace("_0000.nii.gz", ".nii.gz")), properties)
    return count_parameters(predictor.network), float(np.median(seconds))


def run_demo(work_dir: str | Path, profile: str = "default", overwrite: bool = False) -> list[dict]:
    work = Path(work_dir).resolve()
    nnunet_command("nnUNetv2_plan_and_preprocess")  # refused now, not after the dataset is written
    if work.exists() and any(work.iterdir()) and not overwrite:
        raise SystemExit(
            f"{work} exists and is not empty (an earlier demo?). Choose another --output folder or pass --overwrite "
            "to replace the demo's nnU-Net folders in it."
        )
    p = PROFILES[profile]
    env = nnunet_environment(work)
    os.environ.update({k: v for k, v in env.items() if k.startswith("nnUNet_")})
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()

    _say(f"[1/6] synthetic dataset: {p.num_training} training + {p.num_test} test cases of {p.shape} voxels")
    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        target = work / sub / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
        if target.exists():
            shutil.rmtree(target)
    raw = make_synthetic_dataset(Path(env["nnUNet_raw"]), DATASET_ID, DATASET_NAME, p.num_training, p.num_test, p.shape)

    _run(
        "[2/6] plan and preprocess",
        ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1", "-npfp", "1"],
        env,
        logs / "plan_and_preprocess.log",
    )
    dataset = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    write_schedule(Path(env["nnUNet_preprocessed"]) / dataset, CONFIGURATION, p.schedule)
    os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in this process: no worker start-up, deterministic
    rows = []
    for step, (role, trainer) in enumerate(
        [("teacher", TEACHER), ("student alone", STUDENT), ("HLFD student", HLFD)], start=3
    ):
        train_s = _train(
            f"[{step}/6] train the {role} ({trainer})", trainer, logs / f"train_{trainer}.log", p.schedule["epochs"]
        )
        rows.append({"model": role, "trainer": trainer, "train_s": train_s})

    _say("[6/6] predict the test cases with nnU-Net's predictor and evaluate")
    for row in rows:
        folder = model_folder(env["nnUNet_results"], dataset, row["trainer"], "nnUNetPlans", CONFIGURATION)
        predictions = work / "predictions" / row["trainer"]
        row["parameters"], row["predict_s_per_case"] = _predict(folder, raw / "imagesTs", predictions)
        summary = evaluate_folder(predictions, raw / "labelsTs", raw / "dataset.json", progress=False)
        row["dice"] = {name: c["metrics"]["Dice"]["mean"] for name, c in summary["classes"].items()}
        row["hd95"] = {name: c["metrics"]["HD95"]["mean"] for name, c in summary["classes"].items()}
    table = format_table(rows, profile)
    (work / "demo_results.md").write_text(table + "\n")
    (work / "demo_results.json").write_text(json.dumps(rows, indent=2))
    _say("\n" + table)
    _say(f"\nTotal time {time.perf_counter() - total:.0f} s. Results: {work / 'demo_results.md'}")
    return rows


def format_table(rows: list[dict], profile: str) -> str:
    classes = list(rows[0]["dice"])
    teacher_params = rows[0]["parameters"]
    head = [
        "model",
        "trainer",
        "parameters",
        "× teacher",
        *[f"Dice {c}" for c in classes],
        "mean Dice",
        *[f"HD95 {c} (mm)" for c in classes],
        "train (s)",
        "inference (s/case)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        dice = [r["dice"][c] for c in classes]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    r["trainer"],
                    f"{r['parameters']:,}",
                    f"{r['parameters'] / teacher_params:.2f}",
                    *[f"{d:.3f}" for d in dice],
                    f"{sum(dice) / len(dice):.3f}",
                    *[f"{r['hd95'][c]:.1f}" for c in classes],
                    f"{r['train_s']:.0f}",
                    f"{r['predict_s_per_case']:.2f}",
                ]
            )
            + " |"
        )
    note = (
        f"Profile '{profile}', fold 0, {CONFIGURATION}, CPU ({os.cpu_count()} cores), Python {sys.version.split()[0]}. "
        "Dice and HD95 on the held-out test cases (`nnunet_hlfd evaluate`; per-case files beside each model's "
        "predictions, ready for `nnunet_hlfd compare`); inference = median per case "
        "(preprocessing, sliding window without mirroring, resampling); one run, no seeds averaged."
    )
    return "\n".join(lines) + "\n\n" + note
