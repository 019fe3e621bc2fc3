"""The sigmoid (region) path with an ignore label, in the 2d configuration, through nnU-Net's CLI."""

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from conftest import nnunet_predict, nnunet_train, run

from nnunet_hlfd.demo.pipeline import nnunet_environment
from nnunet_hlfd.demo.synthetic import make_synthetic_dataset

DATASET_ID = 992
NAME = "HLFDRegions"


def test_regions_with_ignore_label_in_2d(tmp_path):
    env = nnunet_environment(tmp_path)
    raw = make_synthetic_dataset(
        tmp_path / "nnUNet_raw", DATASET_ID, NAME, num_training=5, num_test=1, regions=True, ignore_label=True
    )
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "1", "-npfp", "1"], env)
    env["nnUNet_n_proc_DA"] = "0"
    dataset = f"Dataset{DATASET_ID}_{NAME}"
    for trainer in ("nnUNetTrainerHLFDTeacher_debug", "nnUNetTrainerHLFD_debug"):
        nnunet_train(env, DATASET_ID, "2d", trainer)

    folder = Path(env["nnUNet_results"]) / dataset / "nnUNetTrainerHLFD_debug__nnUNetPlans__2d"
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    kd = checkpoint["logging"]["kd_plfd_individual"]
    assert len(kd) == 2 and all(np.isfinite(kd)) and min(kd) > 0
    plans = json.loads((folder / "plans.json").read_text())["configurations"]["2d"]
    assert plans["architecture"]["arch_kwargs"]["conv_op"].endswith("Conv2d")

    out = tmp_path / "pred"
    nnunet_predict(env, DATASET_ID, "2d", "nnUNetTrainerHLFD_debug", raw / "imagesTs", out)
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_005.nii.gz")))
    assert set(np.unique(prediction)) <= {0, 1, 2}  # regions painted back into labels, never the ignore label
