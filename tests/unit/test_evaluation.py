"""Evaluation metrics against volumes with known answers, and the evaluate/compare commands on small folders."""

import csv
import json
import math
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hlfd.cli import main
from nnunet_hlfd.errors import EvaluationError
from nnunet_hlfd.evaluation.compare import compare_runs, format_markdown, load_run
from nnunet_hlfd.evaluation.evaluate import (
    PER_CASE_FILE,
    SUMMARY_FILE,
    evaluate_folder,
    parse_tolerances,
    read_per_case,
)
from nnunet_hlfd.evaluation.metrics import SURFACE_DEFINITION, mask_metrics, overlap_metrics, surface_metrics

SPACING = (3.0, 2.0, 0.5)  # (z, y, x) mm: anisotropic, as in CT


def box(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


# ---- metrics with answers worked out by hand ---------------------------------------------------------------
# Surface elements (Nikolov et al. 2018) sit on the grid of voxel corners; in each 2 x 2 x 2 block of voxels, the
# marching-cubes surface has an area that depends on which voxels are inside: 4 of 8 on one side (a face), the
# in-plane spacings' product; 2 of 8 along an edge of length d_e, d_e · hypot(d_a / 2, d_b / 2); 1 of 8 (a
# corner), the triangle through the three edge midpoints.


def face_edge_corner_areas(spacing):
    """Areas of a box's face, edge and corner elements, keyed by the face's normal or the edge's axis."""
    dz, dy, dx = spacing
    face = {"z": dy * dx, "y": dz * dx, "x": dz * dy}
    edge = {
        "z": dz * math.hypot(dy / 2, dx / 2),
        "y": dy * math.hypot(dz / 2, dx / 2),
        "x": dx * math.hypot(dz / 2, dy / 2),
    }
    corner = 0.5 * math.sqrt((dz * dy / 4) ** 2 + (dz * dx / 4) ** 2 + (dy * dx / 4) ** 2)
    return face, edge, corner


def test_box_shifted_by_one_voxel_along_the_finest_axis():
    """Two 4x4x4 boxes, one shifted by one voxel along x (0.5 mm). Each surface has 5 x 5 corner points per
    face: per axis 18 face elements (3 x 3 on each of two faces) and 12 edge elements, and 8 corners. Everything
    lies on the other surface or 0.5 mm from it; at 0.5 mm lie the whole leading face (9 face, 6 + 6 edge and 4
    corner elements) and the inside of the trailing face (9 face elements)."""
    reference = box((8, 8, 10), (2, 2, 2), (4, 4, 4))
    prediction = box((8, 8, 10), (2, 2, 3), (4, 4, 4))
    face, edge, corner = face_edge_corner_areas(SPACING)
    total = 18 * sum(face.values()) + 12 * sum(edge.values()) + 8 * corner
    at_half_mm = 18 * face["x"] + 6 * edge["y"] + 6 * edge["z"] + 4 * corner
    m = mask_metrics(prediction, reference, SPACING, tolerance_mm=0.4)
    assert m["Dice"] == pytest.approx(2 * 48 / 128)
    assert m["VOE"] == pytest.approx(1 - 48 / 80)
    assert m["RVD"] == 0
    assert m["HD95"] == pytest.approx(0.5)
    assert m["ASSD"] == pytest.approx(0.5 * at_half_mm / total, rel=1e-6)
    assert m["NSD"] == pytest.approx(1 - at_half_mm / total, rel=1e-6)
    assert surface_metrics(prediction, reference, SPACING, tolerance_mm=0.5)["NSD"] == pytest.approx(1.0)


def test_single_voxels_at_an_anisotropic_distance():
    """Each voxel's surface: 8 corner elements of equal area at the voxel's corners. From the reference's
    corners (z, y, x) ∈ {1, 2}³ the nearest corner of the prediction's (z ∈ {3, 4}, y ∈ {2, 3}, x ∈ {4, 5}) is
    dz ∈ {2, 1}, dy ∈ {1, 0}, dx ∈ {3, 2} voxels away, and the same back; the 95th percentile of 8 equal areas is
    the farthest."""
    reference = box((6, 6, 6), (1, 1, 1), (1, 1, 1))
    prediction = box((6, 6, 6), (3, 2, 4), (1, 1, 1))
    distances = [
        math.sqrt((dz * 3.0) ** 2 + (dy * 2.0) ** 2 + (dx * 0.5) ** 2)
        for dz in (1, 2)
        for dy in (0, 1)
        for dx in (2, 3)
    ]
    m = mask_metrics(prediction, reference, SPACING, tolerance_mm=max(distances))
    assert (m["Dice"], m["VOE"], m["RVD"]) == (0.0, 1.0, 0.0)
    assert m["HD95"] == pytest.approx(max(distances)) and m["ASSD"] == pytest.approx(np.mean(distances))
    assert m["NSD"] == 1.0
    assert surface_metrics(prediction, reference, SPACING, tolerance_mm=min(distances) - 0.01)["NSD"] == 0.0
    assert surface_metrics(prediction, reference, SPACING, tolerance_mm=min(distances) + 0.01)["NSD"] == 1 / 8
    same = mask_metrics(reference, reference, SPACING)
    assert (same["Dice"], same["VOE"], same["HD95"], same["ASSD"], same["NSD"]) == (1.0, 0.0, 0.0, 0.0, 1.0)


def test_over_segmentation_gives_a_positive_rvd():
    reference = box((6, 6, 6), (1, 1, 1), (2, 2, 2))
    prediction = box((6, 6, 6), (1, 1, 1), (2, 2, 3))
    assert overlap_metrics(prediction, reference) == pytest.approx({"Dice": 16 / 20, "VOE": 1 - 8 / 12, "RVD": 0.5})


def test_empty_masks_have_the_documented_values():
    empty = np.zeros((4, 5, 6), dtype=bool)
    voxel = box((4, 5, 6), (1, 1, 1), (1, 1, 1))
    diagonal = math.sqrt((4 * 3.0) ** 2 + (5 * 2.0) ** 2 + (6 * 0.5) ** 2)
    both = mask_metrics(empty, empty, SPACING)
    assert {k: both[k] for k in ("Dice", "VOE", "RVD", "HD95", "ASSD", "NSD")} == {
        "Dice": 1.0, "VOE": 0.0, "RVD": 0.0, "HD95": 0.0, "ASSD": 0.0, "NSD": 1.0
    }  # fmt: skip
    missed = mask_metrics(empty, voxel, SPACING)
    assert (missed["Dice"], missed["VOE"], missed["RVD"], missed["NSD"]) == (0.0, 1.0, -1.0, 0.0)
    assert missed["HD95"] == pytest.approx(diagonal) and missed["ASSD"] == pytest.approx(diagonal)
    hallucinated = mask_metrics(voxel, empty, SPACING)
    assert math.isnan(hallucinated["RVD"])  # undefined: left out of the mean, see the summary test
    assert hallucinated["HD95"] == pytest.approx(diagonal) and hallucinated["Dice"] == 0.0


def test_a_2d_case_stored_as_one_slice_uses_in_plane_contours():
    """1 x H x W is measured as a 2D image: contour segments, weighted by length. A 4 x 4 square on a 2 mm (y) x
    1 mm (x) grid: 6 segments of 2 mm (x-facing sides), 6 of 1 mm (y-facing), 4 corner diagonals of
    hypot(0.5, 1) mm. Shifted by one pixel along x: the y-facing segments and half the corners lie on the other
    contour, the rest 1 mm from it."""
    reference = box((1, 10, 10), (0, 2, 2), (1, 4, 4))
    prediction = box((1, 10, 10), (0, 2, 3), (1, 4, 4))
    corner = math.hypot(0.5, 1.0)
    total, on_it = 6 * 2.0 + 6 * 1.0 + 4 * corner, 6 * 1.0 + 2 * corner
    m = surface_metrics(prediction, reference, (5.0, 2.0, 1.0), tolerance_mm=0.5)
    assert m["HD95"] == pytest.approx(1.0)
    assert m["ASSD"] == pytest.approx(1.0 * (total - on_it) / total)
    assert m["NSD"] == pytest.approx(on_it / total)


def deepmind_surface_metrics(reference, prediction, spacing, tolerance_mm):
    """HD95, ASSD and NSD from DeepMind's surface-distance package (the code of the KiTS and MSD evaluations)."""
    import surface_distance

    with warnings.catch_warnings():  # surface-distance 0.1 imports scipy.ndimage's deprecated namespaces
        warnings.simplefilter("ignore", DeprecationWarning)
        d = surface_distance.compute_surface_distances(reference, prediction, spacing)
    to_prediction, to_reference = surface_distance.compute_average_surface_distance(d)
    area_reference, area_prediction = d["surfel_areas_gt"].sum(), d["surfel_areas_pred"].sum()
    return {
        "HD95": surface_distance.compute_robust_hausdorff(d, 95),
        "ASSD": (to_prediction * area_reference + to_reference * area_prediction) / (area_reference + area_prediction),
        "NSD": surface_distance.compute_surface_dice_at_tolerance(d, tolerance_mm),
    }


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation inside its public functions
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_metrics_match_deepmind_surface_distance_and_monai(seed):
    """Random blobs on an anisotropic grid against DeepMind's reference implementation (float64) and MONAI's
    public NSD with sub-voxel surfaces."""
    import torch
    from monai.metrics import compute_surface_dice

    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in (12, 20, 24)], indexing="ij")

    def blob():
        c = rng.uniform([3, 5, 6], [9, 15, 18])
        r = rng.uniform(2, 5, size=3)
        return ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1

    prediction, reference = blob(), blob() | blob()
    spacing = (2.5, 0.8, 1.1)
    ours = surface_metrics(prediction, reference, spacing, tolerance_mm=1.5)
    assert ours == pytest.approx(deepmind_surface_metrics(reference, prediction, spacing, 1.5), abs=1e-6)
    one_hot = [torch.from_numpy(m)[None, None] for m in (prediction, reference)]
    monai_nsd = compute_surface_dice(*one_hot, [1.5], True, spacing=spacing, use_subvoxels=True)
    assert ours["NSD"] == pytest.approx(float(monai_nsd), abs=1e-6)


