"""Read a teacher from its results folder and rebuild it with its own trainer's static builder."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nnunet_hlfd.errors import TeacherNotFoundError
from nnunet_hlfd.files import file_sha256
from nnunet_hlfd.runtime import TEACHER_ENV
from nnunet_hlfd.teacher.locate import TeacherSpec


@dataclass
class Teacher:
    spec: TeacherSpec
    plans: dict
    dataset_json: dict
    configuration: str
    trainer_name: str
    fold: str
    network_weights: dict
    sha256: str

    def configuration_dict(self) -> dict:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans).get_configuration(self.configuration).configuration

    def record(self) -> dict:
        """What identifies this teacher: stored beside the student and in its checkpoints."""
        return {
            **self.spec.as_record(),
            "trainer_name": self.trainer_name,
            "plans_name": self.plans.get("plans_name"),
            "configuration": self.configuration,
            "sha256": self.sha256,
        }

    def build_network(self, device: torch.device) -> nn.Module:
        """The teacher network with deep supervision on and its weights loaded (the Distiller freezes it)."""
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans_manager = PlansManager(self.plans)
        configuration_manager = plans_manager.get_configuration(self.configuration)
        trainer_class = recursive_find_trainer_class_by_name(self.trainer_name)
        network = trainer_class.build_network_architecture(
            plans_manager,
            configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, self.dataset_json),
            plans_manager.get_label_manager(self.dataset_json).num_segmentation_heads,
            enable_deep_supervision=True,
        )
        network.load_state_dict(self.network_weights)
        return network.to(device)


def _how_to_fix(spec: TeacherSpec) -> str:
    return (
        "Train the teacher first, e.g. `nnUNetv2_train DATASET CONFIGURATION FOLD` (it is expected at "
        f"{spec.checkpoint_path}), or point at an existing one with `export {TEACHER_ENV}=/path/to/"
        "nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<Configuration>` or the plans block "
        '"hlfd": {"teacher": ...} (see the README, "Choosing the teacher").'
    )


def read_teacher_json(path: Path) -> dict:
    """A teacher's JSON file, or an error that names it (a file cut by a full disk, or edited by hand)."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TeacherNotFoundError(
            f"The teacher's {path} is not valid JSON ({e}): restore it from the teacher's training (nnU-Net writes "
            "it into the results folder), or choose another teacher."
        ) from None


def read_teacher(spec: TeacherSpec) -> Teacher:
    """Load everything needed to check and rebuild the teacher; raise a clear error if anything is missing."""
    model_folder = Path(spec.model_folder)
    for name in ("plans.json", "dataset.json"):
        if not (model_folder / name).is_file():
            raise TeacherNotFoundError(
                f"No teacher found: {model_folder / name} is missing (teacher chosen by: {spec.source}). "
                + _how_to_fix(spec)
            )
    if not spec.checkpoint_path.is_file():
        present = sorted(p.name for p in spec.fold_folder.glob("*.pth")) if spec.fold_folder.is_dir() else []
        hint = f" Checkpoints present there: {present}." if present else ""
        raise TeacherNotFoundError(
            f"No teacher checkpoint at {spec.checkpoint_path} (teacher chosen by: {spec.source}).{hint} "
            + _how_to_fix(spec)
        )
    try:
        checkpoint = torch.load(spec.checkpoint_path, map_location="cpu", weights_only=False)
        weights = checkpoint["network_weights"]
        init_args = checkpoint["init_args"]
    except Exception as e:  # a truncated or foreign file: say which one
        raise TeacherNotFoundError(
            f"The teacher checkpoint {spec.checkpoint_path} cannot be read as an nnU-Net checkpoint ({e!r}). "
            "Re-run or finish the teacher's training, or choose another checkpoint."
        ) from e
    return Teacher(
        spec=spec,
        plans=read_teacher_json(model_folder / "plans.json"),
        dataset_json=read_teacher_json(model_folder / "dataset.json"),
        configuration=init_args["configuration"],
        trainer_name=checkpoint["trainer_name"],
        fold=str(init_args["fold"]),
        network_weights=weights,
        sha256=file_sha256(spec.checkpoint_path),
    )
