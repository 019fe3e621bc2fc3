"""Shared helpers: small nnU-Net U-Nets and plans, built the way nnU-Net builds them."""

import contextlib
import copy
import csv
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_hlfd.demo.pipeline import DEBUG_SCHEDULE, write_schedule
from nnunet_hlfd.demo.synthetic import make_synthetic_dataset
from nnunet_hlfd.runtime import model_folder as runtime_model_folder
from nnunet_hlfd.runtime import nnunet_environment

STRIDES = {
    3: [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],  # anisotropic first pooling, as nnU-Net plans it
    2: [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]],
}
PATCH = {3: (8, 16, 16), 2: (32, 32)}


def make_unet(dim: int, base: int, residual: bool = False, num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    strides = STRIDES[dim]
    n = len(strides)
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    common = dict(
        input_channels=in_channels,
        n_stages=n,
        features_per_stage=[base * 2**i for i in range(n)],
        conv_op=conv,
        kernel_sizes=[[3] * dim] * n,
        strides=strides,
        num_classes=num_classes,
        n_conv_per_stage_decoder=[1] * (n - 1),
        conv_bias=True,
        norm_op=norm,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )
    if residual:
        return ResidualEncoderUNet(n_blocks_per_stage=[1] * n, **common)
    return PlainConvUNet(n_conv_per_stage=[2] * n, **common)


def targets_for(output, regions: bool, ignore: bool):
    """nnU-Net-style deep-supervision targets: labels (B,1,...) or region masks (+ ignore channel)."""
    targets = []
    for o in output:
        shape = (o.shape[0], 1, *o.shape[2:])
        if regions:
            t = (torch.rand(o.shape[0], o.shape[1] + 1, *o.shape[2:]) > 0.5).float()
            t[:, -1] = (torch.rand(shape[0], *shape[2:]) > 0.8).float() if ignore else 0
        else:
            t = torch.randint(0, 4 if ignore else 3, shape).float()
        targets.append(t)
    return targets


def tiny_plans(dataset_name: str = "Dataset990_HLFDSynthetic", n_stages: int = 4) -> dict:
    """Plans in nnU-Net 2.8.1's format for a 16x32x32 CT dataset (as its planner writes them)."""
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]][:n_stages]
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [16, 32, 32],
        "median_image_size_in_voxels": [16.0, 32.0, 32.0],
        "spacing": [2.0, 0.8, 0.8],
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": [8 * 2**i for i in range(n_stages)],
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * (n_stages - 1),
                "strides": strides,
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.0, 0.8, 0.8],
        "original_median_shape_after_transp": [16, 32, 32],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 200.0,
                "mean": 46.7,
                "median": 47.8,
                "min": -121.4,
                "percentile_00_5": -70.1,
                "percentile_99_5": 159.2,
                "std": 45.7,
            }
        },
    }


TINY_DATASET_JSON = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "organ": 1, "tumour": 2},
    "numTraining": 6,
    "file_ending": ".nii.gz",
}


@pytest.fixture
def plans():
    return copy.deepcopy(tiny_plans())


@pytest.fixture
def dataset_json():
    return copy.deepcopy(TINY_DATASET_JSON)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # two test processes share the two cores: one thread each (tiny networks gain nothing from more), and the same
    # for the nnU-Net commands they start (see nnunet_environment's callers)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data (real KiTS label maps), or skip the test with the reason."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the real KiTS label maps live in ../shared/data beside the repository")
    return folder