# ---- evaluate on folders ----------------------------------------------------------------------------------
DATASET_JSON = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "organ": 1, "tumour": 2},
    "numTraining": 3,
    "file_ending": ".nii.gz",
}
KITS_REGIONS_JSON = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2},
    "regions_class_order": [1, 3, 2],
    "numTraining": 3,
    "file_ending": ".nii.gz",
}


def write(path, array, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing)))
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def three_cases(tmp_path, dataset_json=DATASET_JSON):
    """case_a: organ and tumour, predicted with the tumour shifted; case_b: no tumour in the reference and one
    predicted; case_c: neither has a tumour."""
    shape = (8, 12, 14)
    ref, pred = tmp_path / "labels", tmp_path / "pred"
    organ = box(shape, (1, 2, 2), (6, 8, 10))
    a_ref = organ.astype(np.uint8) + box(shape, (2, 4, 4), (3, 3, 3))
    a_pred = organ.astype(np.uint8) + box(shape, (2, 4, 5), (3, 3, 3))
    b_pred = organ.astype(np.uint8) + box(shape, (3, 5, 5), (1, 1, 1))
    for case, r, p in [("case_a", a_ref, a_pred), ("case_b", organ, b_pred), ("case_c", organ, organ)]:
        write(ref / f"{case}.nii.gz", np.asarray(r))
        write(pred / f"{case}.nii.gz", np.asarray(p))
    (tmp_path / "dataset.json").write_text(json.dumps(dataset_json))
    return pred, ref


