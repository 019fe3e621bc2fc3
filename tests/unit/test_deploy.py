"""Deploy bundles on a tiny untrained 3D model: what export writes, that stock nnU-Net and ONNX Runtime load it and
compute what the results folder computes, and every refusal (before anything is written). Parity on trained models,
2D and 3D, labels and regions, runs in the integration tests (``assert_bundle_predicts_like``)."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_DATASET_JSON, tiny_plans, write_teacher

from nnunet_hlfd.cli import main
from nnunet_hlfd.deploy import bundle as bundle_module
from nnunet_hlfd.deploy.bundle import CHECKPOINT, MANIFEST, ONNX_FILE, export_bundle, read_bundle
from nnunet_hlfd.deploy.onnx_predictor import LOGITS_AGREEMENT, load_bundle_predictor, logits_agreement
from nnunet_hlfd.deploy.trained import load_predictor
from nnunet_hlfd.errors import DeployError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A results folder with two folds of random weights, and its bundle (exported once: ~10 s per fold)."""
    root = tmp_path_factory.mktemp("deploy")
    results = write_teacher(root, tiny_plans(), TINY_DATASET_JSON)
    torch.manual_seed(1)
    write_teacher(root, tiny_plans(), TINY_DATASET_JSON, fold="1", init_fold=1, folder="second")
    shutil.copytree(root / "Dataset990_HLFDSynthetic" / "second" / "fold_1", results / "fold_1")
    # what a finished training's checkpoint also holds, and a bundle must not
    for fold in ("fold_0", "fold_1"):
        full = torch.load(results / fold / CHECKPOINT, weights_only=False)
        full.update(optimizer_state={"state": {}, "big": torch.zeros(1000)}, logging={}, current_epoch=3)
        full["distillation"] = {"adapters": {"w": torch.zeros(10)}}
        torch.save(full, results / fold / CHECKPOINT)
    bundle = root / "bundle"
    main(["export", str(results), "-f", "0", "1", "-o", str(bundle)])
    return results, bundle


def random_case(shape=(1, 16, 32, 44)) -> torch.Tensor:
    """A preprocessed case larger than the 16×32×32 patch: two sliding-window tiles at step 0.5 and 0.75."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(3))


def test_bundle_holds_onnx_and_a_weights_only_checkpoint(exported):
    results, bundle = exported
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["folds"] == ["0", "1"] and manifest["configuration"] == "3d_fullres"
    assert manifest["input_shape"] == ["batch", 1, 16, 32, 32] and manifest["output_channels"] == 3
    assert manifest["checkpoint_trainer"] == "nnUNetTrainer"  # stock nnU-Net builds it without this package
    for fold in ("0", "1"):
        checkpoint = torch.load(bundle / f"fold_{fold}" / CHECKPOINT, weights_only=False)
        assert set(checkpoint) == {
            "network_weights",
            "init_args",
            "trainer_name",
            "inference_allowed_mirroring_axes",
            "current_epoch",
        }
        source = torch.load(results / f"fold_{fold}" / CHECKPOINT, weights_only=False)["network_weights"]
        assert all(torch.equal(checkpoint["network_weights"][k], v) for k, v in source.items())
        assert manifest["fold_records"][fold]["onnx_vs_pytorch_max_abs"] < 1e-3
    assert (bundle / "plans.json").read_bytes() == (results / "plans.json").read_bytes()
    written = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert manifest["bundle_bytes"] == written  # its size against the results folder: assert_bundle_predicts_like


def test_onnx_network_has_a_dynamic_batch_and_no_deep_supervision_heads(exported):
    import onnxruntime

    _, bundle = exported
    session = onnxruntime.InferenceSession(str(bundle / "fold_0" / ONNX_FILE), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == 1  # the full-resolution logits only
    for batch in (1, 3):
        (logits,) = session.run(None, {"image": np.zeros((batch, 1, 16, 32, 32), np.float32)})
        assert logits.shape == (batch, 3, 16, 32, 32)


@pytest.mark.parametrize("tta, step", [(False, 0.5), (True, 0.75)])
def test_stock_nnunet_and_onnx_runtime_compute_the_results_folder_logits(exported, tta, step):
    """Two folds ensembled, with and without mirroring: stock nnU-Net on the bundle's checkpoints is exact, ONNX
    Runtime within the export tolerance."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    results, bundle = exported
    case = random_case()

    def configured(predictor):
        predictor.tile_step_size, predictor.use_mirroring = step, tta
        predictor.allowed_mirroring_axes = (1, 2)  # 4 mirrorings per tile
        return predictor

    reference = configured(load_predictor(results, 0, CHECKPOINT, torch.device("cpu")))
    reference.list_of_parameters = [
        torch.load(results / f"fold_{f}" / CHECKPOINT, weights_only=False)["network_weights"] for f in (0, 1)
    ]
    expected = reference.predict_logits_from_preprocessed_data(case)

    stock = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    stock.initialize_from_trained_model_folder(str(bundle), use_folds=(0, 1))
    assert torch.equal(configured(stock).predict_logits_from_preprocessed_data(case), expected)

    onnx = configured(load_bundle_predictor(bundle, tile_step_size=step, use_mirroring=tta, allow_tqdm=False))
    got = onnx.predict_logits_from_preprocessed_data(case)
    assert got.shape == expected.shape
    assert logits_agreement(got, expected) >= LOGITS_AGREEMENT
    assert (got.argmax(0) == expected.argmax(0)).float().mean() >= 0.999
    # and the folds really are different networks, ensembled: one fold alone differs
    one = configured(load_bundle_predictor(bundle, ["1"], tile_step_size=step, use_mirroring=tta, allow_tqdm=False))
    assert not torch.allclose(one.predict_logits_from_preprocessed_data(case), expected, atol=1e-2)


