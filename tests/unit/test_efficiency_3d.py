"""The 3D full-size efficiency script's pieces (benchmarks/efficiency_3d.py): the spacing it makes phantoms at, the
untrained models it times, nnU-Net's tile counts it reports, its speed-up table, and the tile warm-up."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import TINY_DATASET_JSON, tiny_plans

from nnunet_hlfd.benchmark.efficiency_3d import (
    CONFIGURATION,
    median_native_spacing,
    speedups,
    summary,
    tiles_per_case,
    untrained_model,
)
from nnunet_hlfd.deploy.trained import load_predictor
from nnunet_hlfd.errors import EvaluationError
from nnunet_hlfd.evaluation.efficiency import ModelSpec, Setting, count_macs, measure_efficiency

KITS_DIRECTION = (0, 0, 1, 0, 1, 0, -1, 0, 0)  # the KiTS files': the first image axis runs along the patient's z


def write_label(path, spacing, direction=KITS_DIRECTION) -> None:
    image = sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8))
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True)
    sitk.WriteImage(image, str(path))


def test_phantoms_are_made_at_the_median_slice_and_in_plane_spacing_of_the_source(tmp_path):
    # the slice axis is the one along the patient's superior axis, wherever it is in the file
    write_label(tmp_path / "case_00000" / "segmentation.nii.gz", (0.5, 0.9, 0.9))
    write_label(tmp_path / "case_00001" / "segmentation.nii.gz", (3.0, 0.8, 0.8))
    write_label(tmp_path / "case_00002" / "segmentation.nii.gz", (5.0, 0.7, 0.7))
    write_label(tmp_path / "case_00003" / "segmentation.nii.gz", (0.6, 0.6, 4.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    settings = median_native_spacing(tmp_path)
    assert settings.slice_mm == pytest.approx(3.5)  # median of 0.5, 3, 5, 4
    assert settings.in_plane_mm == pytest.approx(0.75)  # median of 0.9, 0.8, 0.7, 0.6
    assert settings.margin_mm == 40.0  # the phantoms' default: kidneys with their margin


def test_models_are_the_teacher_plan_and_its_students_with_nnunets_initial_weights(tmp_path):
    plans = tiny_plans()
    macs = {}
    for name, width, features in (("teacher", 1.0, [8, 16, 32, 64]), ("w0.5", 0.5, [4, 8, 16, 32]),
                                  ("w0.25", 0.25, [2, 4, 8, 16])):  # fmt: skip
        folder = untrained_model(tmp_path / name, plans, TINY_DATASET_JSON, width)
        predictor = load_predictor(folder, 0, "checkpoint_final.pth", torch.device("cpu"))  # strict load
        configuration = predictor.plans_manager.get_configuration(CONFIGURATION)
        assert configuration.network_arch_init_kwargs["features_per_stage"] == features
        assert configuration.patch_size == plans["configurations"][CONFIGURATION]["patch_size"]
        assert predictor.allowed_mirroring_axes == (0, 1, 2)  # TTA mirrors every axis, as nnU-Net's 3D default
        macs[name] = count_macs(predictor.network, (1, 1, *configuration.patch_size), torch.device("cpu"))
    # every convolution's channels scale with the width: its multiply-adds with the square (bias-free terms)
    assert macs["w0.5"] / macs["teacher"] == pytest.approx(0.25, abs=0.03)
    assert macs["w0.25"] / macs["teacher"] == pytest.approx(0.0625, abs=0.02)


def test_tiles_are_counted_as_nnunets_sliding_window_places_them():
    # by hand: steps along an axis = ceil((size - patch) / (patch * step)) + 1, one if the case is no larger
    patch = [48, 256, 160]
    tiles = tiles_per_case(patch, [[70, 356, 213], [100, 600, 213], [20, 100, 100]], [0.5, 0.75])
    assert tiles[0.5] == [2 * 2 * 2, 4 * 4 * 2, 1]
    assert tiles[0.75] == [2 * 2 * 2, 3 * 3 * 2, 1]


def row(model: str, seconds: tuple[float, float, float], tta=False) -> dict:
    phases = dict(zip(("preprocessing", "network", "export"), seconds))
    return {"model": model, "backend": "pytorch", "tta": tta, "step_size": 0.5, "seconds": phases,
            "seconds_per_case": sum(seconds)}  # fmt: skip


def test_speedups_are_against_the_teacher_of_the_same_setting():
    rows = [row("teacher", (2, 16, 2)), row("w0.5", (2, 4, 2)), row("teacher", (2, 96, 2), tta=True),
            row("w0.5", (2, 24, 2), tta=True)]  # fmt: skip
    table = speedups(rows)
    assert "| pytorch, TTA off, step 0.5 | w0.5 | 8.0 | 2.50× | 25% | 50% | 25% |" in table
    assert "| pytorch, TTA on, step 0.5 | w0.5 | 28.0 | 3.57× | 7% | 86% | 7% |" in table
    assert "| pytorch, TTA on, step 0.5 | teacher | 100.0 | 1.00× | 2% | 96% | 2% |" in table


def test_a_tile_warm_up_times_every_turn_and_the_summary_reports_it(tmp_path):
    plans = tiny_plans()
    models = [ModelSpec(name, untrained_model(tmp_path / name, plans, TINY_DATASET_JSON, width))
              for name, width in (("teacher", 1.0), ("w0.5", 0.5))]  # fmt: skip
    settings = [Setting("pytorch", False, 0.5), Setting("onnx", False, 0.5)]
    rows = measure_efficiency(models, ["cpu"], settings, repeats=2, progress=False, warmup="tile")
    assert [(r["model"], r["backend"]) for r in rows] == [
        ("teacher", "pytorch"), ("w0.5", "pytorch"), ("teacher", "onnx"), ("w0.5", "onnx")
    ]  # fmt: skip
    assert all(r["seconds"]["network"] > 0 and r["seconds"]["preprocessing"] is not None for r in rows)
    text = summary(plans, rows, {0.5: [1]}, 1.5, "Settings: two.", "CPU: test")
    assert "patch [16, 32, 32], features [8, 16, 32, 64]" in text and "step 0.5: [1]" in text
    assert "| pytorch, TTA off, step 0.5 | teacher |" in text and "1.00× |" in text
    assert "after one untimed patch per model and backend" in text and "Whole run: 1.5 min." in text
    with pytest.raises(EvaluationError, match="warm-up 'none'"):
        measure_efficiency(models, ["cpu"], settings, warmup="none")