def test_evaluate_writes_per_case_csv_and_summary_without_nan(tmp_path):
    pred, ref = three_cases(tmp_path)
    summary = evaluate_folder(pred, ref, tmp_path / "dataset.json", progress=False)
    with open(pred / PER_CASE_FILE) as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["class"]) for r in rows] == [
        (c, k) for c in ("case_a", "case_b", "case_c") for k in ("organ", "tumour")
    ]
    tumour = {r["case"]: r for r in rows if r["class"] == "tumour"}
    assert float(tumour["case_a"]["Dice"]) == pytest.approx(2 * 18 / 54)
    assert tumour["case_b"]["RVD"] == ""  # undefined against an empty reference
    assert float(tumour["case_c"]["Dice"]) == 1.0 and float(tumour["case_c"]["HD95"]) == 0.0
    stats = summary["classes"]["tumour"]
    assert stats["metrics"]["Dice"]["mean"] == pytest.approx((2 * 18 / 54 + 0 + 1) / 3)
    assert stats["metrics"]["RVD"]["n"] == 2 and stats["metrics"]["Dice"]["n"] == 3
    assert (stats["reference_empty"], stats["prediction_empty"], stats["both_empty"]) == (2, 1, 1)
    assert json.loads((pred / SUMMARY_FILE).read_text()) == json.loads(json.dumps(summary))
    assert "NaN" not in (pred / SUMMARY_FILE).read_text()


