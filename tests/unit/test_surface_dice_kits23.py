"""Surface metrics on real KiTS23 label maps against DeepMind's reference implementation and the KiTS23
challenge's own evaluation (``kits23/evaluation/metrics.py``: HEC regions, surface Dice at the published
tolerances, 1 when both masks are empty, 0 when one is).

The label maps are cropped around the tumour (kidney, tumour and, in case 402, cysts; 2 to 5 mm slices, about
0.8 mm in plane), and the predictions are perturbed the ways a network errs: shifted, eroded, a structure
dropped, false positives scattered.
"""

import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_data
from scipy import ndimage

from nnunet_hlfd.cli import main
from nnunet_hlfd.conversion.tasks import KITS_HEC_REGIONS, KITS_HEC_REGIONS_CLASS_ORDER
from nnunet_hlfd.evaluation.evaluate import SUMMARY_FILE, read_per_case
from nnunet_hlfd.evaluation.metrics import surface_metrics

# The challenge's tolerances (kits23 repository, kits23/configuration/labels.py, HEC_SD_TOLERANCES_MM)
KITS_TOLERANCES_MM = {"kidney": 1.0330772532390826, "masses": 1.1328796488598762, "tumor": 1.1498198361434828}
# numpy-axis crops around each case's tumour (the files store the slice axis last in numpy order)
CROPS = {
    "case_00004": (slice(330, 420), slice(250, 340), slice(20, 60)),  # 4 mm slices, kidney and tumour
    "case_00402": (slice(110, 230), slice(190, 290), slice(15, 45)),  # 5 mm slices, tumour and cysts
    "case_00405": (slice(130, 230), slice(180, 280), slice(40, 90)),  # 2 mm slices
}


def load_crop(case: str) -> tuple[np.ndarray, tuple[float, ...], sitk.Image]:
    image = sitk.ReadImage(str(shared_data("kits23") / case / "segmentation.nii.gz"))
    labels = sitk.GetArrayFromImage(image)[CROPS[case]].astype(np.uint8)
    return labels, image.GetSpacing()[::-1], image


def perturb(labels: np.ndarray, how: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if how == "shift_in_plane":
        return np.roll(labels, (1, -2), axis=(0, 1))
    if how == "shift_across_slices":
        return np.roll(labels, 1, axis=2)
    if how == "eroded":
        return np.where(ndimage.binary_erosion(labels > 0, iterations=1), labels, 0).astype(np.uint8)
    if how == "tumour_dropped":  # the tumour called kidney: no tumour predicted
        return np.where(labels == 2, 1, labels).astype(np.uint8)
    if how == "scattered_false_positives":
        noisy = labels.copy()
        noisy[rng.random(labels.shape) > 0.9995] = 2
        return noisy
    raise ValueError(how)


PERTURBATIONS = ["shift_in_plane", "shift_across_slices", "eroded", "tumour_dropped", "scattered_false_positives"]


def kits_challenge_metrics(prediction: np.ndarray, reference: np.ndarray, spacing) -> dict[str, tuple[float, float]]:
    """Per HEC region: (Dice, surface Dice), computed as the KiTS23 challenge computes them."""
    import surface_distance

    out = {}
    for name, mm in KITS_TOLERANCES_MM.items():
        labels = np.atleast_1d(KITS_HEC_REGIONS[name])
        mask_prediction, mask_reference = np.isin(prediction, labels), np.isin(reference, labels)
        if not mask_reference.any() and not mask_prediction.any():
            out[name] = (1.0, 1.0)
        elif not mask_reference.any() or not mask_prediction.any():
            out[name] = (0.0, 0.0)
        else:
            dice = 2 * (mask_prediction & mask_reference).sum() / (mask_prediction.sum() + mask_reference.sum())
            with warnings.catch_warnings():  # surface-distance 0.1 uses scipy.ndimage's deprecated namespaces
                warnings.simplefilter("ignore", DeprecationWarning)
                distances = surface_distance.compute_surface_distances(mask_reference, mask_prediction, spacing)
            out[name] = (float(dice), surface_distance.compute_surface_dice_at_tolerance(distances, mm))
    return out


@pytest.mark.parametrize("how", PERTURBATIONS)
@pytest.mark.parametrize("case", sorted(CROPS))
def test_surface_metrics_equal_deepmind_on_real_label_maps(case, how):
    from test_evaluation import deepmind_surface_metrics

    reference, spacing, _ = load_crop(case)
    prediction = perturb(reference, how)
    for name, mm in KITS_TOLERANCES_MM.items():
        labels = np.atleast_1d(KITS_HEC_REGIONS[name])
        mask_prediction, mask_reference = np.isin(prediction, labels), np.isin(reference, labels)
        if not (mask_prediction.any() and mask_reference.any()):
            assert how == "tumour_dropped" and name in ("tumor", "masses")  # masses: no cyst in the case
            continue
        ours = surface_metrics(mask_prediction, mask_reference, spacing, mm)
        expected = deepmind_surface_metrics(mask_reference, mask_prediction, spacing, mm)
        assert ours == pytest.approx(expected, abs=1e-6), name


def test_evaluate_gives_the_kits23_challenges_numbers_for_every_hec_region(tmp_path, capsys):
    """``nnunet_hlfd evaluate`` with the README's KiTS command line on a folder of real cropped cases."""
    references, predictions, expected = tmp_path / "labelsTs", tmp_path / "predictions", {}
    references.mkdir()
    predictions.mkdir()
    for i, case in enumerate(sorted(CROPS)):
        reference, spacing, image = load_crop(case)
        for how in PERTURBATIONS:
            name = f"{case}_{how}"
            prediction = perturb(reference, how, seed=i)
            for folder, array in ((references, reference), (predictions, prediction)):
                written = sitk.GetImageFromArray(array)
                written.SetSpacing(image.GetSpacing())
                written.SetDirection(image.GetDirection())
                sitk.WriteImage(written, str(folder / f"{name}.nii.gz"))
            expected[name] = kits_challenge_metrics(prediction, reference, spacing)
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": KITS_HEC_REGIONS,
                "regions_class_order": list(KITS_HEC_REGIONS_CLASS_ORDER),
                "numTraining": 1,
                "file_ending": ".nii.gz",
            }
        )
    )
    tolerances = [f"{name}={mm!r}" for name, mm in KITS_TOLERANCES_MM.items()]
    main(["evaluate", str(predictions), str(references), "-djfile", str(dataset_json), "-np", "1",
          "--tolerance-mm", *tolerances])  # fmt: skip
    printed = capsys.readouterr().out
    assert "tumor: Dice" in printed and "NSD@1.14982mm" in printed and "NSD@1.03308mm" in printed
    rows = read_per_case(predictions / "metrics_per_case.csv")
    assert len(rows) == 3 * len(expected)
    for row in rows:
        dice, surface_dice = expected[row["case"]][row["class"]]
        assert row["Dice"] == pytest.approx(dice, abs=1e-6), (row["case"], row["class"])
        assert row["NSD"] == pytest.approx(surface_dice, abs=1e-6), (row["case"], row["class"])
    summary = json.loads((predictions / SUMMARY_FILE).read_text())
    assert summary["nsd_tolerance_mm"] == KITS_TOLERANCES_MM
    assert summary["surface_metrics"].startswith("surface elements")
