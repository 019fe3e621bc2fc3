"""The benchmark's working folder: nnU-Net's folders, the data prepared once (phantoms, conversion, plans with the
profile's changes and schedule, the split, the test set) and where each result lies."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from nnunet_hlfd.benchmark.jobs import Job, benchmark_splits, row_job
from nnunet_hlfd.benchmark.phantom import write_phantoms
from nnunet_hlfd.benchmark.profiles import PLANS, ROWS, SINGLE_MODEL_ROWS, TEACHER_TRAINER, Profile, Variant
from nnunet_hlfd.errors import BenchmarkError
from nnunet_hlfd.evaluation.evaluate import read_task, resolve_tolerances
from nnunet_hlfd.files import write_text
from nnunet_hlfd.runtime import (
    PLANS_BLOCK,
    SCHEDULE_KEY,
    TEACHER_SCHEDULE_KEY,
    model_folder,
    nnunet_environment,
    plan_schedule,
    run_nnunet,
)


class Workspace:
    """The ``--work`` folder of one profile: nnU-Net's three folders, the logs, the test set and the predictions."""

    def __init__(self, profile: Profile, labels: Path, work: Path):
        self.profile, self.labels, self.work = profile, Path(labels), Path(work).resolve()
        self.started = time.time()
        self.env = nnunet_environment(self.work)
        self.env.update(
            nnUNet_n_proc_DA=str(profile.data_augmentation_workers),
            nnUNet_def_n_proc=str(profile.export_processes),  # nnU-Net's default of 8 spawned workers: slow on 2 cores
        )
        self.tolerances_mm: dict[str, float] = {}  # NSD's per label/region: resolved once the dataset exists

    @property
    def dataset(self) -> str:
        return f"Dataset{self.profile.dataset_id:03d}_KiTSPhantom{self.profile.name.capitalize()}"

    @property
    def phantoms(self) -> Path:
        return self.work / "phantoms"

    def log(self, message: str) -> None:
        print(f"[{(time.time() - self.started) / 60:6.1f} min] {message}", flush=True)

    def run(self, args: list[str], log_name: str, env: dict | None = None, check: bool = True) -> int:
        log_file = self.work / "logs" / f"{log_name}.log"
        code, _ = run_nnunet(args, env or self.env, log_file, append=True)
        if check and code != 0:
            raise BenchmarkError(f"{' '.join(args[:3])} ... failed ({code}); see {log_file}")
        return code

    def model_folder(self, trainer: str, plans: str = PLANS) -> Path:
        return model_folder(self.work / "nnUNet_results", self.dataset, trainer, plans, self.profile.configuration)

    def started_trainings(self, trainer: str, plans: str = PLANS) -> list[Path]:
        """The fold folders of a model that hold a checkpoint: trainings that have used its plans."""
        folder = self.model_folder(trainer, plans)
        return sorted({c.parent for c in folder.glob("fold_*/checkpoint_*.pth")}) if folder.is_dir() else []

    def predictions(self, row: str, fold: int | str) -> Path:
        return self.work / "predictions" / row / f"fold_{fold}"

    def result_file(self, job: Job) -> Path:
        """What a finished job leaves: the final checkpoint, or the evaluation of the test-set predictions."""
        if job.kind == "train":
            return self.model_folder(job.trainer, job.plans) / f"fold_{job.fold}" / "checkpoint_final.pth"
        return self.predictions(job.row, job.fold) / "metrics_summary.json"

    # -- the data, prepared once
    def prepare(self) -> None:
        profile = self.profile
        phantoms = self.phantoms
        self.log(f"phantoms from {self.labels} -> {phantoms}")
        cases = write_phantoms(self.labels, phantoms, profile.phantom, profile.max_cases, progress=False)
        raw = self.work / "nnUNet_raw" / self.dataset
        if not (raw / "dataset.json").is_file():
            from nnunet_hlfd.conversion.kits import KITS19, KITS23, convert_kits

            has_cysts = (phantoms / "kits23.json").is_file()  # KiTS23 labels (with cysts) travel with their metadata
            self.log(f"converting {len(cases)} phantoms with the {'KiTS23' if has_cysts else 'KiTS19'} converter")
            (self.work / "nnUNet_raw").mkdir(exist_ok=True)
            convert_kits(
                KITS23 if has_cysts else KITS19, phantoms, "organ_tumor", profile.dataset_id,
                self.dataset.split("_", 1)[1], output_root=self.work / "nnUNet_raw",
            )  # fmt: skip
        dataset_json = json.loads((raw / "dataset.json").read_text())
        self.tolerances_mm = resolve_tolerances(dict(profile.nsd_tolerances_mm), read_task(dataset_json))
        converted = dataset_json["numTraining"]
        if converted != len(cases):
            raise BenchmarkError(f"{raw} holds {converted} cases, the profile {len(cases)}: use a new --work folder")
        preprocessed = self.work / "nnUNet_preprocessed" / self.dataset
        done = preprocessed / "hlfd_benchmark_preprocessed.json"
        if not done.is_file():
            self.log(f"nnUNetv2_plan_and_preprocess -c {profile.configuration}")
            self.run(
                ["nnUNetv2_plan_and_preprocess", "-d", str(profile.dataset_id), "-c", profile.configuration,
                 "-np", "2", "-npfp", "2"], "plan_and_preprocess",
                dict(self.env, nnUNet_n_proc_DA="1"),  # the planner sets torch's threads to it: 0 fails
            )  # fmt: skip
            write_text(done, json.dumps({"configuration": profile.configuration}))
        self.fix_plans(preprocessed / f"{PLANS}.json")
        for variant in profile.variants:
            self.write_variant_plans(preprocessed, variant)
        self.write_splits(preprocessed, cases)

    def fix_plans(self, plans_file: Path) -> None:
        """The profile's plan changes and schedules, written once; refused if they changed since."""
        profile, plans = self.profile, json.loads(plans_file.read_text())
        configuration = plans["configurations"][profile.configuration]
        wanted = profile.schedules
        if SCHEDULE_KEY in configuration:
            written = {key: configuration[key] for key in (SCHEDULE_KEY, TEACHER_SCHEDULE_KEY) if key in configuration}
            if written != wanted:
                raise BenchmarkError(
                    f"{plans_file} holds the schedules {written}, the profile now asks for {wanted}: models already "
                    "trained used the old ones. Use a new --work folder."
                )
            return
        kwargs = configuration["architecture"]["arch_kwargs"]
        if profile.base_features:
            n = kwargs["n_stages"]
            kwargs["features_per_stage"] = [min(profile.base_features * 2**i, profile.max_features) for i in range(n)]
        if profile.batch_size:
            configuration["batch_size"] = profile.batch_size
        plan_schedule(configuration, wanted, TEACHER_TRAINER)  # every student's teacher: the benchmark's
        write_text(plans_file, json.dumps(plans, indent=2))

    def write_variant_plans(self, preprocessed: Path, variant: Variant) -> None:
        """The plans copy of a variant (its options and schedule), written once; refused if they changed since a
        training used them."""
        plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
        configuration = plans["configurations"][self.profile.configuration]
        wanted = {
            # the teacher stays the benchmark's, found under the original plans
            PLANS_BLOCK: {**configuration.get(PLANS_BLOCK, {}), **dict(variant.options), "teacher_plans": PLANS},
            SCHEDULE_KEY: {**configuration.get(SCHEDULE_KEY, {}), **dict(variant.schedule)} or None,
        }
        target = preprocessed / f"{variant.plans}.json"
        if target.is_file():
            copy = json.loads(target.read_text())["configurations"][self.profile.configuration]
            written = {key: copy.get(key) for key in wanted}
            if written == wanted:
                return
            trained = self.started_trainings(ROWS[variant.row], variant.plans)
            if trained:
                raise BenchmarkError(
                    f"{target} holds the options {written}, the variant {variant.name} now asks for {wanted}: "
                    f"{', '.join(map(str, trained))} trained with the old ones. Give the variant a new name."
                )
            self.log(f"variant {variant.name}: nothing trained with its old options {written}; now {wanted}")
        configuration.update({key: value for key, value in wanted.items() if value is not None})
        plans["plans_name"] = variant.plans
        write_text(target, json.dumps(plans, indent=2))

    def write_splits(self, preprocessed: Path, cases: list[str]) -> None:
        splits = benchmark_splits(cases, self.profile.cv_folds, self.profile.test_fraction)
        target, test_file = preprocessed / "splits_final.json", self.work / "test_cases.json"
        if target.is_file():
            if json.loads(target.read_text()) != splits["folds"]:
                raise BenchmarkError(f"{target} differs from the benchmark's split: use a new --work folder")
        else:
            write_text(target, json.dumps(splits["folds"], indent=2))
        write_text(test_file, json.dumps(splits["test"], indent=2))
        raw = self.work / "nnUNet_raw" / self.dataset
        for case in splits["test"]:  # the test set as nnUNetv2_predict and evaluate read it
            for source, folder in ((raw / "imagesTr" / f"{case}_0000.nii.gz", "images"),
                                   (raw / "labelsTr" / f"{case}.nii.gz", "labels")):  # fmt: skip
                destination = self.work / "test" / folder / source.name
                if not destination.is_file():
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, destination)

    # -- results
    def label_names(self) -> dict[str, str]:
        """Label/region value (as nnU-Net's summary.json keys it) -> name, background left out."""
        labels = json.loads((self.work / "nnUNet_raw" / self.dataset / "dataset.json").read_text())["labels"]
        return {str(v): k for k, v in labels.items() if v != 0}

    def validation_dice(self, row: str, folds: tuple[int, ...] | None = None) -> dict[str, np.ndarray] | None:
        """nnU-Net's final validation Dice of a row per label/region name, one value per fold (default: the folds
        run); None until every fold has its ``validation/summary.json``, and for a single-model row (the ensemble
        is not validated, the student of fold 'all' trained on every validation case)."""
        if row in SINGLE_MODEL_ROWS:
            return None
        summaries = [
            self.result_file(row_job(self.profile, "train", row, f)).parent / "validation" / "summary.json"
            for f in (folds or self.profile.folds)
        ]
        if not all(s.is_file() for s in summaries):
            return None
        means = [json.loads(s.read_text())["mean"] for s in summaries]
        return {name: np.array([m[label]["Dice"] for m in means]) for label, name in self.label_names().items()}


def training_log(checkpoint: Path) -> dict:
    """nnU-Net's per-epoch log in a checkpoint: losses, pseudo-Dice, epoch timestamps."""
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]


def epoch_durations(checkpoint: Path) -> list[float]:
    """Seconds per epoch of a trained model, from nnU-Net's timestamps in its checkpoint (a run resumed in pieces
    counts only its epochs)."""
    logging = training_log(checkpoint)
    return [end - start for start, end in zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]