def test_regions_are_evaluated_as_nested_masks(tmp_path):
    shape = (6, 8, 8)
    reference = box(shape, (1, 1, 1), (4, 6, 6)).astype(np.uint8)
    reference[2:4, 2:4, 2:4] = 2
    reference[2:4, 5:6, 5:6] = 3
    prediction = reference.copy()
    prediction[prediction == 3] = 2  # the cyst called tumour: right for kidney and masses, wrong for tumour
    write(tmp_path / "labels" / "k.nii.gz", reference)
    write(tmp_path / "pred" / "k.nii.gz", prediction)
    (tmp_path / "dataset.json").write_text(json.dumps(KITS_REGIONS_JSON))
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "labels", tmp_path / "dataset.json", progress=False)
    dice = {name: c["metrics"]["Dice"]["mean"] for name, c in summary["classes"].items()}
    assert dice == pytest.approx({"kidney": 1.0, "masses": 1.0, "tumor": 2 * 8 / (8 + 10)})
    assert summary["classes"]["masses"]["label_or_region"] == "(2, 3)"


def test_ignore_label_voxels_count_for_neither_mask(tmp_path):
    labels = dict(DATASET_JSON, labels={"background": 0, "organ": 1, "ignore": 2})
    reference = box((4, 6, 6), (1, 1, 1), (2, 2, 2)).astype(np.uint8)
    reference[0] = 2  # unannotated slice
    prediction = box((4, 6, 6), (0, 1, 1), (3, 2, 2)).astype(np.uint8)  # extends into the unannotated slice
    write(tmp_path / "labels" / "c.nii.gz", reference)
    write(tmp_path / "pred" / "c.nii.gz", prediction)
    (tmp_path / "dataset.json").write_text(json.dumps(labels))
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "labels", tmp_path / "dataset.json", progress=False)
    assert list(summary["classes"]) == ["organ"]
    assert summary["classes"]["organ"]["metrics"]["Dice"]["mean"] == 1.0


def test_evaluate_finds_dataset_json_beside_the_labels_and_runs_in_workers(tmp_path, monkeypatch):
    """Its workers come from worker_pool, whose workers end with a killed parent (test_conversion.py)."""
    from nnunet_hlfd.evaluation import evaluate as evaluate_module
    from nnunet_hlfd.workers import worker_pool

    pools = []
    monkeypatch.setattr(evaluate_module, "worker_pool", lambda n: pools.append(n) or worker_pool(n))
    raw = tmp_path / "Dataset001_X"
    pred, ref = three_cases(raw)
    (raw / "labelsTs").mkdir()
    for f in ref.iterdir():
        f.rename(raw / "labelsTs" / f.name)
    serial = evaluate_folder(pred, raw / "labelsTs", output=tmp_path / "serial", progress=False)
    parallel = evaluate_folder(pred, raw / "labelsTs", output=tmp_path / "parallel", num_processes=2, progress=False)
    assert serial["classes"] == parallel["classes"] and pools == [2]
    assert serial["dataset_json"] == str((raw / "dataset.json").resolve())


