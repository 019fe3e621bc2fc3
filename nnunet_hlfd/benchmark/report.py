"""The benchmark's report: the test-set comparison, cross-validation, training curves, efficiency, step overhead
and figures, as markdown with the command that reproduces it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nnunet_hlfd.benchmark.jobs import row_job
from nnunet_hlfd.benchmark.phantom import plot_phantom_samples
from nnunet_hlfd.benchmark.profiles import (
    ALL_FOLDS,
    HALF_TEACHERS,
    PROFILES,
    REFERENCE_ROWS,
    ROWS,
    SINGLE_MODEL_ROWS,
    TEACHER_TRAINER,
    Profile,
)
from nnunet_hlfd.benchmark.workspace import Workspace, epoch_durations, training_log
from nnunet_hlfd.files import write_text


class Report:
    """The markdown report of a workspace whose jobs are done (``Report(workspace).write()``)."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.profile, self.work = workspace.profile, workspace.work

    def cross_validation(self) -> str:
        """nnU-Net's own validation Dice of every row on its fold's validation cases: what a configuration may be
        chosen on, leaving the test set to the comparison."""
        names = self.workspace.label_names()
        folds = self.profile.folds
        lines = [
            "| run | " + " | ".join(f"{n} Dice" for n in names.values()) + " | vs | "
            + " | ".join(f"{n} Δ per fold" for n in names.values()) + " |",
            "|---|" + "---|" * (2 * len(names) + 1),
        ]  # fmt: skip
        dice = {row: d for row in self.profile.rows if (d := self.workspace.validation_dice(row)) is not None}
        baselines = {}  # each row against the random-init student of its width, as on the test set
        for baseline, runs in self.profile.comparisons().items():
            for run in runs:
                if run not in (baseline, "teacher"):
                    baselines.setdefault(run, baseline)
        for row, values in dice.items():
            cells = [f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}" for v in values.values()]
            baseline = baselines.get(row, "student")
            if baseline in dice and row != baseline:
                cells.append(baseline)
                cells += [" ".join(f"{d:+.3f}" for d in values[n] - dice[baseline][n]) for n in names.values()]
            else:
                cells += [""] * (len(names) + 1)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append(
            f"\nmean ± sample std over folds {list(folds)} of nnU-Net's final validation (`fold_X/validation/"
            "summary.json`, each fold's own validation cases, no test case); Δ against the random-init student of "
            "the row's width."
        )
        return "\n".join(lines)

    def training_curves(self, onset: float = 0.05) -> str:
        """When each row learns each structure: nnU-Net's per-epoch pseudo-Dice (its validation iterations), mean
        over the folds of a window of a tenth of the epochs around each quarter of the schedule; the first epoch at
        which the pseudo-Dice reaches ``onset``, and the first at which its windowed mean reaches the teacher's final
        level (the mean of the last tenth of the teacher's epochs on that fold), per fold. A flat last quarter means
        the schedule was long enough for that row."""
        names = list(self.workspace.label_names().values())
        quarters = (0.25, 0.5, 0.75, 1.0)
        header = [f"{n} {int(q * 100)} %" for n in names for q in quarters]
        header += [f"{n} ≥ {onset}, per fold" for n in names] + [f"{n} ≥ teacher, per fold" for n in names]
        lines = ["| run | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        teachers = self._pseudo_dice_per_fold("teacher")
        for row in self.profile.rows:
            if row in SINGLE_MODEL_ROWS:  # no training, or one on fold 'all' whose validation cases it trained on
                continue
            curves = teachers if row == "teacher" else self._pseudo_dice_per_fold(row)
            if curves is None:
                continue
            cells = []
            for k in range(len(names)):
                for q in quarters:
                    values = []
                    for curve in curves:
                        width = max(1, len(curve) // 10)
                        end = max(width, round(q * len(curve)))
                        values.append(curve[end - width : end, k].mean())
                    cells.append(f"{np.mean(values):.3f}")
            for k in range(len(names)):
                first = [next((str(e) for e, v in enumerate(c[:, k]) if v >= onset), "—") for c in curves]
                cells.append("/".join(first))
            for k in range(len(names)):
                if teachers is None or row == "teacher":
                    cells.append("")
                    continue
                levels = [t[-max(1, len(t) // 10) :, k].mean() for t in teachers]
                cells.append("/".join(_first_window_at(c[:, k], level) for c, level in zip(curves, levels)))
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append(
            "\nnnU-Net's pseudo-Dice per epoch (foreground-oversampled validation patches, not whole cases), from "
            "`checkpoint_final.pth`: the mean over folds of the last tenth of the epochs up to 25/50/75/100 % of each "
            f"row's schedule; the first epoch (from 0) reaching {onset} per fold; the first epoch at which the mean "
            "of the last tenth of the row's schedule up to it reaches the teacher's final level on that fold (the "
            "mean of the teacher's last tenth), per fold (— never)."
        )
        return "\n".join(lines)

    def _pseudo_dice_per_fold(self, row: str) -> list[np.ndarray] | None:
        """(epochs, labels/regions) pseudo-Dice that nnU-Net logged while training the row, per fold run; None until
        every fold has trained."""
        files = [self.workspace.result_file(row_job(self.profile, "train", row, f)) for f in self.profile.folds]
        if not all(f.is_file() for f in files):
            return None
        return [np.array(training_log(f)["dice_per_class_or_region"], dtype=np.float64) for f in files]

    def training_time(self) -> str:
        """What each row costs to train: the sum of its epochs' durations per model, mean over its models."""
        lines = ["| run | models | epochs | train min per model |", "|---|---|---|---|"]
        for row in self.profile.rows:
            if SINGLE_MODEL_ROWS.get(row) == ALL_FOLDS:  # the teacher's folds together: no training of its own
                continue
            files = [
                self.workspace.result_file(row_job(self.profile, "train", row, f)) for f in self.profile.row_folds(row)
            ]
            if not all(f.is_file() for f in files):
                continue
            durations = [epoch_durations(f) for f in files]
            minutes = np.mean([sum(d) / 60 for d in durations])
            lines.append(f"| {row} | {len(files)} | {np.mean([len(d) for d in durations]):.0f} | {minutes:.1f} |")
        lines.append(
            f"\nOn {self.profile.device}, as measured during the run (other work on the machine slows it: compare rows "
            "of one run, not runs)."
        )
        return "\n".join(lines)

    def write(self, output: Path | None = None) -> Path:
        from nnunet_hlfd.evaluation.compare import compare_runs, format_markdown, load_run, write_comparison
        from nnunet_hlfd.evaluation.figures import plot_case_contours

        profile, folder = self.profile, self.work / "report"
        folder.mkdir(parents=True, exist_ok=True)
        runs = {
            row: load_run(row, [self.workspace.predictions(row, f) for f in profile.row_folds(row)])
            for row in profile.rows
        }
        sections, test = [], {}
        for baseline, names in profile.comparisons().items():
            teacher = None if baseline == "teacher" else "teacher"  # against the teacher itself: no gap to recover
            rows = compare_runs([runs[name] for name in names], baseline, teacher)
            markdown = format_markdown(rows, baseline, teacher, runs["teacher"].tolerances_mm)
            # the comparison against the half-width student in report/, each other one in report/vs_BASELINE/
            write_comparison(rows, markdown, folder if not sections else folder / f"vs_{baseline}")
            sections.append(markdown if not sections else f"## Test-set comparison against `{baseline}`\n\n{markdown}")
            for run, dice in dice_summary(rows).items():  # a run's Δ, p and gap: against the baseline of its width
                if run not in test:
                    test[run] = {name: {**values, "baseline": baseline} for name, values in dice.items()}
        comparison = "\n".join(sections)
        summary = {
            "profile": profile.name,
            "folds": list(profile.folds),
            "test": test,
            "cross_validation_dice": {
                row: {name: [float(x) for x in values] for name, values in dice.items()}
                for row in profile.rows
                if (dice := self.workspace.validation_dice(row)) is not None
            },
        }
        write_text(folder / "summary.json", json.dumps(summary, indent=2))

        efficiency = self._measured_once("efficiency.md", self._efficiency)
        step_overhead = self._measured_once("step_overhead.md", self._step_overhead)

        test_cases = json.loads((self.work / "test_cases.json").read_text())
        plot_phantom_samples(self.work / "phantoms", test_cases[:4], folder / "phantom_samples.png")
        shown = [r for r in ("teacher", "student", "hlfd") if r in profile.rows]
        figures = plot_case_contours(
            self.work / "test" / "images", self.work / "test" / "labels",
            {r: self.workspace.predictions(r, profile.folds[0]) for r in shown}, folder / "cases", cases=test_cases[:1],
        )  # fmt: skip
        markdown = self._markdown(
            comparison,
            self.cross_validation() + "\n\n" + self.training_curves() + "\n\n" + self.training_time(),
            efficiency,
            step_overhead,
            [folder / "phantom_samples.png", *figures],
        )
        target = Path(output) if output else folder / "benchmark_report.md"
        write_text(target, markdown)
        return target

    def _measured_once(self, name: str, measure: Callable[[], str]) -> str:
        """Measurements that do not depend on the rows: kept in WORK/report, a continued run does not repeat them."""
        cached = self.work / "report" / name
        if not cached.is_file():
            write_text(cached, measure())
        return cached.read_text()

    def _efficiency(self) -> str:
        from nnunet_hlfd.evaluation.efficiency import ModelSpec, format_markdown, hardware, measure_efficiency

        if not self.profile.efficiency_cases:
            return f"Not measured in the `{self.profile.name}` profile."
        self.workspace.log("efficiency of the teacher and the student")
        fold = (str(self.profile.folds[0]),)
        models = [
            ModelSpec("teacher", self.workspace.model_folder(TEACHER_TRAINER), fold),
            ModelSpec("student", self.workspace.model_folder(ROWS["student"]), fold),
        ]
        devices = [self.profile.device]
        measured = measure_efficiency(models, devices, images=self.work / "test" / "images",
                                      num_cases=self.profile.efficiency_cases, progress=False)  # fmt: skip
        return format_markdown(measured, 3, hardware(devices))

    def _step_overhead(self) -> str:
        profile = self.profile
        if not profile.step_overhead_iterations:
            return f"Not measured in the `{profile.name}` profile."
        self.workspace.log("step-overhead benchmark")
        plan = "2d" if profile.configuration == "2d" else "3d"
        result = subprocess.run(
            [sys.executable, "-m", "nnunet_hlfd.benchmark.step_overhead", "--device", profile.device, "--plans", plan,
             "--iterations", str(profile.step_overhead_iterations), "--warmup", "1"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return result.stdout.strip()

    def _markdown(
        self, comparison: str, cross_validation: str, efficiency: str, step_overhead: str, figures: list[Path]
    ) -> str:
        from nnunet_hlfd.evaluation.efficiency import hardware

        profile = self.profile
        splits = json.loads(
            (self.work / "nnUNet_preprocessed" / self.workspace.dataset / "splits_final.json").read_text()
        )
        test = json.loads((self.work / "test_cases.json").read_text())
        development = len(splits[0]["train"]) + len(splits[0]["val"])
        versions = ", ".join(f"{p} {_version(p)}" for p in ("nnunet_hlfd", "nnunetv2", "torch", "monai"))
        versions += f", Python {platform.python_version()}"
        lines = [
            f"# KiTS phantom benchmark, profile `{profile.name}`",
            "",
            f"Command: `{self.command()}`",
            "",
            f"Hardware: {hardware([profile.device])}. Versions: {versions}.",
            "",
            f"Data: {len(test) + development} phantoms from the real label maps in `{self.workspace.labels}` "
            f"({asdict(profile.phantom)}); {len(test)} held-out test cases; {profile.cv_folds}-fold "
            f"cross-validation on the other {development}, folds {list(profile.folds)} run (the folds are the "
            "repeats: mean ± std over folds). "
            f"Configuration `{profile.configuration}`; plan changes: {self._plan_changes()}; schedule "
            f"{self._schedule_description()}."
            + (
                f" Multi-teacher KD: {HALF_TEACHERS} limit-trained teachers per fold, each on a disjoint half of "
                "the fold's training cases."
                if "multi_teacher" in profile.rows
                else ""
            ),
            "",
            "## Test-set comparison",
            "",
            comparison,
            "",
            "## Cross-validation (each fold's validation cases)",
            "",
            cross_validation,
            "",
            *self._variant_lines(),
            "## Efficiency (teacher and student, test cases)",
            "",
            efficiency,
            "",
            "## Step overhead",
            "",
            step_overhead,
            "",
            "## Figures",
            "",
            *[f"![{p.stem}]({p.relative_to(self.work / 'report')})" for p in figures],
            "",
        ]
        return "\n".join(lines)

    def command(self) -> str:
        return reproducing_command(self.profile, self.workspace.labels, self.work)

    def _variant_lines(self) -> list[str]:
        variants = [
            f"- `{v.name}`: the `{v.row}` trainer with {v.options_json} (plans `{v.plans}`)"
            for v in self.profile.variants
        ]
        return ["Variants:", "", *variants, ""] if variants else []

    def _schedule_description(self) -> str:
        p = self.profile
        rows = f"{asdict(p.schedule)} for every row"
        if p.teacher_schedule is None:
            return f"{rows} and the teacher"
        minimum = ", ".join(f"{name} ≥ {dice}" for name, dice in p.teacher_min_dice)
        teacher = f"the teacher {asdict(p.teacher_schedule)}"
        return f"{rows}, {teacher}" + (f" (its cross-validation Dice checked first: {minimum})" if minimum else "")

    def _plan_changes(self) -> str:
        p = self.profile
        if not p.base_features and not p.batch_size:
            return "none (nnU-Net's plans)"
        return f"features per stage min({p.base_features}·2^i, {p.max_features}), batch size {p.batch_size}"


def _first_window_at(curve: np.ndarray, level: float) -> str:
    """The first epoch whose trailing window (a tenth of the schedule) has a mean pseudo-Dice ≥ ``level``, or —."""
    width = max(1, len(curve) // 10)
    means = np.convolve(curve, np.ones(width) / width, mode="valid")  # means[i]: epochs i .. i + width - 1
    reached = np.flatnonzero(means >= level)
    return str(reached[0] + width - 1) if reached.size else "—"


def dice_summary(rows: list[dict]) -> dict:
    """Per run and label/region, the test-set Dice of a comparison: mean and std over the folds, Δ against the
    student alone with its paired Wilcoxon p and number of pairs, and the gap recovered (or why it is not shown)."""
    keys = ("mean", "std", "repeats", "cases", "delta_vs_baseline", "p_value", "paired_cases")
    keys += ("gap_recovered", "gap_withheld")
    summary: dict = {}
    for row in rows:
        if row["metric"] == "Dice":
            summary.setdefault(row["run"], {})[row["class"]] = {key: row.get(key) for key in keys}
    return summary


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def reproducing_command(profile: Profile, labels: Path, work: Path) -> str:
    """The command that reproduces a report (rows and variants included)."""
    words = ["nnunet_hlfd benchmark", str(labels), "--profile", profile.name, "--work", str(work)]
    variants = [v.name for v in profile.variants]
    rows = [r for r in profile.rows if r not in variants]
    if rows != list(PROFILES[profile.name].rows):
        words += ["--rows", *[r for r in rows if r not in REFERENCE_ROWS]]
    if profile.folds != PROFILES[profile.name].folds:
        words += ["--folds", *map(str, profile.folds)]
    for v in profile.variants:
        words += ["--variant", v.name, v.row, f"'{v.options_json}'"]
    if profile.nsd_tolerances_mm != PROFILES[profile.name].nsd_tolerances_mm:
        words += ["--tolerance-mm", *(f"{k}={mm!r}" if k else f"{mm!r}" for k, mm in profile.nsd_tolerances_mm)]
    return " ".join(words)
