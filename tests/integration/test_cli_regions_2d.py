"""Regions (sigmoid KD) with an ignore label, a residual-encoder U-Net and the 2d configuration: HLFD through the
CLI (train, validate, predict, evaluate), multi-scale contrastive KD in this process.

The teacher and student use nnU-Net's ResEnc M plans, which share the default preprocessed data.
"""

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from conftest import (
    assert_bundle_predicts_like,
    assert_same_dice,
    nnunet_metrics,
    nnunet_predict,
    nnunet_train,
    run,
    train_in_process,
)

from nnunet_hlfd.cli import main
from nnunet_hlfd.demo.pipeline import DEBUG_SCHEDULE, TEACHER, write_schedule
from nnunet_hlfd.demo.synthetic import make_synthetic_dataset
from nnunet_hlfd.runtime import nnunet_environment

DATASET_ID = 992
NAME = "HLFDRegions"
PLANS = "nnUNetResEncUNetMPlans"


def test_regions_with_ignore_label_resenc_in_2d(tmp_path):
    env = nnunet_environment(tmp_path)
    raw = make_synthetic_dataset(
        tmp_path / "nnUNet_raw", DATASET_ID, NAME, num_training=5, num_test=1, regions=True, ignore_label=True
    )
    run(
        [
            "nnUNetv2_plan_and_preprocess",
            "-d",
            str(DATASET_ID),
            "-c",
            "2d",
            "-np",
            "1",
            "-npfp",
            "1",
            "-pl",
            "nnUNetPlannerResEncM",
        ],
        env,
    )
    env["nnUNet_n_proc_DA"] = "0"
    dataset = f"Dataset{DATASET_ID}_{NAME}"
    write_schedule(tmp_path / "nnUNet_preprocessed" / dataset, "2d", DEBUG_SCHEDULE, TEACHER, PLANS)
    # a narrow ResEnc with small batches: the same architecture class and layout, a fraction of the CPU time
    plans_file = tmp_path / "nnUNet_preprocessed" / dataset / f"{PLANS}.json"
    plans = json.loads(plans_file.read_text())
    planned = plans["configurations"]["2d"]
    kwargs = planned["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [min(8 * 2**i, 64) for i in range(kwargs["n_stages"])]
    planned["batch_size"] = 2
    plans_file.write_text(json.dumps(plans))
    train_in_process(env, TEACHER, plans=PLANS, dataset_id=DATASET_ID, configuration="2d")
    # multi-scale contrastive KD too, with region-set classes (multi-teacher KD runs in 2D in the benchmark smoke run)
    train_in_process(env, "nnUNetTrainerMultiScaleContrastive", plans=PLANS, dataset_id=DATASET_ID, configuration="2d")
    fold = Path(env["nnUNet_results"]) / dataset / f"nnUNetTrainerMultiScaleContrastive__{PLANS}__2d" / "fold_0"
    logged = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert len(logged["kd_contrastive"]) == 2 and all(np.isfinite(logged["kd_contrastive"]))
    assert min(logged["kd_contrastive"]) > 0

    nnunet_train(env, DATASET_ID, "2d", "nnUNetTrainerHLFD", "-p", PLANS)
    folder = Path(env["nnUNet_results"]) / dataset / f"nnUNetTrainerHLFD__{PLANS}__2d"
    assert len(list((folder / "fold_0" / "validation").glob("*.nii.gz"))) == 1
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    kd = checkpoint["logging"]["kd_plfd_individual"]
    assert len(kd) == 2 and all(np.isfinite(kd)) and min(kd) > 0
    plans = json.loads((folder / "plans.json").read_text())["configurations"]["2d"]
    assert plans["architecture"]["arch_kwargs"]["conv_op"].endswith("Conv2d")
    assert plans["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    assert plans["data_identifier"] == "nnUNetPlans_2d"  # the teacher's preprocessed data, reused

    out = tmp_path / "pred"
    nnunet_predict(env, DATASET_ID, "2d", "nnUNetTrainerHLFD", raw / "imagesTs", out, PLANS)
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_005.nii.gz")))
    assert set(np.unique(prediction)) <= {0, 1, 2}  # regions painted back into labels, never the ignore label
    # the deploy bundle predicts the same (2D, regions): nnunet_hlfd export + predict on ONNX Runtime
    assert_bundle_predicts_like(folder, raw / "imagesTs", out, tmp_path)

    # evaluation of the regions: nnU-Net's evaluator and ours agree on Dice
    main(["evaluate", str(out), str(raw / "labelsTs"), "-np", "1"])
    assert_same_dice(nnunet_metrics(raw / "labelsTs", out, folder), out / "metrics_per_case.csv")
    regions = json.loads((out / "metrics_summary.json").read_text())["classes"]
    assert {k: c["label_or_region"] for k, c in regions.items()} == {"organ_and_tumour": "(1, 2)", "tumour": "2"}