def cut_stream(path):
    """What a killed writer leaves: the first half of the gzip stream."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def lose_voxels(path):
    """A whole gzip stream that holds fewer voxels than the header promises (SimpleITK reads it as zeros)."""
    import gzip

    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) - 100]))


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda p, r: (p / "case_c.nii.gz").unlink(), "1 reference case(s) have no prediction"),
        (lambda p, r: (r / "case_c.nii.gz").unlink(), "have no reference label"),
        (
            lambda p, r: write(p / "case_b.nii.gz", np.zeros((8, 12, 14)), spacing=(3.0, 2.0, 0.6)),
            "case_b: spacing [0.6, 2.0, 3.0] vs reference [0.5, 2.0, 3.0]",
        ),
        (lambda p, r: write(p / "case_b.nii.gz", np.zeros((8, 12, 13))), "case_b: size (13, 12, 8)"),
        (lambda p, r: write(p / "case_b.nii.gz", np.full((8, 12, 14), 7)), "label values [7]"),
        (lambda p, r: [f.unlink() for f in p.glob("*.nii.gz")], "no predictions ending in .nii.gz"),
        (lambda p, r: cut_stream(p / "case_b.nii.gz"), "case_b.nii.gz is corrupt ("),
        (lambda p, r: lose_voxels(r / "case_a.nii.gz"), "case_a.nii.gz is truncated (1596 of 1696 bytes)"),
        (lambda p, r: write(r / "case_c.nii.gz", np.full((8, 12, 14), 5)), "has label values [5] that dataset.json"),
    ],
    ids=["missing-prediction", "orphan-prediction", "spacing", "size", "label-value", "empty-folder",
         "prediction-cut-by-a-kill", "reference-missing-voxels", "reference-label-value"],
)  # fmt: skip
def test_evaluate_refuses_mismatched_folders_before_writing(tmp_path, break_it, message, request):
    pred, ref = three_cases(tmp_path)
    break_it(pred, ref)
    if "voxels" in request.node.callspec.id:  # today's trap: SimpleITK reads the cut file without complaint
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "case_a.nii.gz"))).shape == (8, 12, 14)
    with pytest.raises(EvaluationError, match=re.escape(message)):
        evaluate_folder(pred, ref, tmp_path / "dataset.json", progress=False)
    assert not (pred / PER_CASE_FILE).exists() and not (pred / SUMMARY_FILE).exists()
    assert not list(pred.glob(".partial.*"))


def test_chill_evaluates_only_the_predicted_cases(tmp_path):
    pred, ref = three_cases(tmp_path)
    (pred / "case_c.nii.gz").unlink()
    summary = evaluate_folder(pred, ref, tmp_path / "dataset.json", chill=True, progress=False)
    assert summary["num_cases"] == 2


def test_evaluate_cli_prints_means_and_exits_2_on_errors(tmp_path, capsys):
    pred, ref = three_cases(tmp_path)
    ok = subprocess.run(
        ["nnunet_hlfd", "evaluate", str(pred), str(ref), "-djfile", str(tmp_path / "dataset.json"), "-np", "1"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "3 cases" in ok.stdout and "tumour: Dice 0.556" in ok.stdout
    assert "evaluate: 100%" in ok.stderr  # progress bar
    with pytest.raises(SystemExit) as exit_code:  # the same CLI in this process
        main(["evaluate", str(pred), str(tmp_path / "nowhere"), "-np", "1"])
    assert exit_code.value.code == 2 and "reference folder" in capsys.readouterr().err


# ---- NSD tolerances per label/region --------------------------------------------------------------------------
def test_tolerances_per_label_or_region_reach_each_nsd(tmp_path):
    pred, ref = three_cases(tmp_path)
    tolerances = parse_tolerances(["tumour=0.4", "3"])
    assert tolerances == {"tumour": 0.4, None: 3.0}
    summary = evaluate_folder(pred, ref, tmp_path / "dataset.json", tolerance_mm=tolerances, progress=False)
    assert summary["nsd_tolerance_mm"] == {"organ": 3.0, "tumour": 0.4}
    rows = {(r["case"], r["class"]): r for r in read_per_case(pred / PER_CASE_FILE)}
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "case_a.nii.gz")))
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "case_a.nii.gz")))
    for name, label, mm in (("tumour", 2, 0.4), ("organ", 1, 3.0)):
        expected = surface_metrics(prediction == label, reference == label, SPACING, mm)["NSD"]
        assert rows[("case_a", name)]["NSD"] == pytest.approx(expected)
    assert rows[("case_a", "tumour")]["NSD"] < 1  # the tumour is shifted by 0.5 mm: 0.4 mm matters


@pytest.mark.parametrize(
    "items, message",
    [
        (["tumor=1"], "names tumor, which dataset.json does not define: the labels/regions are organ, tumour"),
        (["tumour=1"], "gives no tolerance for organ: add NAME=MM for each, or one bare MM"),
        (["0"], "a tolerance must be a finite distance > 0 mm"),
        (["organ=-1", "1"], "organ=-1.0: a tolerance must be a finite distance > 0 mm"),
        (["inf"], "a tolerance must be a finite distance > 0 mm"),
        (["nan"], "a tolerance must be a finite distance > 0 mm"),
        (["one"], "'one' is not a number of mm"),
        (["=1"], "needs the label/region's name before '='"),
        (["1", "2"], "gives a value for every label/region twice"),
        (["organ=1", "organ=2"], "gives 'organ' twice"),
    ],
)
def test_bad_tolerances_are_refused_before_anything_is_written(tmp_path, items, message):
    pred, ref = three_cases(tmp_path)
    with pytest.raises(EvaluationError, match=re.escape(message)):
        evaluate_folder(pred, ref, tmp_path / "dataset.json", tolerance_mm=parse_tolerances(items), progress=False)
    assert not (pred / PER_CASE_FILE).exists() and not (pred / SUMMARY_FILE).exists()


def test_evaluate_cli_takes_tolerances_per_name_and_prints_them(tmp_path, capsys):
    pred, ref = three_cases(tmp_path)
    dataset_json = str(tmp_path / "dataset.json")
    main(["evaluate", str(pred), str(ref), "-djfile", dataset_json, "-np", "1", "--tolerance-mm", "tumour=0.4", "2"])
    out = capsys.readouterr().out
    assert "organ: Dice" in out and "NSD@2mm" in out and "NSD@0.4mm" in out
    with pytest.raises(SystemExit) as exit_code:
        main(["evaluate", str(pred), str(ref), "-djfile", dataset_json, "--tolerance-mm", "tumor=1"])
    assert exit_code.value.code == 2 and "the labels/regions are organ, tumour" in capsys.readouterr().err


# ---- compare ---------------------------------------------------------------------------------------------
def per_case_csv(folder, values: dict[str, float], tolerance=1.0, surface_metrics=SURFACE_DEFINITION):
    """A minimal evaluate output: one class, Dice and HD95 from ``values`` (HD95 = 10 × (1 − Dice)); the
    summary records ``tolerance`` as ``evaluate`` does ({"tumour": mm}; a bare number as older versions did) and
    the surface definition (None: not recorded, as before surface elements)."""
    folder.mkdir(parents=True)
    columns = ["case", "class", "label_or_region", "Dice", "VOE", "RVD", "HD95", "ASSD", "NSD"]
    with open(folder / PER_CASE_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for case, d in values.items():
            writer.writerow([case, "tumour", "2", d, 1 - d, -0.1, 10 * (1 - d), 1 - d, d])
    summary = {"nsd_tolerance_mm": tolerance}
    if surface_metrics is not None:
        summary["surface_metrics"] = surface_metrics
    (folder / SUMMARY_FILE).write_text(json.dumps(summary))
    return folder


def test_compare_means_paired_test_and_gap_recovered(tmp_path):
    from scipy.stats import wilcoxon

    cases = [f"c{i}" for i in range(8)]
    rng = np.random.default_rng(0)
    student = dict(zip(cases, rng.uniform(0.5, 0.7, 8)))
    teacher = {c: v + 0.2 for c, v in student.items()}
    seeds = [{c: v + 0.05 + 0.02 * s + 0.01 * i for i, (c, v) in enumerate(student.items())} for s in range(2)]
    runs = [
        load_run("teacher", [per_case_csv(tmp_path / "t", teacher)]),
        load_run("student", [per_case_csv(tmp_path / "s", student)]),
        load_run("hlfd", [per_case_csv(tmp_path / f"h{s}", seeds[s]) for s in range(2)]),
    ]
    rows = compare_runs(runs, "student", "teacher")
    get = {(r["run"], r["metric"]): r for r in rows}
    hlfd = get[("hlfd", "Dice")]
    seed_means = [np.mean(list(s.values())) for s in seeds]
    assert hlfd["mean"] == pytest.approx(np.mean(seed_means))
    assert hlfd["std"] == pytest.approx(np.std(seed_means, ddof=1)) and hlfd["std_over"] == "repeats"
    assert get[("student", "Dice")]["std"] == pytest.approx(np.std(list(student.values()), ddof=1))
    paired = [np.mean([s[c] for s in seeds]) - student[c] for c in cases]
    assert hlfd["delta_vs_baseline"] == pytest.approx(np.mean(paired))
    assert hlfd["p_value"] == pytest.approx(wilcoxon(paired).pvalue)
    assert hlfd["gap_recovered"] == pytest.approx((hlfd["mean"] - np.mean(list(student.values()))) / 0.2)
    # lower-is-better metrics recover the gap with the same sign
    assert get[("hlfd", "HD95")]["gap_recovered"] == pytest.approx(hlfd["gap_recovered"])
    assert get[("hlfd", "|RVD|")]["mean"] == pytest.approx(0.1)
    assert get[("hlfd", "|RVD|")]["gap_recovered"] is None  # the teacher is no better: no gap to recover
    markdown = format_markdown(rows, "student", "teacher", runs[0].tolerances_mm)
    assert "| hlfd | 2 × 8 |" in markdown and "NSD@1mm" in markdown and r"\|RVD\|" in markdown
    assert f"{100 * hlfd['gap_recovered']:.0f}%" in markdown


def test_compare_names_each_class_tolerance_and_refuses_mixed_surface_definitions(tmp_path):
    student = load_run("student", [per_case_csv(tmp_path / "s", {"x": 0.5, "y": 0.6}, {"tumour": 1.15})])
    hlfd = load_run("hlfd", [per_case_csv(tmp_path / "h", {"x": 0.6, "y": 0.7}, {"tumour": 1.15})])
    assert "NSD@1.15mm" in format_markdown(
        compare_runs([student, hlfd], "student"), "student", None, hlfd.tolerances_mm
    )
    old = load_run("old", [per_case_csv(tmp_path / "o", {"x": 0.6, "y": 0.7}, 1.15, surface_metrics=None)])
    assert old.tolerances_mm == {"tumour": 1.15} and old.surface_metrics.startswith("boundary voxels")
    with pytest.raises(EvaluationError, match="different surface metrics .*evaluate them all again"):
        compare_runs([student, old], "student")
    with pytest.raises(EvaluationError, match="its repeats were evaluated with different surface metrics"):
        load_run("mixed", [tmp_path / "s", tmp_path / "o"])


def test_compare_refuses_runs_on_other_cases_unless_asked_for_the_common_ones(tmp_path):
    student = load_run("student", [per_case_csv(tmp_path / "s", {"a": 0.5, "b": 0.6, "c": 0.7})])
    hlfd = load_run("hlfd", [per_case_csv(tmp_path / "h", {"a": 0.6, "b": 0.8, "d": 0.1})])
    with pytest.raises(EvaluationError, match=r"tumour: the runs were not evaluated on the same cases \(student: 3 "
                       r"cases \(c not in every run\); hlfd: 3 cases \(d not in every run\)\).*--common-cases to "
                       r"compare the 2 cases"):  # fmt: skip
        compare_runs([student, hlfd], "student")
    rows = {(r["run"], r["metric"]): r for r in compare_runs([student, hlfd], "student", only_common_cases=True)}
    assert rows[("student", "Dice")]["mean"] == pytest.approx(0.55) and rows[("hlfd", "Dice")]["mean"] == 0.7
    assert rows[("hlfd", "Dice")]["delta_vs_baseline"] == pytest.approx(0.15)
    assert rows[("hlfd", "Dice")]["paired_cases"] == rows[("hlfd", "Dice")]["cases"] == 2
    markdown = format_markdown(list(rows.values()), "student", None)
    assert "+0.150 (p=0.5, n=2)" in markdown


def test_no_gap_recovered_where_teacher_and_student_are_tied(tmp_path):
    cases = [f"c{i}" for i in range(8)]
    student = dict(zip(cases, [0.5, 0.7, 0.6, 0.4, 0.5, 0.6, 0.7, 0.5]))
    teacher = {c: v + (0.01 if i % 2 else -0.008) for i, (c, v) in enumerate(student.items())}  # a tie
    hlfd = {c: v + 0.05 for c, v in student.items()}
    runs = [
        load_run(name, [per_case_csv(tmp_path / name, values)])
        for name, values in (("teacher", teacher), ("student", student), ("hlfd", hlfd))
    ]
    rows = compare_runs(runs, "student", "teacher")
    dice = next(r for r in rows if r["run"] == "hlfd" and r["metric"] == "Dice")
    assert dice["gap_recovered"] is None  # without the tie check: 0.05 / 0.001 = 5000 %
    assert dice["gap_withheld"].startswith("teacher and student are tied within noise (paired p = ")
    markdown = format_markdown(rows, "student", "teacher")
    assert "No gap recovered for Dice, VOE, ASSD (mm), NSD: teacher and student are tied within noise" in markdown
    assert r"No gap recovered for \|RVD\|: the teacher is not better than student." in markdown
    # the text names the baseline the gap is measured from (the benchmark compares KD rows with student_init too)
    runs = [load_run("student_init" if r.name == "student" else r.name, [per_case_csv(tmp_path / "b" / r.name, values)])
            for r, values in zip(runs, (teacher, student, hlfd))]  # fmt: skip
    rows = compare_runs(runs, "student_init", "teacher")
    dice = next(r for r in rows if r["run"] == "hlfd" and r["metric"] == "Dice")
    assert dice["gap_withheld"].startswith("teacher and student_init are tied within noise (paired p = ")


def test_compare_refuses_one_evaluation_given_twice_in_a_run(tmp_path, capsys):
    """`student=X,X` counted one evaluation as two repeats ("± 0.000"); a copy of it would do the same."""
    x = per_case_csv(tmp_path / "x", {"a": 0.5, "b": 0.6})
    shutil.copytree(x, tmp_path / "copy")
    y = per_case_csv(tmp_path / "y", {"a": 0.55, "b": 0.6})
    with pytest.raises(EvaluationError, match=r"run student: .*x/metrics_per_case.csv is .*x/metrics_per_case.csv"):
        load_run("student", [x, x / PER_CASE_FILE])
    with pytest.raises(EvaluationError, match="has the same contents as .* one evaluation would count as two"):
        load_run("student", [x, tmp_path / "copy"])
    assert len(load_run("student", [x, y]).sources) == 2
    output = tmp_path / "a_file"
    output.write_text("")
    for args in (["student=" + f"{x},{x}"], [f"student={x}", "-o", str(output)]):
        with pytest.raises(SystemExit) as exit_code:
            main(["compare", *args])
        assert exit_code.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_code:  # evaluate's -o as well, before anything is computed
        main(["evaluate", str(x), str(y), "-o", str(output / "sub")])
    assert exit_code.value.code == 2 and "a_file is a file" in capsys.readouterr().err
    assert output.read_text() == ""


def test_compare_refuses_runs_it_cannot_pair(tmp_path):
    a = load_run("student", [per_case_csv(tmp_path / "a", {"x": 0.5})])
    b = load_run("hlfd", [per_case_csv(tmp_path / "b", {"x": 0.6}, tolerance=2.0)])
    with pytest.raises(EvaluationError, match="different NSD tolerances"):
        compare_runs([a, b], "student")
    with pytest.raises(EvaluationError, match=r"student: tumour=1 mm; hlfd: tumour=2 mm"):
        compare_runs([a, b], "student")
    with pytest.raises(EvaluationError, match="no run named 'baseline'"):
        compare_runs([a], "baseline")
    with pytest.raises(EvaluationError, match="run `nnunet_hlfd evaluate`"):
        load_run("x", [tmp_path / "nothing"])


def test_efficiency_models_and_settings_are_parsed_and_refused_with_the_fix(tmp_path):
    from pathlib import Path

    from nnunet_hlfd.cli.evaluation import named_paths
    from nnunet_hlfd.evaluation.efficiency import ModelSpec, Setting, measure_efficiency, model_specs, settings_grid

    named = named_paths(["ens=/r/T__P__3d_fullres@0,1,2", "one=/r/S__P__3d_fullres@all", "/r/B"])
    assert model_specs(named, "0") == [
        ModelSpec("ens", Path("/r/T__P__3d_fullres"), ("0", "1", "2")),
        ModelSpec("one", Path("/r/S__P__3d_fullres"), ("all",)),
        ModelSpec("B", Path("/r/B"), ("0",)),
    ]
    grid = settings_grid(["pytorch", "onnx"], [False, True], [0.5, 0.75])
    assert len(grid) == 8 and grid[0] == Setting("pytorch", False, 0.5) and grid[-1] == Setting("onnx", True, 0.75)
    assert grid[-1].label == "onnx, TTA on, step 0.75"
    with pytest.raises(EvaluationError, match="backend"):
        settings_grid(["tensorrt"], [False], [0.5])
    with pytest.raises(EvaluationError, match=r"step size\(s\) \[1.5\]"):
        settings_grid(["pytorch"], [False], [1.5])
    spec = ModelSpec("a", tmp_path)
    with pytest.raises(EvaluationError, match="need the images"):
        measure_efficiency([spec], ["cpu"], references=tmp_path)
    with pytest.raises(EvaluationError, match="unique"):
        measure_efficiency([spec, spec], ["cpu"])
