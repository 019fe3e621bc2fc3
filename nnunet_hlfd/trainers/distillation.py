"""The distillation trainer: the student plan plus a frozen teacher and a method's losses in every step.

Everything nnU-Net does stays nnU-Net's: data, augmentation, deep supervision, validation, export. This
class adds the teacher (checked before anything is written), feature capture on both networks, the
method's adapters (optimised, clipped and checkpointed with the student, DDP-wrapped on their own), the
distillation terms in ``train_step`` and their per-epoch logging. A method is chosen by ``build_method``.
"""

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import autocast

from nnunet_hlfd.adapters import count_parameters
from nnunet_hlfd.capture import unwrap
from nnunet_hlfd.errors import OptionError, TeacherMismatchError
from nnunet_hlfd.methods import DistillationMethod, Distiller
from nnunet_hlfd.methods.base import by_decoder_stage, valid_masks
from nnunet_hlfd.plots import plot_training_curves
from nnunet_hlfd.runtime import FINAL_CHECKPOINT, OVERWRITE_ENV, TEACHER_RECORD_FILE
from nnunet_hlfd.teacher import read_teacher_json
from nnunet_hlfd.trainers.option_checks import build_config
from nnunet_hlfd.trainers.student import nnUNetTrainerStudent

CHECKPOINT_KEY = "distillation"
GRAD_CLIP = 12  # nnU-Net's


def backward_and_step(loss: torch.Tensor, optimizer, grad_scaler, parameters: list, max_norm: float = GRAD_CLIP):
    """nnU-Net's update (optional fp16 grad scaler, clip at 12, step) over all trainable parameters: the
    student's and the adapters', which nnU-Net's own train_step would leave unclipped."""
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        optimizer.step()


