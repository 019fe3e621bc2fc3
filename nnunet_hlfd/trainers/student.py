"""The student plan as an nnU-Net trainer, and the student-alone baseline trainer.

Options are class attributes (variants override them, nnU-Net style) and can be overridden per dataset by a
``"hlfd"`` block in the plans configuration; the resolved options are recorded in the results ``plans.json``.
Which teacher a student learns from is decided in :mod:`nnunet_hlfd.teacher`; this module asks it.
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
from nnunet_hlfd.files import replaced_atomically
from nnunet_hlfd.inheritance import inherit_weights
from nnunet_hlfd.planning import check_stage_alignment, derive_student_architecture, student_configuration
from nnunet_hlfd.runtime import PLANS_BLOCK, TEACHER_RECORD_FILE, model_folder
from nnunet_hlfd.splits import TRAINING_CASES_FILE, check_fraction, training_subset
from nnunet_hlfd.teacher import TeacherSpec, read_and_check_teachers, read_teacher_json, resolve_teachers
from nnunet_hlfd.trainers.option_checks import check_student_options
from nnunet_hlfd.trainers.planned_schedule import PlannedSchedule

RECORD_KEYS = ("derived_from", "teacher_used")  # written by the trainer into the results plans, not options
STUDENT_OPTIONS = (
    "width",
    "n_conv_per_stage",
    "teacher",
    "teacher_trainer",
    "teacher_plans",
    "teacher_configuration",
    "teacher_checkpoint",
    "training_fraction",
    "fraction_seed",
    "init",
    "init_importance",
)
INHERITANCE_KEY = "hlfd_inheritance"  # the checkpoint's record of the weights a student started from


class nnUNetTrainerStudent(PlannedSchedule, nnUNetTrainer):
    """The student alone: the teacher's configuration with fewer features per stage, trained without a teacher.

    The same plan and schedule as the distillation trainers (nnU-Net's, or the plans' ``"hlfd_schedule"``), so it
    is the fair baseline for them.
    """

    width: float = 0.5  # features per stage = round(teacher's * width)
    n_conv_per_stage: int | list[int] | None = None  # None: as many convolutions/blocks as the teacher
    teacher: str | None = None  # a results model folder, fold folder or checkpoint; None: nnU-Net's layout
    teacher_trainer: str = "nnUNetTrainer"
    teacher_plans: str | None = None  # None: the student's plans
    teacher_configuration: str | None = None  # None: the student's configuration
    teacher_checkpoint: str = "checkpoint_final.pth"
    training_fraction: float = 1.0  # train on this seeded share of the fold's training cases (the teacher: all)
    fraction_seed: int = 0
    # "teacher": start from the teacher's weights (weight inheritance, nnunet_hlfd.inheritance), then train as usual
    init: str = "random"
    init_importance: str = "l1"  # how the channels a student keeps are chosen: l1 (filter norm) or norm_scale
    many_teachers = False  # True: several teachers (multi-teacher KD), located and checked together
    fold_ensemble = False  # True: by default, every trained fold of the teacher model (a student of fold 'all')
    extra_options: tuple[str, ...] = ()  # options of a subclass beyond STUDENT_OPTIONS (class attributes)

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
    @classmethod
    def student_option_names(cls) -> tuple[str, ...]:
        return (*STUDENT_OPTIONS, *cls.extra_options)

    @classmethod
    def option_defaults(cls) -> dict:
        return {name: getattr(cls, name) for name in cls.student_option_names()}

    @classmethod
    def checked_options(cls, block: dict) -> dict:
        """The options of a plans block: the class defaults overridden by the block, every value checked (an
        OptionError names the key, the value and what is valid). Needs no nnU-Net trainer: the benchmark checks its
        variants with it before anything is prepared."""
        defaults = cls.option_defaults()
        unknown = sorted(set(block) - set(defaults) - set(RECORD_KEYS))
        if unknown:
            raise OptionError(
                f'Unknown option(s) {unknown} in the plans block "{PLANS_BLOCK}" for {cls.__name__}. '
                f"Valid options: {sorted(defaults)}."
            )
        options = {name: block.get(name, value) for name, value in defaults.items()}
        check_fraction(options["training_fraction"])
        check_student_options(options)
        return options

    def _read_options(self, configuration: dict) -> dict:
        block = configuration.get(PLANS_BLOCK, {})
        self._options_from_plans = set(block) & set(self.option_defaults())
        return self.checked_options(block)

    # ---- teacher location --------------------------------------------------------------------------------
    def _output_folder(self, plans: dict, configuration: str, fold) -> Path | None:
        if not nnUNet_results.is_set():
            return None
        trainer, plans_name = type(self).__name__, plans["plans_name"]
        return (
            model_folder(nnUNet_results.get(), plans["dataset_name"], trainer, plans_name, configuration)
            / f"fold_{fold}"
        )

    def _teacher_specs(self, plans: dict, configuration: str, fold) -> list[TeacherSpec]:
        """The teacher(s), found by :func:`nnunet_hlfd.teacher.resolve_teachers` (recorded, requested, default)."""
        output_folder = self._output_folder(plans, configuration, fold)
        record_file = output_folder / TEACHER_RECORD_FILE if output_folder else None
        return resolve_teachers(
            plans,
            configuration,
            fold,
            self.hlfd_options,
            self._options_from_plans,
            record_file,
            self.many_teachers,
            self.fold_ensemble,
        )

    def _reads_teachers(self) -> bool:
        """Does this run need its teacher(s) read and checked (weights included)? The student alone only to inherit."""
        return self.hlfd_options["init"] == "teacher"

    def _teacher_configuration(
        self, spec: TeacherSpec, plans: dict, configuration: str, own: dict, dataset_json: dict, fold
    ) -> dict:
        """The configuration the student is derived from: the teacher's, read from its results plans.json.

        The baseline needs no trained teacher unless it inherits its weights: without one it derives the student
        from its own configuration, which is what a default-layout teacher is trained with.
        """
        if self._reads_teachers():
            # every teacher read and checked before anything is written
            self.teacher_models = read_and_check_teachers(
                self.teacher_specs, plans, own, dataset_json, fold, self.many_teachers
            )
            self.derived_from = str(Path(spec.model_folder) / "plans.json")
            return self.teacher_models[0].configuration_dict()
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
        return PlansManager(read_teacher_json(plans_file)).get_configuration(name).configuration

    # ---- the student plan --------------------------------------------------------------------------------
    def _student_plans(self, plans: dict, configuration: str, fold, dataset_json: dict) -> dict:
        own = PlansManager(plans).get_configuration(configuration).configuration
        self.hlfd_options = self._read_options(own)
        self.teacher_models = []
        self.teacher_specs = self._teacher_specs(plans, configuration, fold)
        self.teacher_spec = self.teacher_specs[0]  # the student is derived from the (first) teacher's plan
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
        record = {**self.hlfd_options, "derived_from": self.derived_from}
        if self.teacher_models:
            used = [teacher.spec.as_record() for teacher in self.teacher_models]
            record["teacher_used"] = used[0] if len(used) == 1 else used
        return record

    # ---- training cases ----------------------------------------------------------------------------------
    def do_split(self) -> tuple[list[str], list[str]]:
        """nnU-Net's split of this fold; with ``training_fraction`` < 1, a seeded share of its training cases
        (validation cases unchanged), recorded in the fold folder."""
        train, val = super().do_split()
        fraction, seed = self.hlfd_options["training_fraction"], self.hlfd_options["fraction_seed"]
        if fraction == 1:
            return train, val
        chosen = training_subset(train, fraction, seed)
        if self.local_rank == 0:
            os.makedirs(self.output_folder, exist_ok=True)
            record = {"training_fraction": fraction, "fraction_seed": seed, "fold_training_cases": len(train)}
            record["training_cases"] = chosen
            (Path(self.output_folder) / TRAINING_CASES_FILE).write_text(json.dumps(record, indent=2))
        self.print_to_log_file(
            f"training_fraction {fraction} (seed {seed}): training on {len(chosen)} of the fold's {len(train)} "
            f"training cases, listed in {TRAINING_CASES_FILE}"
        )
        return chosen, val

    def initialize(self) -> None:
        super().initialize()
        self._after_network_built()
        self.print_to_log_file(self._parameter_report())
        # only a student that will inherit compares its weights at the start of training (see on_train_start)
        self._built_weights = weights_fingerprint(self.student_network()) if self._will_inherit() else None

    # ---- weight inheritance ------------------------------------------------------------------------------
    inheritance_record: dict | None = None  # the teacher and the selection the weights came from
    resumed = False  # True once a checkpoint of this student was loaded (--c): it is not inherited again

    def on_train_start(self) -> None:
        if not self.was_initialized:  # as nnU-Net's on_train_start would, to compare the weights with those built
            self.initialize()
        inherits = self._will_inherit()
        if inherits and weights_fingerprint(self.student_network()) != self._built_weights:
            # nnUNetv2_train -pretrained_weights loads its weights between initialize() and here: inheriting would
            # silently replace them
            raise OptionError(
                'The student has "init": "teacher" (weight inheritance) and was also given start weights '
                "(nnUNetv2_train -pretrained_weights): the teacher's would replace them. Choose one: leave out "
                "-pretrained_weights, or start from random weights (a trainer without _init, or "
                '"init": "random" in the plans\' "hlfd" block; nnUNetTrainerHLFD_paper for HLFD).'
            )
        super().on_train_start()
        if inherits:
            self._inherit_from_teacher()

    def _will_inherit(self) -> bool:
        """Does this run start from the teacher's weights? Not once it resumed from its own checkpoint (--c)."""
        return self.hlfd_options["init"] == "teacher" and not self.resumed

    def _inheritance_teacher(self) -> torch.nn.Module:
        """The trained network the weights are selected from: the (first) teacher, built on the CPU."""
        teacher = self.teacher_models[0]
        network = teacher.build_network(torch.device("cpu"))
        teacher.network_weights = None  # built; no copy kept in memory for the rest of the training
        return network

    def _inherit_from_teacher(self) -> None:
        teacher = self.teacher_models[0]
        record = inherit_weights(
            self._inheritance_teacher(), self.student_network(), self.hlfd_options["init_importance"]
        )
        self.inheritance_record = {"teacher": teacher.record(), **record}
        self.print_to_log_file(
            f"Weight inheritance: the student starts from the weights of {teacher.spec.describe()}, "
            f"{record['groups']} channel groups kept by {record['importance']} importance"
        )

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _checkpoint_extras(self) -> dict:
        """Keys this package adds to nnU-Net's checkpoint (network_weights stays the student's alone, so that stock
        nnU-Net predicts from it)."""
        return {INHERITANCE_KEY: self.inheritance_record} if self.inheritance_record else {}

    def save_checkpoint(self, filename: str) -> None:
        extras = self._checkpoint_extras()
        if self.local_rank != 0 or self.disable_checkpointing or not extras:
            return super().save_checkpoint(filename)
        # One complete file or none: nnU-Net's checkpoint is written under a temporary name, completed there and
        # only then renamed (a kill between two writes to ``filename`` would leave a checkpoint without them).
        with replaced_atomically(Path(filename)) as partial:
            super().save_checkpoint(str(partial))
            checkpoint = torch.load(partial, map_location="cpu", weights_only=False)
            checkpoint.update(extras)
            torch.save(checkpoint, partial)

    def load_checkpoint(self, filename_or_checkpoint: str | dict) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self.resumed = True
        if isinstance(filename_or_checkpoint, dict):
            checkpoint, source = filename_or_checkpoint, "the checkpoint"
        else:  # read once here for every key this package added (nnU-Net's loader keeps its copy to itself)
            checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
            source = str(filename_or_checkpoint)
        self._restore_extras(checkpoint, source)

    def _restore_extras(self, checkpoint: dict, source: str) -> None:
        """What :meth:`_checkpoint_extras` added, taken back from a loaded checkpoint (``source`` names it)."""
        self.inheritance_record = checkpoint.get(INHERITANCE_KEY)  # kept in the checkpoints to come

    def _after_network_built(self) -> None:
        """Subclasses attach what lives beside the student (the teacher) here."""

    def student_network(self) -> torch.nn.Module:
        return unwrap(self.network)

    def _parameter_report(self) -> str:
        return f"Student parameters: {count_parameters(self.student_network()):,} (width {self.hlfd_options['width']})"


def weights_fingerprint(network: torch.nn.Module) -> list[float]:
    """A float64 sum per parameter and buffer: changed by any load of other weights (a cheap stand-in for a copy)."""
    return [float(t.detach().double().sum()) for t in network.state_dict().values()]


class nnUNetTrainerStudent_w025(nnUNetTrainerStudent):
    """The quarter-width student alone (baseline of nnUNetTrainerHLFD_w025)."""

    width = 0.25


class nnUNetTrainerStudent_f050(nnUNetTrainerStudent):
    """The student alone on half of the fold's training cases (baseline of nnUNetTrainerHLFD_f050)."""

    training_fraction = 0.5


class nnUNetTrainerStudent_init(nnUNetTrainerStudent):
    """The half-width student alone, starting from its teacher's weights (weight inheritance): the baseline every
    KD method that also inherits must beat."""

    init = "teacher"


class nnUNetTrainerStudent_w025_init(nnUNetTrainerStudent_w025):
    """The quarter-width student alone, starting from its teacher's weights."""

    init = "teacher"
