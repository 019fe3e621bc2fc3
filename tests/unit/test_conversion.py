"""Challenge downloads -> nnU-Net raw datasets: real KiTS label maps, generated LiTS/MSD/prostate layouts, bad input."""

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_data

from nnunet_hlfd.conversion import CONVERTERS, ConversionError

# A tilted grid, so that any silent reorientation or header rewrite shows up.
DIRECTION = tuple(np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=float).ravel())


def convert(dataset: str, input_folder, output_root, **options):
    return CONVERTERS[dataset].function(input_folder, output_root=output_root, **options)


def write(path: Path, array: np.ndarray, spacing=(0.8, 0.8, 2.5), origin=(10.0, -20.0, 5.0), direction=DIRECTION):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))


def phantom_label(shape=(6, 20, 24), values=(1, 2), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[1:5, 3:15, 4:18] = values[0]
    label[2:4, rng.integers(5, 8) : 11, 8:13] = values[-1]
    return label


def image_for(label: np.ndarray, seed=0) -> np.ndarray:
    return (label.astype(np.int16) * 80 - 100 + np.random.default_rng(seed).integers(0, 20, label.shape)).astype(
        np.int16
    )


def geometry(path: Path):
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetSize(), np.array(reader.GetSpacing()), np.array(reader.GetOrigin()), reader.GetDirection()


def assert_same_geometry(a: Path, b: Path):
    ga, gb = geometry(a), geometry(b)
    assert ga[0] == gb[0] and ga[3] == gb[3]
    np.testing.assert_array_equal(ga[1], gb[1])
    np.testing.assert_array_equal(ga[2], gb[2])


def array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


# ---------------------------------------------------------------------------------------------------
# KiTS with the challenges' real label maps (images built on exactly the label's grid)


def real_kits_layout(tmp_path: Path, challenge: str, cases: list[str], subfolder: str, test_cases=None) -> Path:
    """Real label maps with images on their grids; ``test_cases`` {test id: real case whose grid it takes} get
    an image only, as the challenge's test cases."""
    source = shared_data(challenge)
    root = tmp_path / challenge
    grids = {case: case for case in cases} | dict(test_cases or {})
    for case, grid_of in grids.items():
        folder = root / subfolder / case
        folder.mkdir(parents=True)
        label = sitk.ReadImage(str(source / grid_of / "segmentation.nii.gz"))
        image = sitk.GetImageFromArray(image_for(sitk.GetArrayViewFromImage(label)))
        image.CopyInformation(label)
        sitk.WriteImage(image, str(folder / "imaging.nii.gz"), useCompression=True)
        if case in cases:
            os.symlink(source / case / "segmentation.nii.gz", folder / "segmentation.nii.gz")
    return root


def test_kits19_real_labels_with_a_test_case(tmp_path):
    # Three of the smallest KiTS19 cases; case_00030's grid plays the test case 210 (imaging only, as 210-299 are).
    root = real_kits_layout(tmp_path, "kits19", ["case_00038", "case_00021"], "data", {"case_00210": "case_00030"})
    out = tmp_path / "raw"
    out.mkdir()
    summary = convert("kits19", root, out, verify=True)
    ds = out / "Dataset040_KiTS19"
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "kidney": 1, "tumor": 2}
    assert meta["channel_names"] == {"0": "CT"}
    assert (meta["numTraining"], meta["numTest"], meta["file_ending"]) == (2, 1, ".nii.gz")
    assert (summary.training, summary.test) == (2, 1)
    for case in ("case_00038", "case_00021"):
        src = root / "data" / case
        assert_same_geometry(ds / "labelsTr" / f"{case}.nii.gz", src / "segmentation.nii.gz")
        assert_same_geometry(ds / "imagesTr" / f"{case}_0000.nii.gz", src / "imaging.nii.gz")
        np.testing.assert_array_equal(array(ds / "labelsTr" / f"{case}.nii.gz"), array(src / "segmentation.nii.gz"))
    assert geometry(ds / "labelsTr" / "case_00038.nii.gz")[3] == DIRECTION  # KiTS's own direction, not reoriented
    assert (ds / "imagesTs" / "case_00210_0000.nii.gz").is_file()
    assert not (ds / "labelsTr" / "case_00210.nii.gz").exists()
    assert [p.name for p in out.iterdir()] == ["Dataset040_KiTS19"]  # no temporary folder left


