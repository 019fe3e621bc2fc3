"""Deploy bundles on a tiny untrained 3D model: what export writes, that stock nnU-Net and ONNX Runtime load it and
compute what the results folder computes, and every refusal (before anything is written). Parity on trained models,
2D and 3D, labels and regions, runs in the integration tests (``assert_bundle_predicts_like``)."""

import json
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