def test_export_refuses_unfinished_and_foreign_folders_before_writing(exported, tmp_path):
    results, _ = exported
    with pytest.raises(DeployError, match="not an nnU-Net results folder"):
        export_bundle(results / "fold_0", [0], tmp_path / "b")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(results, unfinished)
    (unfinished / "fold_0" / CHECKPOINT).rename(unfinished / "fold_0" / "checkpoint_latest.pth")
    with pytest.raises(DeployError, match=r"has not finished training.*--c.*-chk checkpoint_latest.pth"):
        export_bundle(unfinished, [0], tmp_path / "b")
    with pytest.raises(DeployError, match="fold 4 was not trained"):
        export_bundle(results, [0, 4], tmp_path / "b")
    (tmp_path / "taken").mkdir()
    with pytest.raises(DeployError, match="--overwrite"):
        export_bundle(results, [0], tmp_path / "taken")
    with pytest.raises(DeployError, match="inside the results folder"):
        export_bundle(results, [0], results / "bundle")
    assert not (tmp_path / "b").exists() and not list((tmp_path / "taken").iterdir())


def test_an_export_that_differs_from_pytorch_is_refused_and_nothing_is_written(exported, tmp_path, monkeypatch):
    results, _ = exported
    monkeypatch.setattr(bundle_module, "EXPORT_TOLERANCE", {"atol": 0.0, "rtol": 0.0})
    with pytest.raises(DeployError, match="differs from PyTorch"):
        export_bundle(results, [0], tmp_path / "b", log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_bundle_refusals_name_the_fix(exported, tmp_path, capsys):
    results, bundle = exported
    with pytest.raises(DeployError, match="export it first"):
        read_bundle(results)
    with pytest.raises(DeployError, match=r"holds folds \['0', '1'\], not \['3'\]"):
        read_bundle(bundle, ["3"])
    with pytest.raises(DeployError, match="not in this onnxruntime build"):
        load_bundle_predictor(bundle, providers=["TensorrtExecutionProvider"])
    with pytest.raises(DeployError, match="must be in"):
        load_bundle_predictor(bundle, tile_step_size=1.5)
    if not torch.cuda.is_available():
        with pytest.raises(DeployError, match="sees no CUDA GPU"):
            load_bundle_predictor(bundle, device=torch.device("cuda"))
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with open(tampered / "fold_1" / ONNX_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(DeployError, match="sha256 differs"):
        read_bundle(tampered)
    read_bundle(tampered, ["0"])  # the other fold is intact
    # the command line turns each into a message and exit code 2, before writing anything
    for source, images, message in (
        (results, tmp_path, "export it first"),
        (bundle, tmp_path / "none", "does not exist"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", str(source), "-i", str(images), "-o", str(tmp_path / "out"), "-device", "cpu"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def export_cli(results, output, *extra) -> int:
    """`nnunet_hlfd export RESULTS -f 0 -o OUTPUT ...`'s exit code (0 when it wrote the bundle)."""
    try:
        main(["export", str(results), "-f", "0", "-o", str(output), *extra])
    except SystemExit as exit_:
        return exit_.code
    return 0


def snapshot(folder) -> dict:
    """Every file below ``folder`` with its bytes: what must survive a refused command."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_everything_but_a_bundle_and_leaves_it_untouched(exported, tmp_path, monkeypatch, capsys):
    """The probes that deleted data (exit 0): -o $nnUNet_results, a teacher's results folder, '..', '.', a user's
    folder, a file, a bundle holding the user's file. Each is refused, exit 2, and every sentinel file survives."""
    results, bundle = exported
    nnunet_results = tmp_path / "nnUNet_results"
    (nnunet_results / "Dataset001_Other" / "model").mkdir(parents=True)
    (nnunet_results / "Dataset001_Other" / "model" / "sentinel.txt").write_text("a trained model")
    monkeypatch.setenv("nnUNet_results", str(nnunet_results))
    teacher = tmp_path / "teacher_results"
    shutil.copytree(results, teacher)
    users = tmp_path / "users_folder"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("mine")
    bundle_with_extra = tmp_path / "bundle_with_extra"
    shutil.copytree(bundle, bundle_with_extra)
    (bundle_with_extra / "fold_0" / "my_notes.txt").write_text("mine")
    holds_the_model = results.parent  # a folder around the model being exported
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    before = {p: snapshot(p) for p in (nnunet_results, teacher, users, bundle_with_extra, holds_the_model)}

    monkeypatch.chdir(work)
    for output, message in (
        (nnunet_results, "one of nnU-Net's folders"),
        (teacher, "it is an nnU-Net results folder"),
        (users, "holds no bundle.json but notes.txt"),
        (a_file, "is a file"),
        (bundle_with_extra, r"holds files a bundle does not \(fold_0/my_notes.txt\)"),
        (holds_the_model, "holds the model being exported"),
        (work, "the current directory"),
        (work.parent, "the current directory"),  # -o ..
    ):
        assert export_cli(results, output, "--overwrite") == 2, output
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(output) in err, err
        assert re.search(message, err), err
    assert {p: snapshot(p) for p in before} == before and a_file.read_text() == "mine"
    assert not list(tmp_path.rglob(".partial*")) and not list(tmp_path.rglob(".replaced*"))

    # a bundle is replaced, written beside and renamed, nothing left over
    replaced = tmp_path / "replaced"
    shutil.copytree(bundle, replaced)
    old = json.loads((replaced / MANIFEST).read_text())["created"]
    (replaced / MANIFEST).write_text((replaced / MANIFEST).read_text().replace(old, "then"))
    assert export_cli(results, replaced, "--overwrite") == 0
    manifest = read_bundle(replaced)
    assert manifest["folds"] == ["0"] and manifest["created"] != "then"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_refuses_a_truncated_checkpoint_with_its_name(exported, tmp_path, capsys):
    results, _ = exported
    damaged = tmp_path / "damaged"
    shutil.copytree(results, damaged)
    checkpoint = damaged / "fold_0" / CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    assert export_cli(damaged, tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert f"{checkpoint} cannot be read as a PyTorch checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".partial*"))
    # below a file: refused as well, before anything is written
    (tmp_path / "a_file").write_text("")
    assert export_cli(results, tmp_path / "a_file" / "bundle") == 2
    assert "a_file is a file" in capsys.readouterr().err


def test_every_bundle_file_is_hashed_and_checked(exported, tmp_path, capsys):
    """An edited intensity mean in plans.json changed 19 % of the voxels with exit code 0; a missing or garbled
    file gave a traceback. Now each is refused with the file named."""
    _, bundle = exported
    manifest = read_bundle(bundle)
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk and len(on_disk) == 6

    def copy(name):
        target = tmp_path / name
        shutil.copytree(bundle, target)
        return target

    edited = copy("edited")
    plans = json.loads((edited / "plans.json").read_text())
    properties = plans["foreground_intensity_properties_per_channel"]["0"]
    properties["mean"] = properties["mean"] + 10
    (edited / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(DeployError, match=r"plans.json is not the exported file \(its sha256 differs"):
        read_bundle(edited)
    missing = copy("missing")
    (missing / "dataset.json").unlink()
    with pytest.raises(DeployError, match=r"dataset.json is missing"):
        read_bundle(missing)
    checkpoint = copy("checkpoint")
    (checkpoint / "fold_1" / CHECKPOINT).write_bytes(b"0")
    with pytest.raises(DeployError, match="fold_1/checkpoint_final.pth is not the exported file"):
        read_bundle(checkpoint)
    read_bundle(checkpoint, ["0"])  # fold 1 is not used
    garbled = copy("garbled")
    (garbled / MANIFEST).write_text('{"format": 2, "folds": [')
    with pytest.raises(DeployError, match="bundle.json is not JSON"):
        read_bundle(garbled)
    (garbled / MANIFEST).write_text('{"format": 2}')
    with pytest.raises(DeployError, match="is not a bundle manifest"):
        read_bundle(garbled)
    old = copy("old")
    legacy = json.loads((old / MANIFEST).read_text())
    del legacy["files"]
    (old / MANIFEST).write_text(json.dumps({**legacy, "format": 1}))
    with pytest.raises(DeployError, match="older nnunet_hlfd export .* export it again"):
        read_bundle(old)
    with pytest.raises(DeployError, match="a fold is given twice"):
        read_bundle(bundle, ["0", "0"])
    # through the command line: one line, exit code 2
    for source, folds in ((edited, ["0"]), (garbled, ["0"]), (bundle, ["0", "0"])):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", str(source), "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-f", *folds])
        assert exit_.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def write_image(path, shape=(12, 20, 20), seed: int = 0) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))
    sitk.WriteImage(image, str(path), useCompression=True)


OUT = "out"  # the output folder beside the images, unless a case says otherwise


@pytest.mark.parametrize(
    "break_it, output, message",
    [
        (lambda i: cut_in_half(i / "case_b_0000.nii.gz"), OUT, r"case_b_0000.nii.gz is (truncated|corrupt)"),
        (lambda i: write_image(i / "case_b_0001.nii.gz"), OUT, r"case case_b .* has the channel files .* takes 1 "),
        (lambda i: write_image(i / "case_a.nii.gz"), OUT, r"not named CASE_XXXX.nii.gz .* predictions written"),
        (lambda i: None, "images", "is the input folder"),
        (lambda i: None, "images/case_a_0000.nii.gz/out", r"cannot be a folder \(.* is a file\)"),
        (lambda i: None, "images/case_a_0000.nii.gz", r"case_a_0000.nii.gz cannot be a folder: give a folder"),
    ],
    ids=["truncated", "two-channels", "prediction-among-inputs", "o-is-i", "o-below-a-file", "o-is-a-file"],
)
def test_predict_refuses_inputs_it_would_segment_wrongly_before_writing(
    exported, tmp_path, capsys, break_it, output, message
):
    _, bundle = exported
    images = tmp_path / "images"
    images.mkdir()
    for case in ("a", "b"):
        write_image(images / f"case_{case}_0000.nii.gz")
    break_it(images)
    before = snapshot(images)
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(bundle), "-i", str(images), "-o", str(tmp_path / output), "-device", "cpu"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert snapshot(images) == before and not (tmp_path / OUT).exists()


def cut_in_half(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---- int8 bundles -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A results folder (seeded random weights) exported with --quantize int8, calibrated on 2 of 3 training
    images."""
    root = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    results = write_teacher(root, tiny_plans(), TINY_DATASET_JSON)
    images = root / "imagesTr"
    images.mkdir()
    for seed, case in enumerate(("c", "a", "b")):
        write_image(images / f"case_{case}_0000.nii.gz", shape=(20, 40, 36), seed=seed)
    bundle = root / "bundle_int8"
    assert export_cli(results, bundle, "--quantize", "int8", "--calibration_images", str(images),
                      "--calibration_cases", "2") == 0  # fmt: skip
    return results, images, bundle


def test_int8_bundle_records_its_calibration_and_hashes_the_int8_network(quantized):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_hlfd.deploy.quantize import INT8_FILE, MAX_TILES_PER_CASE

    results, images, bundle = quantized
    manifest = read_bundle(bundle)
    quantization = manifest["quantization"]
    assert quantization["type"] == "int8" and quantization["network_file"] == INT8_FILE
    assert quantization["calibration_cases"] == ["case_a", "case_b"]  # the first two, sorted; never all three
    assert quantization["calibration_images"] == str(images.resolve())
    # the tiles nnU-Net's sliding window cuts from each case (its own step computation), at most 8 a case
    predictor = load_predictor(results, 0, CHECKPOINT, torch.device("cpu"))
    from nnunet_hlfd.deploy.trained import preprocess_with_properties

    data, _, _ = preprocess_with_properties(predictor, [str(images / "case_a_0000.nii.gz")])
    padded = np.maximum(data.shape[1:], predictor.configuration_manager.patch_size)  # nnU-Net pads to the patch
    steps = predictor._internal_get_sliding_window_slicers(tuple(padded))
    assert len(steps) > 1
    assert quantization["calibration_tiles"] == 2 * min(len(steps), MAX_TILES_PER_CASE)
    assert f"fold_0/{INT8_FILE}" in manifest["files"]  # hashed like every file
    agreement = manifest["fold_records"]["0"]["int8_vs_float"]
    assert 0.9 <= agreement["argmax_agreement"] <= 1 and agreement["max_abs_logit_change"] > 0
    # nnU-Net's own predictor still loads the bundle (its float checkpoint)
    stock = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    stock.initialize_from_trained_model_folder(str(bundle), use_folds=(0,))


def test_int8_weights_are_per_channel_symmetric_int8_within_half_a_step(quantized):
    """Every quantized convolution weight, dequantized by hand (int8 · its channel's scale), is within half a
    quantization step of the float weight, and each channel's scale is its largest |weight| / 127."""
    import onnx
    from onnx import numpy_helper

    from nnunet_hlfd.deploy.quantize import INT8_FILE

    _, _, bundle = quantized
    model = onnx.load(str(bundle / "fold_0" / INT8_FILE))
    floats = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(bundle / "fold_0" / ONNX_FILE)).graph.initializer}
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dequantized = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
    weights = [n for n in dequantized if initializers[n.input[0]].dtype == np.int8]
    convolutions = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert len(weights) == len(convolutions) > 0  # every convolution's weight is int8
    checked = 0
    for node in weights:
        quantized_weight, scale = initializers[node.input[0]], initializers[node.input[1]]
        name = node.input[0].removesuffix("_quantized")
        if name not in floats:
            continue
        weight = floats[name].astype(np.float64)
        channel_axis = next(a.i for a in node.attribute if a.name == "axis") if node.attribute else 0
        shape = [1] * weight.ndim
        shape[channel_axis] = -1
        step = scale.astype(np.float64).reshape(shape)
        assert np.all(np.abs(quantized_weight * step - weight) <= step / 2 + 1e-7)
        largest = np.abs(weight).max(axis=tuple(a for a in range(weight.ndim) if a != channel_axis))
        assert np.allclose(scale, largest / 127, rtol=1e-5)
        checked += 1
    assert checked == len(weights)


def test_efficiency_times_an_int8_bundle_on_onnx_runtime_only_beside_its_float_model(quantized, tmp_path):
    """PyTorch would run the int8 bundle's float checkpoint: no such row under the int8 name; its ONNX Runtime row
    says int8."""
    from nnunet_hlfd.evaluation.efficiency import ModelSpec, Setting, measure_efficiency

    results, images, bundle = quantized
    models = [ModelSpec("float", results, (0,)), ModelSpec("int8", bundle, (0,))]
    settings = [Setting("pytorch", False, 0.5), Setting("onnx", False, 0.5)]
    rows = measure_efficiency(models, ["cpu"], settings, images=images, num_cases=1, repeats=1, progress=False)
    assert [(r["model"], r["backend"], r["precision"]) for r in rows] == [
        ("float", "pytorch", "float32"), ("float", "onnx", "float32"), ("int8", "onnx", "int8")
    ]  # fmt: skip
    assert all(r["seconds"]["network"] > 0 for r in rows)


def test_predict_runs_the_int8_network_and_float_on_request(quantized, tmp_path):
    from nnunet_hlfd.deploy.trained import preprocess_with_properties

    results, images, bundle = quantized
    predictor = load_predictor(results, 0, CHECKPOINT, torch.device("cpu"))
    # a case like those it was calibrated on, but not one of them
    case, _, _ = preprocess_with_properties(predictor, [str(images / "case_c_0000.nii.gz")])
    float_bundle = tmp_path / "float"
    assert export_cli(results, float_bundle, "-f", "0") == 0
    expected = load_bundle_predictor(float_bundle, use_mirroring=False, allow_tqdm=False)
    expected = expected.predict_logits_from_preprocessed_data(case)
    on_request = load_bundle_predictor(bundle, use_mirroring=False, allow_tqdm=False, float_network=True)
    assert torch.equal(on_request.predict_logits_from_preprocessed_data(case), expected)
    int8 = load_bundle_predictor(bundle, use_mirroring=False, allow_tqdm=False)
    got = int8.predict_logits_from_preprocessed_data(case)
    assert not torch.allclose(got, expected, atol=1e-3)  # a different network ran
    # close to the float network on a case like its calibration cases (measured: 22 % relative change of the
    # logits, 98.7 % of voxels the same class: random weights put the logits close together)
    assert ((got - expected).norm() / expected.norm()).item() < 0.35
    assert (got.argmax(0) == expected.argmax(0)).float().mean() >= 0.95
    # and through the command line, segmentations from the int8 network
    out = tmp_path / "out"
    main(["predict", str(bundle), "-i", str(images), "-o", str(out), "-device", "cpu", "-npp", "0", "-nps", "0",
          "--disable_progress_bar"])  # fmt: skip
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_a.nii.gz", "case_b.nii.gz", "case_c.nii.gz"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--quantize", "int8"], r"\$nnUNet_raw/DATASET/imagesTr .* pass --calibration_images"),
        (["--quantize", "int8", "--calibration_images", "{missing}"], "is not a folder"),
        (["--quantize", "int8", "--calibration_images", "{empty}"], "no images ending in _0000.nii.gz"),
        (["--quantize", "int8", "--calibration_images", "{images}", "--calibration_cases", "0"], "at least one case"),
        (["--calibration_images", "{images}"], "add --quantize int8"),
        (["--quantize", "fp16", "--calibration_images", "{images}"], "fp16 needs no calibration"),
    ],
    ids=["no-images", "missing", "empty", "zero-cases", "no-quantize", "fp16-calibrated"],
)
def test_int8_export_refuses_bad_calibration_before_writing(quantized, tmp_path, capsys, monkeypatch, extra, message):
    results, images, _ = quantized
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))  # no imagesTr of this dataset there
    (tmp_path / "empty").mkdir()
    folders = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "images": images}
    extra = [e.format(**folders) for e in extra]
    assert export_cli(results, tmp_path / "bundle", *extra) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bundle").exists() and not list(tmp_path.glob(".partial*"))


