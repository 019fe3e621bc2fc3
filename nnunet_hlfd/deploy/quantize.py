"""Reduced-precision networks for a deploy bundle: int8 for CPUs (ONNX Runtime's static quantization, QDQ, calibrated
on real cases) and float16 for GPUs.

Static quantization needs the range of every activation; it is measured on the tiles nnU-Net's sliding window
feeds the network (the same preprocessing, padding and tile positions as in prediction) of a few training cases of
the dataset, never its test cases. Weights are quantized per output channel (signed int8), activations per tensor
(unsigned int8, asymmetric, MinMax ranges: the segmentation logits' extremes are the decisions, not outliers).
Only convolutions and transposed convolutions are quantized: instance normalisation and the nonlinearity run in
float between them, which keeps the per-case statistics of ``InstanceNormalization`` exact.

float16 (``--quantize fp16``) converts weights and activations with ONNX Runtime's converter, inputs and outputs kept
float32 so that nnU-Net's predictor is unchanged; it needs no calibration and pays off on GPUs (tensor cores).

What either costs is measured where it matters, in Dice on a test set (``nnunet_hlfd efficiency`` with the bundle);
at export, the network's agreement with the float one is recorded and printed: on the calibration tiles for int8,
on two random patches for float16.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from nnunet_hlfd.errors import DeployError

INT8, FP16 = "int8", "fp16"
QUANTIZATIONS = (INT8, FP16)
NETWORK_FILES = {INT8: "network_int8.onnx", FP16: "network_fp16.onnx"}
INT8_FILE = NETWORK_FILES[INT8]
QUANTIZED_OPS = ["Conv", "ConvTranspose"]
DEFAULT_CALIBRATION_CASES = 4
MAX_TILES_PER_CASE = 8  # evenly spaced over the case's sliding-window tiles: enough for min/max, bounded in 3D


def default_calibration_images(results_folder: Path) -> Path | None:
    """``$nnUNet_raw/DatasetXXX_Name/imagesTr`` of the results folder's dataset, if it is there."""
    from nnunetv2.paths import nnUNet_raw

    if not nnUNet_raw.is_set():
        return None
    folder = Path(nnUNet_raw.get()) / Path(results_folder).resolve().parent.name / "imagesTr"
    return folder if folder.is_dir() else None


def cross_validation_cases(results_folder: Path) -> set[str] | None:
    """Every case of the dataset's ``splits_final.json`` (training and validation of any fold), or None without one.
    A test set held out of imagesTr (as the phantom benchmark holds it) is in no fold, so calibration never sees it."""
    from nnunetv2.paths import nnUNet_preprocessed

    if not nnUNet_preprocessed.is_set():
        return None
    splits = Path(nnUNet_preprocessed.get()) / Path(results_folder).resolve().parent.name / "splits_final.json"
    if not splits.is_file():
        return None
    return {case for fold in json.loads(splits.read_text()) for part in ("train", "val") for case in fold[part]}


def calibration_cases(
    images: Path | None, dataset_json: dict, count: int, allowed: set[str] | None = None
) -> dict[str, list[str]]:
    """The first ``count`` cases (sorted) of ``images`` (of ``allowed`` only, when given), after checking that each
    is whole and has the model's channels; refused with the fix before anything is written."""
    from nnunet_hlfd.deploy.trained import checked_input_cases

    if images is None:
        raise DeployError(
            "--quantize int8 calibrates on training images: $nnUNet_raw/DATASET/imagesTr of this model's dataset "
            "is not there, so pass --calibration_images FOLDER (CASE_0000.nii.gz ..., never the test set)"
        )
    if count < 1:
        raise DeployError(f"--calibration_cases {count}: calibrate on at least one case (default 4)")
    if not Path(images).is_dir():
        raise DeployError(f"--calibration_images {images} is not a folder")
    cases = checked_input_cases(Path(images), dataset_json)
    if allowed is not None:
        cases = {case: files for case, files in cases.items() if case in allowed}
        if not cases:
            raise DeployError(
                f"none of the cases in {images} is in the dataset's splits_final.json: pass the training images "
                "with --calibration_images"
            )
    return dict(sorted(cases.items())[:count])