class nnUNetTrainerDistillation(nnUNetTrainerStudent):
    """Base class of the KD trainers. A subclass declares its method and that method's config: the config's
    fields become options (class defaults, overridable per dataset by the plans block, recorded)."""

    method_class: type[DistillationMethod]
    config = None  # a frozen dataclass instance: the method's hyper-parameters

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # the config's fields and the student's options share one plans block: a field of the same name would
        # silently take the option's value (or the option the field's)
        clashes = sorted(set(asdict(cls.config)) & set(cls.student_option_names())) if cls.config else []
        if clashes:
            raise TypeError(
                f"{cls.__name__}: the fields {clashes} of {type(cls.config).__name__} are also student options; "
                "rename them."
            )

    @classmethod
    def option_defaults(cls) -> dict:
        return {**super().option_defaults(), **asdict(cls.config)}

    @classmethod
    def checked_options(cls, block: dict) -> dict:
        options = super().checked_options(block)
        build_config(cls.config, options)  # the method's options are refused here, before nnU-Net writes anything
        return options

    def build_method(self, options: dict) -> DistillationMethod:
        return self.method_class(build_config(self.config, options))

    # ---- a finished student, run again without --c ------------------------------------------------------------
    def _student_plans(self, plans: dict, configuration: str, fold, dataset_json: dict) -> dict:
        """Without --c over a finished student, nnUNetv2_train is either ``--val`` (which needs the student only:
        its teacher may be gone) or a new training over it, which :meth:`on_train_start` refuses unless asked for.
        Either way the student's plan is the one recorded beside it, and no teacher is read."""
        self.finished_student = None if plans.get("continue_training") else self._finished(plans, configuration, fold)
        if self.finished_student is None:
            return super()._student_plans(plans, configuration, fold, dataset_json)
        self.hlfd_options = self._read_options(PlansManager(plans).get_configuration(configuration).configuration)
        self.teacher_models, self.teacher_specs, self.teacher_spec = [], [], None
        recorded = PlansManager(read_teacher_json(self.finished_student.parent.parent / "plans.json"))
        plans["configurations"][configuration] = recorded.get_configuration(configuration).configuration
        return plans

    def _finished(self, plans: dict, configuration: str, fold) -> Path | None:
        """The final checkpoint of a finished student in this run's fold folder (None: none, or overwriting it
        was asked for with the environment variable)."""
        folder = self._output_folder(plans, configuration, fold)
        final = folder / FINAL_CHECKPOINT if folder is not None else None
        if final is None or not final.is_file() or not (folder.parent / "plans.json").is_file():
            return None
        return None if os.environ.get(OVERWRITE_ENV, "").lower() in ("1", "true", "t") else final

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.method = self.build_method(self.hlfd_options)
        self.distiller = Distiller(self.method, regions=self.label_manager.has_regions)
        self.kd_log_keys = [f"kd_{name}" for name in self.method.term_names] + ["kd_total"]
        self._add_log_keys()

    def _reads_teachers(self) -> bool:
        return True

    # ---- set-up --------------------------------------------------------------------------------------------
    def _do_i_compile(self) -> bool:
        # nnU-Net asks this right after building self.network and before compiling and DDP-wrapping it: the
        # one point where forward hooks can be attached ahead of torch.compile.
        if self.network is not None and self.teacher_models and self.distiller.student_recorder is None:
            teachers = []
            for teacher in self.teacher_models:
                teachers.append(teacher.build_network(self.device))
                teacher.network_weights = None  # built; no second copy in memory
            self.distiller.attach(self.network, teachers, self.label_manager.num_segmentation_heads)
            if self.distiller.adapters is not None:
                self.distiller.adapters.to(self.device)
        # Compilation of hooked students is not verified yet: only when asked for explicitly.
        return super()._do_i_compile() and self._compile_requested()

    @staticmethod
    def _compile_requested() -> bool:
        return os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t")

    def configure_optimizers(self):
        optimizer, lr_scheduler = super().configure_optimizers()
        if count_parameters(self.distiller.adapters):
            # same SGD settings; PolyLRScheduler sets the lr of every param group
            optimizer.add_param_group({"params": list(self.distiller.adapters.parameters())})
        return optimizer, lr_scheduler

    def _after_network_built(self) -> None:
        if self.is_ddp:
            self.distiller.wrap_adapters_for_ddp(self.device, self.local_rank)

    def _parameter_report(self) -> str:
        if not self.teacher_models:
            return f"{super()._parameter_report()}; a finished student, loaded without its teacher (validation)"
        teacher = count_parameters(self.distiller.teacher)
        student = count_parameters(self.student_network())
        adapters = count_parameters(self.distiller.adapters)
        described = "".join(f"Teacher: {t.spec.describe()}\n" for t in self.teacher_models)
        if len(self.teacher_models) > 1:
            all_teachers = sum(map(count_parameters, self.distiller.teachers))
            described += f"{len(self.teacher_models)} teachers, {all_teachers:,} parameters together\n"
        return (
            f"{described}Teacher parameters: {teacher:,}; student parameters: {student:,} "
            f"(width {self.hlfd_options['width']}); student/teacher ratio: {student / teacher:.3f}; "
            f"trainable adapter parameters: {adapters:,}"
        )

    def on_train_start(self) -> None:
        if self.finished_student is not None:
            raise OptionError(
                f"{self.finished_student.parent} holds a finished student ({FINAL_CHECKPOINT}): nnUNetv2_train "
                "without --c would train it again from scratch over it (and record the teacher of this run). To "
                f"validate it again, add --val. To train it again, set {OVERWRITE_ENV}=1 for that run, or move its "
                "fold folder away first."
            )
        super().on_train_start()
        if self.local_rank == 0:
            teachers = [{"spec": t.spec.as_record(), "teacher": t.record()} for t in self.teacher_models]
            record = {**teachers[0], "teachers": teachers}
            (Path(self.output_folder) / TEACHER_RECORD_FILE).write_text(json.dumps(record, indent=2))

    # ---- the step ----------------------------------------------------------------------------------------
    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = list(self.network.parameters())
        if self.distiller.adapters is not None:
            params += list(self.distiller.adapters.parameters())
        return params

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = (
            [t.to(self.device, non_blocking=True) for t in target]
            if isinstance(target, list)
            else target.to(self.device)
        )

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output, teacher = self.distiller.forward(self.network, data)
            seg_loss = self.loss(output, target)
            targets = target if isinstance(target, list) else [target]
            valid = valid_masks(
                targets, self.distiller.n_stages, self.label_manager.ignore_label, self.label_manager.has_regions
            )
            terms = self.distiller.losses(
                output,
                teacher,
                valid,
                by_decoder_stage(targets, self.distiller.n_stages),
                progress=self.current_epoch / self.num_epochs,  # for a ramp-up of the distillation weights
            )
            loss = seg_loss + terms["total"]

        backward_and_step(loss, self.optimizer, self.grad_scaler, self._trainable_parameters())
        logged = {f"kd_{name}": terms[name] for name in self.method.term_names} | {"kd_total": terms["total"]}
        return {"loss": loss.detach().cpu().numpy(), **{k: v.detach().cpu().numpy() for k, v in logged.items()}}

    # ---- logging -----------------------------------------------------------------------------------------
    def _add_log_keys(self) -> None:
        """nnU-Net's logger accepts only known keys, one value per epoch: pad keys a checkpoint lacks."""
        log = self.logger.local_logger.my_fantastic_logging
        epochs = len(log["train_losses"])
        for key in self.kd_log_keys:
            log.setdefault(key, [])
            log[key] += [float("nan")] * (epochs - len(log[key]))

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        values = {key: np.array([o[key] for o in train_outputs], dtype=np.float64) for key in self.kd_log_keys}
        if self.is_ddp:  # one collective for all terms
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, values)
            values = {key: np.concatenate([g[key] for g in gathered]) for key in self.kd_log_keys}
        means = {key: float(v.mean()) for key, v in values.items()}
        for key, mean in means.items():
            self.logger.log(key, mean, self.current_epoch)
        self.print_to_log_file("distillation terms: " + ", ".join(f"{k[3:]} {v:.4f}" for k, v in means.items()))

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        if self.local_rank == 0:
            self._plot_kd_progress()

    def _plot_kd_progress(self) -> None:
        log = self.logger.local_logger.my_fantastic_logging
        title = f"{self.method.name.upper()} distillation terms per epoch ({type(self).__name__}; total weighted)"
        plot_training_curves(
            {type(self).__name__: log}, Path(self.output_folder) / "kd_progress.png", self.kd_log_keys, title
        )

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _checkpoint_extras(self) -> dict:
        adapters = unwrap(self.distiller.adapters) if self.distiller.adapters is not None else None
        return {
            **super()._checkpoint_extras(),
            CHECKPOINT_KEY: {
                "method": self.method.name,
                "options": self.hlfd_options,
                "teacher": self.teacher_models[0].record(),
                "teachers": [teacher.record() for teacher in self.teacher_models],
                "adapters": adapters.state_dict() if adapters is not None else None,
            },
        }

    def _inheritance_teacher(self) -> torch.nn.Module:
        return self.distiller.teacher  # built and frozen already

    def load_checkpoint(self, filename_or_checkpoint: str | dict) -> None:
        if not self.teacher_models:  # --val of a finished student: the student's weights are all it needs
            if not self.was_initialized:
                self.initialize()  # as nnU-Net's load_checkpoint would, so that the optimizer exists
            # the optimizer's state (with the adapters' parameter group) is of no use to validation
            self.optimizer.load_state_dict = lambda state: None
        # nnunetv2 2.8.1 cannot load from a dict (UnboundLocalError), so always go through the path
        super().load_checkpoint(filename_or_checkpoint)  # and through _restore_extras below
        self._add_log_keys()

    def _restore_extras(self, checkpoint: dict, source: str) -> None:
        super()._restore_extras(checkpoint, source)
        if not self.teacher_models:  # --val of a finished student: no teacher to check, no adapters to train
            return
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise TeacherMismatchError(
                f"{source} has no distillation state: it was not written by a distillation trainer."
            )
        recorded = state.get("teachers", [state["teacher"]])
        if len(recorded) != len(self.teacher_models):
            raise TeacherMismatchError(
                f"{source} was trained with {len(recorded)} teacher(s), this run has "
                f"{len(self.teacher_models)}: train into a new results folder."
            )
        for then, teacher in zip(recorded, self.teacher_models):
            if then["sha256"] != teacher.sha256:
                raise TeacherMismatchError(
                    f"The teacher checkpoint {teacher.spec.checkpoint_path} has changed since this student was "
                    f"trained from it (sha256 {then['sha256'][:12]}… then, {teacher.sha256[:12]}… now). "
                    "Resuming would mix two teachers: restore that teacher or train into a new results folder."
                )
        if self.distiller.adapters is not None:
            unwrap(self.distiller.adapters).load_state_dict(state["adapters"])