def test_kits23_real_labels_regions_and_tumor_task(tmp_path):
    cases = ["case_00402", "case_00403"]
    root = real_kits_layout(tmp_path, "kits23", cases, "dataset")
    out = tmp_path / "raw"
    out.mkdir()
    convert("kits23", root, out, verify=True)
    convert("kits23", root, out, task="tumor")
    regions = out / "Dataset220_KiTS2023"
    meta = json.loads((regions / "dataset.json").read_text())
    # nnU-Net's own KiTS23 declaration: kidney+masses, masses, tumour, painted kidney, cyst, tumour
    assert meta["labels"] == {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
    assert meta["regions_class_order"] == [1, 3, 2]
    tumor = out / "Dataset720_KiTS2023Tumor"
    assert json.loads((tumor / "dataset.json").read_text())["labels"] == {"background": 0, "tumor": 1}
    for case in cases:
        source = array(root / "dataset" / case / "segmentation.nii.gz")
        assert set(np.unique(source)) == {0, 1, 2, 3}  # the fixture has cysts, so the mapping is exercised
        np.testing.assert_array_equal(array(regions / "labelsTr" / f"{case}.nii.gz"), source)
        np.testing.assert_array_equal(array(tumor / "labelsTr" / f"{case}.nii.gz"), (source == 2).astype(np.uint8))
        assert_same_geometry(tumor / "labelsTr" / f"{case}.nii.gz", root / "dataset" / case / "segmentation.nii.gz")


def test_kits21_layout_uses_the_majority_vote_label(tmp_path):
    root = tmp_path / "kits21"
    for i in range(2):
        label = phantom_label(values=(1, 3), seed=i)
        label[2, 10:12, 10:12] = 2
        write(root / "data" / f"case_{i:05d}" / "imaging.nii.gz", image_for(label))
        write(root / "data" / f"case_{i:05d}" / "aggregated_MAJ_seg.nii.gz", label)
        write(root / "data" / f"case_{i:05d}" / "aggregated_OR_seg.nii.gz", np.full_like(label, 7))  # must be ignored
    convert("kits21", root, tmp_path, verify=True)
    ds = tmp_path / "Dataset135_KiTS21"
    assert json.loads((ds / "dataset.json").read_text())["regions_class_order"] == [1, 3, 2]
    np.testing.assert_array_equal(
        array(ds / "labelsTr" / "case_00001.nii.gz"), array(root / "data" / "case_00001" / "aggregated_MAJ_seg.nii.gz")
    )


# ---------------------------------------------------------------------------------------------------
# LiTS, MSD and multi-site prostate in their exact layouts


def test_lits_batches_nii_test_volumes_and_tumor_task(tmp_path):
    src = tmp_path / "LiTS"
    for n, batch in ((0, "Training Batch 1"), (1, "Training Batch 1"), (28, "Training Batch 2")):
        label = phantom_label(seed=n)
        write(src / batch / f"volume-{n}.nii", image_for(label))
        # LiTS-like header noise: the label's origin differs in the 6th digit
        write(src / batch / f"segmentation-{n}.nii", label, origin=(10.0, -20.0, 5.000004))
    write(src / "Test" / "test-volume-3.nii", image_for(phantom_label()))
    out = tmp_path / "raw"
    out.mkdir()
    summary = convert("lits", src, out, verify=True)
    ds = out / "Dataset029_LiTS"
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [
        "lits_000.nii.gz",
        "lits_001.nii.gz",
        "lits_028.nii.gz",
    ]
    assert [p.name for p in (ds / "imagesTs").iterdir()] == ["lits_test_003_0000.nii.gz"]
    assert json.loads((ds / "dataset.json").read_text())["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    # .nii rewritten as .nii.gz with the volume's header; labels snapped onto the volume's grid
    assert_same_geometry(ds / "imagesTr" / "lits_028_0000.nii.gz", src / "Training Batch 2" / "volume-28.nii")
    assert_same_geometry(ds / "labelsTr" / "lits_028.nii.gz", src / "Training Batch 2" / "volume-28.nii")
    np.testing.assert_array_equal(
        array(ds / "imagesTr" / "lits_001_0000.nii.gz"), array(src / "Training Batch 1" / "volume-1.nii")
    )
    assert summary.labels_aligned == ["lits_000", "lits_001", "lits_028"]

    convert("lits", src, out, task="tumor")
    tumor = array(out / "Dataset529_LiTSTumor" / "labelsTr" / "lits_028.nii.gz")
    np.testing.assert_array_equal(tumor, (phantom_label(seed=28) == 2).astype(np.uint8))


def msd_task(root: Path, modality: dict, labels: dict, shape4d: int | None, n_train=2, n_test=1) -> Path:
    prefix = root.name.split("_")[1].lower()
    for i in range(n_train + n_test):
        label = phantom_label(values=tuple(int(k) for k in labels if k != "0"), seed=i)
        case = f"{prefix}_{i:02d}.nii.gz"
        if shape4d:
            image = np.stack([image_for(label, seed=c) for c in range(shape4d)])  # (C, Z, Y, X): a 4D NIfTI
            write(
                root / ("imagesTr" if i < n_train else "imagesTs") / case,
                image,
                spacing=(0.6, 0.6, 3.6, 1.0),
                origin=(1.0, 2.0, 3.0, 0.0),
                direction=tuple(np.eye(4).ravel()),
            )
        else:
            write(root / ("imagesTr" if i < n_train else "imagesTs") / case, image_for(label))
        if i < n_train:
            kw = {"spacing": (0.6, 0.6, 3.6), "origin": (1.0, 2.0, 3.0), "direction": tuple(np.eye(3).ravel())}
            write(root / "labelsTr" / case, label, **(kw if shape4d else {}))
    (root / "imagesTr" / f"._{prefix}_00.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    meta = {
        "name": root.name,
        "modality": modality,
        "labels": labels,
        "numTraining": n_train,
        "training": [],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_prostate_4d_split_into_channels(tmp_path):
    root = msd_task(tmp_path / "Task05_Prostate", {"0": "T2", "1": "ADC"}, {"0": "background", "1": "PZ", "2": "TZ"}, 2)
    summary = convert("msd", root, tmp_path, verify=True)
    ds = tmp_path / "Dataset005_Prostate"
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T2", "1": "ADC"}
    assert meta["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    four_d = array(root / "imagesTr" / "prostate_01.nii.gz")
    for c in range(2):
        np.testing.assert_array_equal(array(ds / "imagesTr" / f"prostate_01_000{c}.nii.gz"), four_d[c])
        assert_same_geometry(ds / "imagesTr" / f"prostate_01_000{c}.nii.gz", ds / "labelsTr" / "prostate_01.nii.gz")
    assert sorted(p.name for p in (ds / "imagesTs").iterdir()) == ["prostate_02_0000.nii.gz", "prostate_02_0001.nii.gz"]
    assert summary.skipped == ["imagesTr/._prostate_00.nii.gz"]


def test_msd_liver(tmp_path):
    root = msd_task(tmp_path / "Task03_Liver", {"0": "CT"}, {"0": "background", "1": "liver", "2": "cancer"}, None)
    convert("msd", root, tmp_path, verify=True)
    ds = tmp_path / "Dataset003_Liver"
    assert json.loads((ds / "dataset.json").read_text())["labels"] == {"background": 0, "liver": 1, "cancer": 2}
    np.testing.assert_array_equal(
        array(ds / "labelsTr" / "liver_00.nii.gz"), array(root / "labelsTr" / "liver_00.nii.gz")
    )


def prostate_sites(root: Path, foreground=1) -> Path:
    for site, spelling, n in (("RUNMC", "segmentation", 2), ("BIDMC", "Segmentation", 1)):
        for i in range(n):
            label = (phantom_label(values=(1, 1), seed=i) * foreground).astype(np.uint8)
            write(root / site / f"Case{i:02d}.nii.gz", image_for(label))
            write(root / site / f"Case{i:02d}_{spelling}.nii.gz", label)
    (root / "RUNMC" / "README.txt").write_text("site notes")
    return root


def test_multisite_prostate_both_spellings_and_site_map(tmp_path):
    root = prostate_sites(tmp_path / "prostate")
    summary = convert("prostate-multisite", root, tmp_path, verify=True)
    ds = tmp_path / "Dataset170_ProstateMultiSite"
    assert json.loads((ds / "sites.json").read_text()) == {
        "BIDMC": ["BIDMC_Case00"],
        "RUNMC": ["RUNMC_Case00", "RUNMC_Case01"],
    }
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T2"} and meta["labels"] == {"background": 0, "prostate": 1}
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [
        "BIDMC_Case00.nii.gz", "RUNMC_Case00.nii.gz", "RUNMC_Case01.nii.gz",
    ]  # fmt: skip
    assert summary.skipped == ["RUNMC/README.txt"]


def test_multisite_prostate_255_masks_need_binarize(tmp_path):
    root = prostate_sites(tmp_path / "prostate", foreground=255)
    with pytest.raises(ConversionError, match=r"(?s)unexpected value\(s\) 255 .*--binarize"):
        convert("prostate-multisite", root, tmp_path)
    convert("prostate-multisite", root, tmp_path, binarize=True)
    label = array(tmp_path / "Dataset170_ProstateMultiSite" / "labelsTr" / "RUNMC_Case01.nii.gz")
    np.testing.assert_array_equal(label, phantom_label(values=(1, 1), seed=1))


# ---------------------------------------------------------------------------------------------------
# bad input: each refused with a message naming the case and the fix; an existing dataset survives


def small_kits19(root: Path, n=3) -> Path:
    for i in range(n):
        label = phantom_label(seed=i)
        write(root / "data" / f"case_{i:05d}" / "imaging.nii.gz", image_for(label, seed=i))
        write(root / "data" / f"case_{i:05d}" / "segmentation.nii.gz", label)
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def shift_spacing(path: Path) -> None:
    write(path, array(path), spacing=(0.8, 0.8, 3.0))


def add_label_5(path: Path) -> None:
    label = array(path)
    label[0, 0, 0] = 5
    write(path, label)


def html_error_page(path: Path) -> None:  # what a failed download often leaves behind
    path.write_bytes(b"<html>404 Not Found</html>")


GET_IMAGING = r"imaging.nii.gz is missing; fix: run `python -m starter_code.get_imaging`"
GRID = r"label and image are not on the same voxel grid: spacing \[0.8, 0.8, 3.0\] vs image \[0.8, 0.8, 2.5\]"
BREAKAGES = {
    # name: (file of case_00001 to break, how, expected message after "case_00001: ")
    "missing image": ("imaging.nii.gz", Path.unlink, GET_IMAGING),
    "unreadable": ("segmentation.nii.gz", html_error_page, r".*segmentation.nii.gz is corrupt"),
    "truncated gzip": ("imaging.nii.gz", truncate, r".*imaging.nii.gz is corrupt \(Compressed file ended"),
    "geometry": ("segmentation.nii.gz", shift_spacing, GRID),
    "label value": ("segmentation.nii.gz", add_label_5, r".* value\(s\) 5 \(1 voxels\); expected only \(0, 1, 2\)"),
}  # fmt: skip


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_bad_case_is_refused_and_an_existing_dataset_survives(tmp_path, breakage):
    root = small_kits19(tmp_path / "kits19")
    out = tmp_path / "raw"
    out.mkdir()
    convert("kits19", root, out)
    before = tree_digest(out / "Dataset040_KiTS19")
    file_name, damage, message = BREAKAGES[breakage]
    damage(root / "data" / "case_00001" / file_name)
    with pytest.raises(ConversionError, match="case_00001: " + message) as error:
        convert("kits19", root, out, overwrite=True)
    assert "fix:" in str(error.value)
    assert tree_digest(out / "Dataset040_KiTS19") == before
    assert [p.name for p in out.iterdir()] == ["Dataset040_KiTS19"]  # temporary folder removed


def test_truncated_file_that_simpleitk_would_read_silently(tmp_path):
    # SimpleITK fills a truncated .nii.gz with zeros without an error; the converter must not.
    root = small_kits19(tmp_path / "kits19")
    truncate(root / "data" / "case_00002" / "imaging.nii.gz")
    sitk.ReadImage(str(root / "data" / "case_00002" / "imaging.nii.gz"))  # no error here ...
    with pytest.raises(ConversionError, match="case_00002: .*corrupt"):  # ... but here
        convert("kits19", root, tmp_path)
    assert not list(tmp_path.glob("*Dataset*"))


def test_uncompressed_nii_cut_short_is_refused(tmp_path):
    src = tmp_path / "LiTS"
    label = phantom_label()
    write(src / "volume-0.nii", image_for(label))
    write(src / "segmentation-0.nii", label)
    data = (src / "volume-0.nii").read_bytes()
    (src / "volume-0.nii").write_bytes(data[:-100])
    with pytest.raises(ConversionError, match=r"lits_000: .*volume-0.nii is truncated \(\d+ of \d+ bytes\)"):
        convert("lits", src, tmp_path)


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="No case_XXXXX folders in .*empty"):
        convert("kits19", tmp_path / "empty", tmp_path)
    with pytest.raises(ConversionError, match="No volume-N.nii"):
        convert("lits", tmp_path / "empty", tmp_path)
    with pytest.raises(ConversionError, match="empty/imagesTr is missing: point at an extracted MSD task folder"):
        convert("msd", tmp_path / "empty", tmp_path, dataset_id=3, name="Liver")
    with pytest.raises(ConversionError, match="No site folders"):
        convert("prostate-multisite", tmp_path / "empty", tmp_path)
    with pytest.raises(ConversionError, match="does not exist"):
        convert("lits", tmp_path / "nowhere", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_existing_output_needs_overwrite_and_overwrite_replaces_it(tmp_path):
    root = small_kits19(tmp_path / "kits19", n=2)
    convert("kits19", root, tmp_path)
    ds = tmp_path / "Dataset040_KiTS19"
    (ds / "user_note.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists. Pass --overwrite"):
        convert("kits19", root, tmp_path)
    assert (ds / "user_note.txt").read_text() == "mine"
    small_kits19(root, n=3)
    summary = convert("kits19", root, tmp_path, overwrite=True)
    assert summary.training == 3 and not (ds / "user_note.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset040_KiTS19", "kits19"]


def test_id_taken_by_another_dataset_is_refused(tmp_path):
    root = small_kits19(tmp_path / "kits19", n=2)
    (tmp_path / "Dataset040_Other").mkdir()
    with pytest.raises(ConversionError, match="Dataset id 40 is already used by .*Dataset040_Other"):
        convert("kits19", root, tmp_path)


def test_incomplete_multisite_and_msd_layouts(tmp_path):
    root = prostate_sites(tmp_path / "prostate")
    (root / "BIDMC" / "Case00_Segmentation.nii.gz").unlink()
    with pytest.raises(ConversionError, match="BIDMC/Case00: no Case00_segmentation.nii.gz"):
        convert("prostate-multisite", root, tmp_path)
    task = msd_task(tmp_path / "Task03_Liver", {"0": "CT"}, {"0": "background", "1": "liver", "2": "cancer"}, None)
    (task / "labelsTr" / "liver_01.nii.gz").unlink()
    with pytest.raises(ConversionError, match="imagesTr/liver_01.nii.gz has no label"):
        convert("msd", task, tmp_path)


def test_cli_converts_with_workers_and_reports_errors(tmp_path):
    root = small_kits19(tmp_path / "kits19")
    out = tmp_path / "raw"
    out.mkdir()
    env = {**os.environ, "nnUNet_raw": str(out)}
    ok = subprocess.run(
        ["nnunet_hlfd", "convert", "kits19", str(root), "-np", "2", "--task", "tumor", "--verify"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "training cases: 3" in ok.stdout and "label value 1 (tumor) present in" in ok.stdout
    assert "verify_dataset_integrity Done" in ok.stdout
    assert "converting Dataset540_KiTS19Tumor" in ok.stderr  # progress bar
    with gzip.open(out / "Dataset540_KiTS19Tumor" / "labelsTr" / "case_00000.nii.gz") as f:
        assert f.read(4)  # a real gzip stream
    bad = subprocess.run(
        ["nnunet_hlfd", "convert", "kits19", str(root), "--task", "tumor"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "already exists. Pass --overwrite" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dataset_id": 0}, "Dataset id 0 is outside nnU-Net's range 1-999"),
        ({"name": ""}, "Dataset name '': use letters, digits"),
        ({"tolerance": float("inf")}, "--tolerance inf: the geometry tolerance must be a finite number ≥ 0"),
        ({"tolerance": -1.0}, "--tolerance -1.0: the geometry tolerance must be a finite number ≥ 0"),
    ],
)
def test_options_that_used_to_be_taken_silently_are_refused(tmp_path, options, message):
    root = small_kits19(tmp_path / "kits19", n=1)
    with pytest.raises(ConversionError, match=re.escape(message)):
        convert("kits19", root, tmp_path / "raw", **options)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_a_kits19_training_case_without_its_label_is_not_made_a_test_case(tmp_path):
    root = small_kits19(tmp_path / "kits19", n=2)
    (root / "data" / "case_00001" / "segmentation.nii.gz").unlink()
    with pytest.raises(ConversionError, match=r"case_00001: segmentation.nii.gz is missing; fix: download the case"):
        convert("kits19", root, tmp_path)
    (root / "data" / "case_00001").rename(root / "data" / "case_00210")  # the challenge's test range: 210-299
    summary = convert("kits19", root, tmp_path)
    assert (summary.training, summary.test) == (1, 1)


def test_an_interrupted_overwrite_is_recovered_by_the_next_run(tmp_path, capsys):
    root = small_kits19(tmp_path / "kits19", n=2)
    convert("kits19", root, tmp_path)
    ds = tmp_path / "Dataset040_KiTS19"
    # killed between setting the old dataset aside and moving the new one in: only the hidden copy holds it
    hidden = tmp_path / ".Dataset040_KiTS19.replaced-0123abcd"
    ds.rename(hidden)
    with pytest.raises(ConversionError, match="already exists. Pass --overwrite"):
        convert("kits19", root, tmp_path)
    assert f"restored {ds} from {hidden}" in capsys.readouterr().out
    assert (ds / "dataset.json").is_file() and not hidden.exists()
    # killed while deleting the replaced copy (the new dataset is in place): the copy is removed, and said so
    shutil.copytree(ds, hidden)
    convert("kits19", root, tmp_path, overwrite=True)
    assert f"removed {hidden}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset040_KiTS19", "kits19"]


def test_pool_workers_end_with_a_killed_parent(tmp_path):
    """The workers of worker_pool (the converter's and evaluate's) end after a SIGKILL of their parent."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from nnunet_hlfd.workers import worker_pool\n"
        "import os\n"
        "if __name__ == '__main__':\n"
        "    pool = worker_pool(2)\n"
        "    futures = [pool.submit(time.sleep, 600) for _ in range(2)]\n"
        "    time.sleep(5)\n"
        "    print(' '.join(str(p) for p in pool._processes), flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 2 and all(Path(f"/proc/{p}").exists() for p in workers)
    parent.kill()
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.2)
    alive = [p for p in workers if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text()]
    assert not alive, f"workers {alive} outlived their killed parent"