def calibration_tiles(predictor, cases: dict[str, list[str]]) -> list[np.ndarray]:
    """Per case, up to MAX_TILES_PER_CASE of the tiles nnU-Net's sliding window feeds the network (batch of 1)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    from nnunet_hlfd.deploy.trained import preprocess_with_properties

    patch = predictor.configuration_manager.patch_size
    tiles = []
    for files in cases.values():
        data, _, _ = preprocess_with_properties(predictor, files)
        padded, _ = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
        chosen = np.unique(np.linspace(0, len(slicers) - 1, min(len(slicers), MAX_TILES_PER_CASE)).round().astype(int))
        tiles += [padded[slicers[i]][None].numpy().astype(np.float32) for i in chosen]
    return tiles


class _Tiles:
    """ONNX Runtime's CalibrationDataReader over a list of tiles, read one range at a time (``CalibStridedMinMax``):
    the calibrator keeps every activation of the tiles of a range in memory, a few GiB per 3D tile at full width."""

    def __init__(self, tiles: list[np.ndarray], input_name: str) -> None:
        self._tiles, self._input_name = tiles, input_name
        self.set_range(0, len(tiles))

    def __len__(self) -> int:
        return len(self._tiles)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self._tiles[start_index:end_index])

    def get_next(self) -> dict | None:
        tile = next(self._next, None)
        return None if tile is None else {self._input_name: tile}


def quantize_int8(float_onnx: Path, int8_onnx: Path, tiles: list[np.ndarray], input_name: str) -> dict:
    """``float_onnx`` quantized to ``int8_onnx`` (QDQ), calibrated on ``tiles``; returns the settings used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory(prefix="quantize_") as scratch, _quiet():
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_onnx), str(prepared))  # shape inference and graph clean-up, as ORT advises
        quantize_static(
            str(prepared),
            str(int8_onnx),
            _Tiles(tiles, input_name),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # the ranges of one tile at a time, merged (ORT's CalibMaxIntermediateOutputs drops what it collected)
            extra_options={"CalibStridedMinMax": 1},
        )
    return {
        "type": INT8,
        "format": "QDQ (ONNX Runtime quantize_static)",
        "quantized_ops": QUANTIZED_OPS,
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, asymmetric, per tensor",
        "calibration_method": "MinMax",
    }


def convert_fp16(float_onnx: Path, fp16_onnx: Path) -> dict:
    """``float_onnx`` with float16 weights and activations (float32 inputs and outputs); returns the settings."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        onnx.save(convert_float_to_float16(onnx.load(str(float_onnx)), keep_io_types=True), str(fp16_onnx))
    return {"type": FP16, "format": "float16 weights and activations, float32 input and output"}


def random_tiles(input_shape: tuple[int, ...], count: int = 2) -> list[np.ndarray]:
    """``count`` seeded standard-normal patches of ``input_shape`` (batch 1): the agreement check without images."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, *input_shape[1:]), dtype=np.float32) for _ in range(count)]


def agreement(float_onnx: Path, reduced_onnx: Path, tiles: list[np.ndarray], input_name: str) -> dict:
    """A reduced-precision network against the float one on ``tiles``: voxels with the same argmax, largest
    |logit change|."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    sessions = [
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for path in (float_onnx, reduced_onnx)
    ]
    same, total, largest = 0, 0, 0.0
    for tile in tiles:
        reference, quantized = (s.run(None, {input_name: tile})[0] for s in sessions)
        same += int((reference.argmax(1) == quantized.argmax(1)).sum())
        total += reference[:, 0].size
        largest = max(largest, float(np.abs(reference - quantized).max()))
    return {"argmax_agreement": same / total, "max_abs_logit_change": largest, "tiles": len(tiles)}


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer logs a line per tensor it skips; keep its warnings out of the export's output."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