def test_io_binding_hands_tiles_to_onnx_runtime_as_the_host_copy_does(exported):
    """The bound call (the default) returns exactly what ONNX Runtime's plain run on a NumPy copy returns, also for
    a tile that is a view into a larger case (nnU-Net's sliding window hands over slices)."""
    _, bundle = exported
    predictor = load_bundle_predictor(bundle, ["0", "1"], use_mirroring=False, allow_tqdm=False)
    network = predictor.network
    assert network.io_binding and network.output_channels == 3
    case = torch.randn((1, 20, 40, 36), generator=torch.Generator().manual_seed(5))
    tiles = torch.stack([case[:, :16, :32, :32], case[:, 4:, 8:, 4:]])  # a batch of two
    view = case[None, :, 2:18, 3:35, 1:33]  # non-contiguous
    assert not view.is_contiguous()
    for fold in ("0", "1"):
        network.load_state_dict(fold)
        for x in (tiles, view):
            network.io_binding = True
            bound = network(x)
            network.io_binding = False
            assert torch.equal(bound, network(x)) and bound.shape == (x.shape[0], 3, 16, 32, 32)
    network.io_binding = True


def test_fp16_bundle_runs_float16_weights_with_float32_input_and_output(exported, tmp_path):
    import onnx
    from onnx import TensorProto

    from nnunet_hlfd.deploy.quantize import NETWORK_FILES

    results, bundle = exported
    assert export_cli(results, tmp_path / "fp16", "--quantize", "fp16") == 0
    manifest = read_bundle(tmp_path / "fp16")
    assert manifest["quantization"]["type"] == "fp16" and "calibration_cases" not in manifest["quantization"]
    model = onnx.load(str(tmp_path / "fp16" / "fold_0" / NETWORK_FILES["fp16"]))
    weights = [i for i in model.graph.initializer if len(i.dims) > 1]
    assert weights and all(i.data_type == TensorProto.FLOAT16 for i in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # nnU-Net's predictor unchanged
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert manifest["fold_records"]["0"]["fp16_vs_float"]["argmax_agreement"] > 0.99
    case = random_case()
    expected = load_bundle_predictor(bundle, ["0"], use_mirroring=False, allow_tqdm=False)
    expected = expected.predict_logits_from_preprocessed_data(case)
    got = load_bundle_predictor(tmp_path / "fp16", use_mirroring=False, allow_tqdm=False)
    got = got.predict_logits_from_preprocessed_data(case)
    # float16 keeps ~3 significant digits: logits move (it is not the float network), a few voxels by ~0.1 where
    # activations of magnitude ~10 were rounded, the mean by far less, and the classes stay
    difference = (got.float() - expected.float()).abs()
    assert difference.max() > 0 and difference.mean() < 0.01
    assert (got.argmax(0) == expected.argmax(0)).float().mean() > 0.99


def test_int8_calibrates_by_default_on_the_cross_validation_cases_of_imagestr(quantized, tmp_path, monkeypatch):
    """nnUNet_raw's imagesTr may hold a held-out test set (the phantom benchmark's does): the default calibration
    takes only cases of the dataset's splits_final.json."""
    import json as json_module

    results, images, _ = quantized
    raw, preprocessed = tmp_path / "raw" / "Dataset990_HLFDSynthetic", tmp_path / "pre" / "Dataset990_HLFDSynthetic"
    shutil.copytree(images, raw / "imagesTr")  # case_a, case_b, case_c
    preprocessed.mkdir(parents=True)
    (preprocessed / "splits_final.json").write_text(json_module.dumps([{"train": ["case_c"], "val": ["case_b"]}]))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert export_cli(results, tmp_path / "bundle", "--quantize", "int8") == 0
    quantization = read_bundle(tmp_path / "bundle")["quantization"]
    assert quantization["calibration_cases"] == ["case_b", "case_c"]  # never case_a, the "test" case
    assert quantization["calibration_images"] == str((raw / "imagesTr").resolve())
    # a split that names none of imagesTr's cases is refused before anything is written
    (preprocessed / "splits_final.json").write_text(json_module.dumps([{"train": ["x"], "val": ["y"]}]))
    assert export_cli(results, tmp_path / "other", "--quantize", "int8") == 2
    assert not (tmp_path / "other").exists()