def run(args: list[str], env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (nnU-Net's CLI); on failure show the end of its output."""
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def nnunet_metrics(labels: Path, predictions: Path, model: Path) -> dict:
    """nnU-Net's own evaluation of a folder of predictions (``compute_metrics`` per case, as
    ``nnUNetv2_evaluate_folder`` computes it, without its worker pool): ``{"metric_per_case": [...]}``."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    dataset_json = json.loads((model / "dataset.json").read_text())
    files = sorted(predictions.glob(f"*{dataset_json['file_ending']}"))
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(files[0]))()
    labels_manager = PlansManager(str(model / "plans.json")).get_label_manager(dataset_json)
    classes = labels_manager.foreground_regions if labels_manager.has_regions else labels_manager.foreground_labels
    return {
        "metric_per_case": [
            compute_metrics(str(labels / p.name), str(p), reader, classes, labels_manager.ignore_label) for p in files
        ]
    }


def assert_same_dice(nnunet_summary: dict, per_case_csv: Path) -> None:
    """Per-case Dice of nnU-Net's summary.json and of ``nnunet_hlfd evaluate``'s CSV agree; nnU-Net's NaN
    (both masks empty) is ours 1."""
    from nnunetv2.evaluation.evaluate_predictions import key_to_label_or_region

    with open(per_case_csv) as f:
        ours = {(r["case"], r["label_or_region"]): float(r["Dice"]) for r in csv.DictReader(f)}
    compared = 0
    for case in nnunet_summary["metric_per_case"]:
        name = Path(case["prediction_file"]).name.removesuffix(".nii.gz")
        for key, metrics in case["metrics"].items():
            value = key_to_label_or_region(str(key))
            key = str(value[0]) if isinstance(value, tuple) and len(value) == 1 else str(value)
            expected = 1.0 if math.isnan(metrics["Dice"]) else metrics["Dice"]
            assert ours[(name, key)] == pytest.approx(expected, abs=1e-12), (name, key)
            compared += 1
    assert compared == len(ours) > 0


def nnunet_train(
    env: dict, dataset_id: int, configuration: str, trainer: str, *extra: str, check: bool = True, fold: int = 0
):
    args = ["nnUNetv2_train", str(dataset_id), configuration, str(fold), "-tr", trainer, "-device", "cpu", *extra]
    return run(args, env, check)


def nnunet_predict(
    env: dict, dataset_id: int, configuration: str, trainer: str, images, out, plans: str = "nnUNetPlans", fold=0
) -> None:
    """Stock nnUNetv2_predict of one fold on CPU, without test-time mirroring, sequential (-npp 0 -nps 0: no worker
    processes, each of which would start nnU-Net again)."""
    # fmt: off
    args = ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c", configuration,
            "-f", str(fold), "-tr", trainer, "-p", plans, "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0"]
    # fmt: on
    run(args, env)


# ---------------------------------------------------------------------------------------------------
# one tiny 3D dataset, planned and preprocessed with the debug schedule, with its teacher: shared by the
# integration tests

DATASET_ID = 990
DATASET = "Dataset990_HLFDSynthetic"
CONFIG = "3d_fullres"
TEACHER = "nnUNetTrainerHLFDTeacher"  # stock nnU-Net with the schedule of the plans (DEBUG_SCHEDULE)


TEACHER_DIR = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def write_teacher(results: Path, plans: dict, dataset_json: dict, fold="0", init_fold=0, folder=TEACHER_DIR) -> Path:
    model = results / DATASET / folder
    (model / f"fold_{fold}").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps(dataset_json))
    pm = PlansManager(plans)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, True)
    checkpoint = {
        "network_weights": net.state_dict(),
        "init_args": {"configuration": "3d_fullres", "fold": init_fold},
        "trainer_name": "nnUNetTrainer",
    }
    torch.save(checkpoint, model / f"fold_{fold}" / "checkpoint_final.pth")
    return model


def model_folder(env: dict, trainer: str, plans: str = "nnUNetPlans") -> Path:
    return runtime_model_folder(env["nnUNet_results"], DATASET, trainer, plans, CONFIG)


def train(env: dict, trainer: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return nnunet_train(env, DATASET_ID, CONFIG, trainer, *extra, check=check)


def predict(env: dict, trainer: str, out: Path) -> None:
    nnunet_predict(env, DATASET_ID, CONFIG, trainer, Path(env["nnUNet_raw"]) / DATASET / "imagesTs", out)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_environment(root)
    make_synthetic_dataset(root / "nnUNet_raw", DATASET_ID, num_training=6, num_test=2)
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIG, "-np", "1", "-npfp", "1"], env)
    # every trainer of these tests follows the short schedule, and the students learn from TEACHER
    write_schedule(root / "nnUNet_preprocessed" / DATASET, CONFIG, DEBUG_SCHEDULE, TEACHER)
    env["nnUNet_n_proc_DA"] = "0"  # single-threaded augmentation: deterministic and fast on 2 cores
    train_in_process(env, TEACHER)
    return env


@contextlib.contextmanager
def nnunet_variables(env: dict):
    """This process with the nnU-Net variables of ``env`` (nnU-Net reads its folders from the environment)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            if key.startswith("nnUNet_"):
                patch.setenv(key, value)
        yield


def train_in_process(
    env: dict,
    trainer: str,
    continue_training: bool = False,
    plans: str = "nnUNetPlans",
    dataset_id: int = DATASET_ID,
    configuration: str = CONFIG,
    fold: int = 0,
    validate: bool = False,
    validation_only: bool = False,
):
    """What ``nnUNetv2_train DATASET CONFIG FOLD -tr TRAINER [--c | --val] -device cpu`` does (nnU-Net's own
    ``get_trainer_from_args``, ``maybe_load_checkpoint``, ``run_training`` and, with ``validate``,
    ``perform_actual_validation``), in this process and with the nnU-Net variables of ``env``. Without ``validate``
    the final validation is left out: its export workers would start nnU-Net once more."""
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    with nnunet_variables(env):
        nnunet_trainer = get_trainer_from_args(
            str(dataset_id), configuration, fold, trainer, plans, continue_training, device=torch.device("cpu")
        )
        maybe_load_checkpoint(nnunet_trainer, continue_training, validation_only)
        if not validation_only:
            nnunet_trainer.run_training()
        if validate or validation_only:
            nnunet_trainer.perform_actual_validation(False)
    return nnunet_trainer


def assert_bundle_predicts_like(model: Path, images: Path, stock_predictions: Path, work: Path) -> dict:
    """Issue 18's parity on a trained model: fold 0 exported (``nnunet_hlfd export``) and predicted from the bundle
    with ONNX Runtime (``nnunet_hlfd predict``, the options of :func:`nnunet_predict`: no TTA, step 0.5) gives stock
    ``nnUNetv2_predict``'s segmentations: ≥ 99.9 % of the voxels identical and Dice ≥ 0.999 per label or region
    (nnU-Net's own ``compute_metrics``, stock as the reference). The first case's logits, with mirroring, agree within
    ``LOGITS_TOLERANCE``; the bundle is under 3/4 of the fold's results folder (ONNX and checkpoint hold the
    weights twice, but no optimizer state, second checkpoint or validation). Returns the manifest."""
    import numpy as np
    import SimpleITK as sitk
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_hlfd.cli import main
    from nnunet_hlfd.deploy.onnx_predictor import LOGITS_AGREEMENT, load_bundle_predictor, logits_agreement
    from nnunet_hlfd.deploy.trained import case_files, load_predictor, preprocess

    bundle, out = work / "bundle", work / "bundle_predictions"
    main(["export", str(model), "-f", "0", "-o", str(bundle)])
    # fmt: off
    main(["predict", str(bundle), "-i", str(images), "-o", str(out), "-device", "cpu", "--disable_tta",
          "-npp", "0", "-nps", "0", "--disable_progress_bar"])
    # fmt: on
    dataset_json = json.loads((bundle / "dataset.json").read_text())
    stock_files = sorted(stock_predictions.glob(f"*{dataset_json['file_ending']}"))
    assert stock_files and sorted(p.name for p in out.glob(f"*{dataset_json['file_ending']}")) == [
        p.name for p in stock_files
    ]
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(stock_files[0]))()
    labels = PlansManager(str(bundle / "plans.json")).get_label_manager(dataset_json)
    classes = labels.foreground_regions if labels.has_regions else labels.foreground_labels
    for stock in stock_files:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / stock.name)))
        assert np.mean(ours == sitk.GetArrayFromImage(sitk.ReadImage(str(stock)))) >= 0.999, stock.name
        metrics = compute_metrics(str(stock), str(out / stock.name), reader, classes, labels.ignore_label)["metrics"]
        for name, values in metrics.items():  # NaN: the class is absent from both
            assert math.isnan(values["Dice"]) or values["Dice"] >= 0.999, (stock.name, name, values["Dice"])

    reference = load_predictor(model, 0, "checkpoint_final.pth", torch.device("cpu"))
    reference.use_mirroring = True
    case = preprocess(reference, next(iter(case_files(images, dataset_json["file_ending"]).values())))[0]
    onnx = load_bundle_predictor(bundle, use_mirroring=True, allow_tqdm=False)
    assert onnx.allowed_mirroring_axes == reference.allowed_mirroring_axes
    # the tests' schedule trains without test-time mirroring: mirror every axis anyway, to compare with TTA
    all_axes = tuple(range(len(reference.configuration_manager.patch_size)))
    reference.allowed_mirroring_axes = onnx.allowed_mirroring_axes = reference.allowed_mirroring_axes or all_axes
    expected = reference.predict_logits_from_preprocessed_data(case)
    assert logits_agreement(onnx.predict_logits_from_preprocessed_data(case), expected) >= LOGITS_AGREEMENT

    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["bundle_bytes"] < 0.75 * manifest["results_folder_bytes"], manifest
    return manifest
