"""Regions (sigmoid KD) with an ignore label, a residual-encoder U-Net and the 2d configuration, through the CLI:
HLFD and multi-scale contrastive KD.

The teacher and student use nnU-Net's ResEnc M plans, which share the default preprocessed data.
"""

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from conftest import assert_same_dice, nnunet_predict, nnunet_train, run

from nnunet_hlfd.demo.pipeline import nnunet_environment
from nnunet_hlfd.demo.synthetic import make_synthetic_dataset

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
    # multi-scale contrastive KD too, with region-set classes (multi-teacher KD runs in 2D in test_benchmark.py)
    for trainer in (
        "nnUNetTrainerHLFDTeacher_debug",
        "nnUNetTrainerHLFD_debug",
        "nnUNetTrainerMultiScaleContrastive_debug",
    ):
        nnunet_train(env, DATASET_ID, "2d", trainer, "-p", PLANS)
    fold = Path(env["nnUNet_results"]) / dataset / f"nnUNetTrainerMultiScaleContrastive_debug__{PLANS}__2d" / "fold_0"
    logged = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert len(logged["kd_contrastive"]) == 2 and all(np.isfinite(logged["kd_contrastive"]))
    assert min(logged["kd_contrastive"]) > 0 and len(list((fold / "validation").glob("*.nii.gz"))) == 1

    folder = Path(env["nnUNet_results"]) / dataset / f"nnUNetTrainerHLFD_debug__{PLANS}__2d"
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    kd = checkpoint["logging"]["kd_plfd_individual"]
    assert len(kd) == 2 and all(np.isfinite(kd)) and min(kd) > 0
    plans = json.loads((folder / "plans.json").read_text())["configurations"]["2d"]
    assert plans["architecture"]["arch_kwargs"]["conv_op"].endswith("Conv2d")
    assert plans["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    assert plans["data_identifier"] == "nnUNetPlans_2d"  # the teacher's preprocessed data, reused

    out = tmp_path / "pred"
    nnunet_predict(env, DATASET_ID, "2d", "nnUNetTrainerHLFD_debug", raw / "imagesTs", out, PLANS)
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_005.nii.gz")))
    assert set(np.unique(prediction)) <= {0, 1, 2}  # regions painted back into labels, never the ignore label

    # evaluation of the regions: nnU-Net's evaluator and ours agree on Dice
    # fmt: off
    run(["nnUNetv2_evaluate_folder", str(raw / "labelsTs"), str(out), "-djfile", str(folder / "dataset.json"),
         "-pfile", str(folder / "plans.json"), "-np", "1"], env)
    run(["nnunet_hlfd", "evaluate", str(out), str(raw / "labelsTs"), "-np", "1"], env)
    # fmt: on
    assert_same_dice(json.loads((out / "summary.json").read_text()), out / "metrics_per_case.csv")
    regions = json.loads((out / "metrics_summary.json").read_text())["classes"]
    assert {k: c["label_or_region"] for k, c in regions.items()} == {"organ_and_tumour": "(1, 2)", "tumour": "2"}
