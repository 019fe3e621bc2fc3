"""The import rules of docs/architecture.md, checked in fresh interpreters (what a module drags in when nnU-Net or a
script imports it first)."""

import subprocess
import sys

import pytest


def loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def under(modules: set[str], *packages: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        # nnU-Net imports every trainer module at each nnUNetv2_train lookup: nothing of evaluation or the commands
        (
            "nnunet_hlfd.trainers",
            ("nnunet_hlfd.evaluation", "nnunet_hlfd.benchmark", "nnunet_hlfd.cli", "nnunet_hlfd.demo", "monai")
            + ("nnunet_hlfd.deploy", "onnx", "onnxruntime"),
        ),
        # deployment sits below evaluation (which times its bundles) and knows nothing of training or distillation
        (
            "nnunet_hlfd.deploy.onnx_predictor",
            ("nnunet_hlfd.evaluation", "nnunet_hlfd.trainers", "nnunet_hlfd.methods", "nnunet_hlfd.teacher", "monai"),
        ),
        # the core: tested on plain tensors and U-Nets, without nnU-Net's training code, teachers or trainers
        (
            "nnunet_hlfd.methods",
            ("nnunetv2.training", "nnunet_hlfd.teacher", "nnunet_hlfd.trainers", "nnunet_hlfd.evaluation"),
        ),
        (
            "nnunet_hlfd.inheritance",
            ("nnunetv2.training", "nnunet_hlfd.teacher", "nnunet_hlfd.trainers", "nnunet_hlfd.evaluation"),
        ),
        # the runtime contract: cheap to read for the harness, the demo and the tests
        ("nnunet_hlfd.runtime", ("nnunetv2.training", "torch", "nnunet_hlfd.trainers", "nnunet_hlfd.teacher")),
    ],
)
def test_a_layer_does_not_import_the_layers_above_it(module, forbidden):
    assert under(loaded_after_import(module), *forbidden) == []


def test_every_trainer_is_written_out_where_grep_finds_it():
    """No generated classes: each trainer nnU-Net can find is defined by a class statement in its own module."""
    import inspect

    from nnunet_hlfd.trainers import TRAINERS

    for name, cls in TRAINERS.items():
        assert cls.__name__ == name and f"class {name}(" in inspect.getsource(sys.modules[cls.__module__]), name
