"""The student plan as an nnU-Net trainer, and the student-alone baseline trainer.

Options are class attributes (variants override them, nnU-Net style) and can be overridden per dataset by a
``"hlfd"`` block in the plans configuration; the resolved options are recorded in the results ``plans.json``.
"""

import copy
import json
import os
from pathlib import Path

import torch
from nnunetv2.paths import nnUNet_results
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_hlfd.adapters import count_parameters
from nnunet_hlfd.capture import unwrap
from nnunet_hlfd.errors import OptionError
from nnunet_hlfd.planning import check_stage_alignment, derive_student_architecture, student_configuration
from nnunet_hlfd.teacher import TEACHER_ENV, TeacherSpec, default_teacher_spec, teacher_spec_from_path

PLANS_BLOCK = "hlfd"
TEACHER_RECORD_FILE = "hlfd_teacher.json"
RECORD_KEYS = ("derived_from", "teacher_used")  # written by the trainer into the results plans, not options
STUDENT_OPTIONS = (
    "width",
    "n_conv_per_stage",
    "teacher",
    "teacher_trainer",
    "teacher_plans",
    "teacher_configuration",
    "teacher_checkpoint",
)


class nnUNetTrainerStudent(nnUNetTrainer):
    """The student alone: the teacher's configuration with fewer features per stage, trained without a teacher.

    The same plan and schedule as the distillation trainers, so it is the fair baseline for them.
    """

    width: float = 0.5  # features per stage = round(teacher's * width)
    n_conv_per_stage: int | list[int] | None = None  # None: as many convolutions/blocks as the teacher
    teacher: str | None = None  # a results model folder, fold folder or checkpoint; None: nnU-Net's layout
    teacher_trainer: str = "nnUNetTrainer"
    teacher_plans: str | None = None  # None: the student's plans
    teacher_configuration: str | None = None  # None: the student's configuration
    teacher_checkpoint: str = "checkpoint_final.pth"

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        plans = self._student_plans(copy.deepcopy(plans), configuration, fold, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)

    # ---- options -----------------------------------------------------------------------------------------
    def option_defaults(self) -> dict:
        return {name: getattr(self, name) for name in STUDENT_OPTIONS}

    def _read_options(self, configuration: dict) -> dict:
        block = configuration.get(PLANS_BLOCK, {})
        defaults = self.option_defaults()
        unknown = sorted(set(block) - set(defaults) - set(RECORD_KEYS))
        if unknown:
            raise OptionError(
                f'Unknown option(s) {unknown} in the plans block "{PLANS_BLOCK}" for {type(self).__name__}. '
                f"Valid options: {sorted(defaults)}."
            )
        self._options_from_plans = set(block) & set(defaults)
        return {name: block.get(name, value) for name, value in defaults.items()}

    # ---- teacher location --------------------------------------------------------------------------------
    def _output_folder(self, plans: dict, configuration: str, fold) -> Path | None:
        if not nnUNet_results.is_set():
            return None
        name = f"{type(self).__name__}__{plans['plans_name']}__{configuration}"
        return Path(nnUNet_results.get()) / plans["dataset_name"] / name / f"fold_{fold}"

    def _teacher_spec(self, plans: dict, configuration: str, fold) -> TeacherSpec:
        options = self.hlfd_options
        checkpoint = options["teacher_checkpoint"]
        requested = None
        if os.environ.get(TEACHER_ENV):
            requested = teacher_spec_from_path(
                os.environ[TEACHER_ENV], fold, checkpoint, f"environment variable {TEACHER_ENV}"
            )
        elif options["teacher"]:
            where = f'plans block "{PLANS_BLOCK}"' if "teacher" in self._options_from_plans else "trainer class"
            requested = teacher_spec_from_path(options["teacher"], fold, checkpoint, where)

        output_folder = self._output_folder(plans, configuration, fold)
        record_file = output_folder / TEACHER_RECORD_FILE if output_folder else None
        if plans.get("continue_training") and record_file is not None and record_file.is_file():
            recorded = TeacherSpec(
                **{**json.loads(record_file.read_text())["spec"], "source": f"recorded in {record_file}"}
            )
            if requested is not None and requested.checkpoint_path != recorded.checkpoint_path:
                raise OptionError(
                    f"This run was started with the teacher {recorded.checkpoint_path}, but {requested.describe()} "
                    f"is requested now. Resume with the recorded teacher (unset {TEACHER_ENV} or the plans option), "
                    "or train into a new results folder."
                )
            return recorded
        if requested is not None:
            return requested
        if not nnUNet_results.is_set():
            raise OptionError("nnUNet_results is not set: the teacher cannot be located (and nnU-Net cannot train).")
        return default_teacher_spec(
            nnUNet_results.get(),
            plans["dataset_name"],
            options["teacher_trainer"],
            options["teacher_plans"] or plans["plans_name"],
            options["teacher_configuration"] or configuration,
            fold,
            checkpoint,
        )

    def _teacher_configuration(
        self, spec: TeacherSpec, plans: dict, configuration: str, own: dict, dataset_json: dict, fold
    ) -> dict:
        """The configuration the student is derived from: the teacher's, read from its results plans.json.

        The baseline needs no trained teacher: without one it derives the student from its own configuration,
        which is what a default-layout teacher is trained with.
        """
        plans_file = Path(spec.model_folder) / "plans.json"
        if not plans_file.is_file():
            self.derived_from = f"its own configuration {configuration} (no teacher plans at {plans_file})"
            return own
        self.derived_from = str(plans_file)
        # results model folders are named <Trainer>__<Plans>__<Configuration>
        folder = Path(spec.model_folder).name
        name = self.hlfd_options["teacher_configuration"] or (
            folder.split("__")[-1] if "__" in folder else configuration
        )
        return PlansManager(json.loads(plans_file.read_text())).get_configuration(name).configuration

    # ---- the student plan --------------------------------------------------------------------------------
    def _student_plans(self, plans: dict, configuration: str, fold, dataset_json: dict) -> dict:
        own = PlansManager(plans).get_configuration(configuration).configuration
        self.hlfd_options = self._read_options(own)
        self.teacher_spec = self._teacher_spec(plans, configuration, fold)
        reference = self._teacher_configuration(self.teacher_spec, plans, configuration, own, dataset_json, fold)
        student_architecture = derive_student_architecture(
            reference["architecture"], self.hlfd_options["width"], self.hlfd_options["n_conv_per_stage"]
        )
        check_stage_alignment(reference["architecture"], student_architecture, reference["patch_size"])
        plans["configurations"][configuration] = student_configuration(
            own, reference, student_architecture, self._plans_record()
        )
        return plans

    def _plans_record(self) -> dict:
        """What the results plans.json records about how this student was made."""
        return {**self.hlfd_options, "derived_from": self.derived_from}

    def initialize(self) -> None:
        super().initialize()
        self._after_network_built()
        self.print_to_log_file(self._parameter_report())

    def _after_network_built(self) -> None:
        """Subclasses attach what lives beside the student (the teacher) here."""

    def student_network(self) -> torch.nn.Module:
        return unwrap(self.network)

    def _parameter_report(self) -> str:
        return f"Student parameters: {count_parameters(self.student_network()):,} (width {self.hlfd_options['width']})"


class nnUNetTrainerStudent_w025(nnUNetTrainerStudent):
    """The quarter-width student alone (baseline of nnUNetTrainerHLFD_w025)."""

    width = 0.25
