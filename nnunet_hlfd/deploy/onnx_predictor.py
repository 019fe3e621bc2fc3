"""Prediction from a deploy bundle with ONNX Runtime, inside nnU-Net's own predictor.

Preprocessing, the sliding window, its Gaussian weighting, mirroring (TTA), the fold ensemble and the export of
segmentations are nnU-Net's ``nnUNetPredictor`` unchanged; only the network call is swapped: :class:`OnnxNetwork`
stands where the PyTorch network stood. nnU-Net loads each fold's weights into its network in turn; here that
selects the fold's ONNX Runtime session. A bundle exported with ``--quantize int8`` runs its int8 networks unless
the float ones are asked for.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from nnunet_hlfd.deploy.bundle import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, fold_name, read_bundle
from nnunet_hlfd.errors import DeployError

# Logits of a case, bundle vs results folder: ONNX Runtime's float32 kernels differ from PyTorch's by ~1e-5, and
# nnU-Net accumulates the sliding window in float16, so a logit may move by a float16 rounding step (2^-10 of its
# size). Where a voxel's Gaussian weight is subnormal in float16 (below 6e-5: image corners that only a tile's tail
# covers) the rounding is coarser, in both backends alike; hence: within tolerance on LOGITS_AGREEMENT of the voxels.
LOGITS_TOLERANCE = {"atol": 2e-3, "rtol": 2e-3}
LOGITS_AGREEMENT = 0.999
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def logits_agreement(got: torch.Tensor, expected: torch.Tensor) -> float:
    """The fraction of logits within LOGITS_TOLERANCE of the expected ones."""
    got, expected = got.float(), expected.float()
    close = (got - expected).abs() <= LOGITS_TOLERANCE["atol"] + LOGITS_TOLERANCE["rtol"] * expected.abs()
    return close.float().mean().item()


def execution_providers(device: torch.device, requested: list[str] | None) -> list[str]:
    """The ONNX Runtime providers for ``device``: the requested ones (checked), else CUDA on a GPU and the CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if requested:
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise DeployError(
                f"execution provider(s) {unknown} are not in this onnxruntime build (it has {available}); install "
                "the build that has them (e.g. onnxruntime-gpu for CUDAExecutionProvider) or pick among these"
            )
        return list(requested)
    if device.type == "cuda":
        if CUDA_PROVIDER not in available:
            raise DeployError(
                f"-device cuda: this onnxruntime build has no {CUDA_PROVIDER} (it has {available}); install "
                "onnxruntime-gpu, or run the network on the CPU with -device cpu"
            )
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


class OnnxNetwork(torch.nn.Module):
    """The network call of nnU-Net's predictor, run by ONNX Runtime: one session per fold.

    Tiles are handed over with ONNX Runtime's IO binding: the session reads the tile's memory and writes the logits
    into a tensor allocated here, on the tile's device when its provider runs there (CUDA: no trip through host
    memory), on the host otherwise. ``io_binding = False`` goes through NumPy arrays on the host instead (the path
    the GPU check compares it with)."""

    def __init__(self, sessions: dict[str, object], output_channels: int, io_binding: bool = True) -> None:
        super().__init__()
        self.sessions = sessions
        self.fold = next(iter(sessions))
        self.output_channels = output_channels
        self.io_binding = io_binding

    def load_state_dict(self, fold: str, strict: bool = True, assign: bool = False):  # noqa: ARG002
        """nnU-Net's predictor 'loads the weights' of each fold in turn (its ``list_of_parameters``): the fold names
        stand for them, and loading one picks its session."""
        self.fold = fold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self.sessions[self.fold]
        if not self.io_binding:
            logits = session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().to("cpu", torch.float32).numpy()})
            return torch.from_numpy(logits[0]).to(x.device)
        on_device = x.device.type == "cuda" and CUDA_PROVIDER in session.get_providers()
        tile = x.detach().to(x.device if on_device else "cpu", torch.float32).contiguous()
        logits = torch.empty((tile.shape[0], self.output_channels, *tile.shape[2:]), dtype=torch.float32,
                             device=tile.device)  # fmt: skip
        where = ("cuda", tile.device.index or 0) if on_device else ("cpu", 0)
        binding = session.io_binding()
        binding.bind_input(INPUT_NAME, *where, np.float32, tuple(tile.shape), tile.data_ptr())
        binding.bind_output(OUTPUT_NAME, *where, np.float32, tuple(logits.shape), logits.data_ptr())
        if on_device:
            torch.cuda.current_stream(tile.device).synchronize()  # the tile is written before ONNX Runtime reads it
        session.run_with_iobinding(binding)  # returns once the logits are written, on the device too
        return logits.to(x.device)


def network_file(manifest: dict, float_network: bool = False) -> str:
    """The ONNX file each fold runs: the int8 network of a quantized bundle, unless ``float_network``."""
    quantization = manifest.get("quantization")
    return ONNX_FILE if float_network or not quantization else quantization["network_file"]


def open_sessions(bundle: Path, folds: list[str], providers: list[str], file: str = ONNX_FILE) -> dict[str, object]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # as many threads as nnU-Net gives PyTorch, so that the two backends are compared on the same cores
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: ORT warns about every initializer it folds
    return {
        fold: onnxruntime.InferenceSession(str(bundle / fold_name(fold) / file), options, providers=providers)
        for fold in folds
    }


def load_bundle_predictor(
    bundle: Path,
    folds: list[str] | None = None,
    tile_step_size: float = 0.5,
    use_mirroring: bool = True,
    device: torch.device = torch.device("cpu"),
    providers: list[str] | None = None,
    perform_everything_on_device: bool = True,
    allow_tqdm: bool = True,
    verbose: bool = False,
    float_network: bool = False,
):
    """An ``nnUNetPredictor`` whose network is an :class:`OnnxNetwork` over the bundle's ``folds`` (default: all):
    the int8 networks of a quantized bundle, unless ``float_network``."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    bundle = Path(bundle)
    if not 0 < tile_step_size <= 1:
        raise DeployError(f"-step_size {tile_step_size}: it must be in (0, 1] (nnU-Net's default is 0.5)")
    manifest = read_bundle(bundle, folds)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeployError("-device cuda: PyTorch sees no CUDA GPU here; use -device cpu")
    chosen = manifest["chosen_folds"]
    providers = execution_providers(device, providers)
    sessions = open_sessions(bundle, chosen, providers, network_file(manifest, float_network))
    plans_manager = PlansManager(load_json(str(bundle / "plans.json")))
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's note that a CPU predictor works off the device
        predictor = nnUNetPredictor(
            tile_step_size=tile_step_size,
            use_mirroring=use_mirroring,
            perform_everything_on_device=perform_everything_on_device and device.type == "cuda",
            device=device,
            verbose=verbose,
            allow_tqdm=allow_tqdm,
        )
    mirror_axes = manifest["inference_allowed_mirroring_axes"]
    compile_flag = os.environ.pop("nnUNet_compile", None)  # torch.compile cannot trace into ONNX Runtime
    try:
        predictor.manual_initialization(
            OnnxNetwork(sessions, manifest["output_channels"]),
            plans_manager,
            plans_manager.get_configuration(manifest["configuration"]),
            list(chosen),
            load_json(str(bundle / "dataset.json")),
            manifest["checkpoint_trainer"],
            tuple(mirror_axes) if mirror_axes is not None else None,
        )
    finally:
        if compile_flag is not None:
            os.environ["nnUNet_compile"] = compile_flag
    predictor.bundle_manifest = manifest
    return predictor
