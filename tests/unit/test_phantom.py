"""CT phantoms from the real KiTS label maps: geometry kept, intensities where they belong, deterministic,
resumable, refused when the settings change."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_data

from nnunet_hlfd.benchmark.phantom import (
    IMAGE_FILE,
    LABEL_FILE,
    PhantomError,
    PhantomSettings,
    make_phantom,
    patient_axes,
    plot_phantom_samples,
    synthesize_ct,
    write_phantoms,
)

SETTINGS = PhantomSettings(in_plane_mm=3.0, slice_mm=5.0, margin_mm=20.0)


@pytest.fixture(scope="module")
def case_00000():
    label_file = shared_data("kits19") / "case_00000" / LABEL_FILE
    original = sitk.ReadImage(str(label_file))
    image, label = make_phantom(label_file, 0, SETTINGS)
    return original, image, label


def test_geometry_is_the_labels_own_cropped_around_the_kidneys(case_00000):
    original, image, label = case_00000
    assert image.GetDirection() == original.GetDirection() == label.GetDirection()
    assert image.GetOrigin() == label.GetOrigin() and image.GetSize() == label.GetSize()
    # KiTS stores the slice (superior) axis first: it gets slice_mm, the others in_plane_mm
    assert label.GetSpacing() == pytest.approx((5.0, 3.0, 3.0))
    # every kidney voxel of the original lies inside the phantom's physical box, with the margin around it
    kidney = np.argwhere(sitk.GetArrayViewFromImage(original) > 0)[:, ::-1]  # SimpleITK index order
    corners = [original.TransformIndexToPhysicalPoint([int(v) for v in kidney.min(0)]),
               original.TransformIndexToPhysicalPoint([int(v) for v in kidney.max(0)])]  # fmt: skip
    for point in corners:
        index = np.array(label.TransformPhysicalPointToContinuousIndex(point))
        assert (index > 20.0 / np.array(label.GetSpacing()) - 1.5).all()
        assert (index < np.array(label.GetSize()) - 20.0 / np.array(label.GetSpacing()) + 0.5).all()
    # labels keep their values and roughly their volume (nearest-neighbour resampling)
    voxel = np.prod(label.GetSpacing()) / np.prod(original.GetSpacing())
    for value in (1, 2):
        before = (sitk.GetArrayViewFromImage(original) == value).sum()
        after = (sitk.GetArrayViewFromImage(label) == value).sum() * voxel
        assert after == pytest.approx(before, rel=0.15)


def test_intensities_of_air_bone_kidney_and_tumour(case_00000):
    _, image, label = case_00000
    hu, lab = sitk.GetArrayFromImage(image).astype(float), sitk.GetArrayFromImage(label)
    assert image.GetPixelID() == sitk.sitkInt16
    assert np.percentile(hu, 1) < -900  # air outside the body
    assert hu.max() > 400  # the vertebra
    kidney = hu[lab == 1]
    assert 90 < kidney.mean() < 190
    tumour = hu[lab == 2]
    assert 0 < tumour.mean() < 160 and tumour.std() > 15  # heterogeneous and overlapping kidney and soft tissue


def test_synthesis_by_hand_on_a_box_kidney():
    label = np.zeros((60, 60, 20), np.uint8)
    label[18:30, 8:20, 6:14] = 1  # one kidney, patient right, near the back
    label[22:26, 10:14, 9:11] = 2
    axes = [(1, 1.0), (0, 1.0), (2, 1.0)]  # numpy axis 0 = posterior, 1 = left, 2 = superior
    rng = lambda: np.random.default_rng([0, 7])  # noqa: E731
    hu = synthesize_ct(label, (2.0, 2.0, 4.0), axes, rng())
    assert np.array_equal(hu, synthesize_ct(label, (2.0, 2.0, 4.0), axes, rng()))  # deterministic
    assert not np.array_equal(hu, synthesize_ct(label, (2.0, 2.0, 4.0), axes, np.random.default_rng([1, 7])))
    inner = hu[21:27, 11:17, 8:12][label[21:27, 11:17, 8:12] == 1]  # deep in the kidney: medulla, 90-120 ± noise
    assert 60 < np.median(inner) < 150
    # posterior of the body outline (20-30 mm behind the kidney's back at 60 mm): air
    assert hu[-1, 0, 10] < -900 and hu[-1, 30, 10] < -900 and hu[10, 14, 10] > -200


def test_patient_axes_follow_the_direction_matrix():
    image = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    image.SetDirection((0, 0, 1, 0, 1, 0, -1, 0, 0))  # KiTS: SimpleITK axis 0 runs inferior
    assert patient_axes(image) == [(0, 1.0), (1, 1.0), (2, -1.0)]  # numpy axes: left, posterior, superior


def test_folder_is_written_once_resumed_and_refused_with_other_settings(tmp_path):
    source = shared_data("kits19")
    out = tmp_path / "phantoms"
    assert write_phantoms(source, out, SETTINGS, max_cases=2, progress=False) == ["case_00000", "case_00001"]
    files = sorted(out.glob("case_*/*.nii.gz"))
    assert [f.name for f in files] == [IMAGE_FILE, LABEL_FILE] * 2 and not list(out.rglob(".partial*"))
    assert (out / "LICENSE").is_file() and (out / "kits.json").is_file()
    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    (out / "case_00001" / IMAGE_FILE).unlink()  # as if interrupted before this file
    write_phantoms(source, out, SETTINGS, max_cases=2, progress=False)
    assert os.stat(out / "case_00000" / IMAGE_FILE).st_mtime_ns == stamps[out / "case_00000" / IMAGE_FILE]
    assert (out / "case_00001" / IMAGE_FILE).is_file()
    assert json.loads((out / "phantom_settings.json").read_text())["in_plane_mm"] == 3.0
    with pytest.raises(PhantomError, match="other settings"):
        write_phantoms(source, out, PhantomSettings(in_plane_mm=2.0), max_cases=2, progress=False)
    # other label maps: refused, the record kept (it was rewritten with the new source, the phantoms the old ones)
    record = (out / "phantom_settings.json").read_text()
    assert set(json.loads(record)["labels"]) == {"case_00000", "case_00001"}
    with pytest.raises(PhantomError, match="holds phantoms of other label maps"):
        write_phantoms(shared_data("kits23"), out, SETTINGS, max_cases=2, progress=False)
    assert (out / "phantom_settings.json").read_text() == record
    # a record from before the fingerprints is judged by its source path, and gains them
    legacy = {k: v for k, v in json.loads(record).items() if k != "labels"}
    (out / "phantom_settings.json").write_text(json.dumps(legacy))
    with pytest.raises(PhantomError, match="holds phantoms of other label maps"):
        write_phantoms(shared_data("kits23"), out, SETTINGS, max_cases=2, progress=False)
    write_phantoms(source, out, SETTINGS, max_cases=2, progress=False)
    assert json.loads((out / "phantom_settings.json").read_text()) == json.loads(record)
    with pytest.raises(PhantomError, match="no case_XXXXX"):
        write_phantoms(tmp_path / "phantoms" / "case_00000", tmp_path / "other", SETTINGS, progress=False)
    plot_phantom_samples(out, ["case_00000", "case_00001"], tmp_path / "samples.png")
    import matplotlib.pyplot as plt

    assert plt.imread(tmp_path / "samples.png").std() > 0.05
