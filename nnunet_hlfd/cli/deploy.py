"""The ``export`` and ``predict`` commands of ``nnunet_hlfd``: a trained model into a deploy bundle, and prediction
from the bundle with ONNX Runtime (nnU-Net's own pipeline around it; options under nnU-Net's own names)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_hlfd.errors import DeployError, exit_with_message

COMMANDS = ("export", "predict")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="a trained model -> deploy bundle: ONNX network, plans, dataset.json, weights-only checkpoint",
        description="Export folds of a finished nnU-Net model (any trainer of this package, or nnU-Net's own) into "
        "a deploy bundle: per fold an ONNX network without deep-supervision heads (dynamic batch, the plans' patch "
        "size; checked against PyTorch on a random batch) and a weights-only checkpoint that "
        "nnUNetv2_predict_from_modelfolder -m BUNDLE loads; plus plans.json, dataset.json and bundle.json.",
    )
    export.add_argument("model", help="results folder: nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION")
    export.add_argument("-f", nargs="+", default=["0"], help="fold(s) to export, e.g. 0, or 0 1 2 3 4 (default: 0)")
    export.add_argument(
        "-o", required=True, help="the bundle folder to write (must not exist, unless --overwrite and it is a bundle)"
    )
    export.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint to export (default: %(default)s)")
    export.add_argument(
        "--quantize",
        choices=["int8", "fp16"],
        help="also write each fold's int8 network (for CPUs: ONNX Runtime static quantization, QDQ, calibrated on "
        "training images) or float16 network (for GPUs); predict runs it. Its cost in Dice: measure it with "
        "nnunet_hlfd efficiency on a test set",
    )
    export.add_argument(
        "--calibration_images",
        help="training images to calibrate int8 on (default: $nnUNet_raw/DATASET/imagesTr of the model's dataset); "
        "never the test set",
    )
    export.add_argument(
        "--calibration_cases",
        type=int,
        help="how many of them (the first, sorted; up to 8 sliding-window tiles each; default: 4)",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the bundle at -o: only a folder that export wrote (its bundle.json lists every file in it); "
        "anything else is refused untouched",
    )

    predict = commands.add_parser(
        "predict",
        help="predict with a deploy bundle on ONNX Runtime (nnU-Net's preprocessing, sliding window and export)",
        description="Segment a folder of images with a deploy bundle. Everything but the network call is "
        "nnU-Net's predictor: preprocessing, sliding window with Gaussian weighting, mirroring (TTA), the fold "
        "ensemble, resampling and export.",
    )
    predict.add_argument("bundle", help="a bundle written by nnunet_hlfd export")
    predict.add_argument("-i", required=True, help="input folder (CASE_0000.nii.gz ..., as for nnUNetv2_predict)")
    predict.add_argument("-o", required=True, help="output folder")
    predict.add_argument("-f", nargs="+", help="folds of the bundle to ensemble (default: all it holds)")
    predict.add_argument(
        "--float",
        action="store_true",
        dest="float_network",
        help="run the float networks of a bundle exported with --quantize (default: its int8 or fp16 networks)",
    )
    predict.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (default: %(default)s)")
    predict.add_argument("--disable_tta", action="store_true", help="no mirroring: faster, usually a little worse")
    predict.add_argument(
        "-device",
        choices=["cpu", "cuda"],
        help="where nnU-Net's sliding window runs (default: cuda when PyTorch sees a GPU, else cpu)",
    )
    predict.add_argument(
        "--provider",
        nargs="+",
        help="ONNX Runtime execution provider(s), in order of preference (default: CUDAExecutionProvider + "
        "CPUExecutionProvider on -device cuda, CPUExecutionProvider on cpu)",
    )
    predict.add_argument("--save_probabilities", action="store_true", help="also write the class probabilities")
    predict.add_argument(
        "--continue_prediction", action="store_true", help="skip cases already predicted in -o (resume)"
    )
    predict.add_argument("-npp", type=int, default=3, help="preprocessing processes (default: 3; 0 with -nps 0: none)")
    predict.add_argument("-nps", type=int, default=3, help="export processes (default: 3; 0 with -npp 0: none)")
    predict.add_argument("--disable_progress_bar", action="store_true")


def run(args: argparse.Namespace) -> None:
    with exit_with_message(f"nnunet_hlfd {args.command}"):
        if args.command == "export":
            _export(args)
        else:
            _predict(args)


def _export(args: argparse.Namespace) -> None:
    from nnunet_hlfd.deploy.bundle import Quantization, export_bundle, parse_folds

    if args.quantize is None and (args.calibration_images is not None or args.calibration_cases is not None):
        raise DeployError("--calibration_images/--calibration_cases calibrate --quantize int8: add --quantize int8")
    quantization = None
    if args.quantize is not None:
        quantization = Quantization(args.quantize)
        if args.calibration_images is not None:
            quantization.images = Path(args.calibration_images)
        if args.calibration_cases is not None:
            quantization.case_count = args.calibration_cases
    manifest = export_bundle(
        Path(args.model), parse_folds(args.f), Path(args.o), args.chk, args.overwrite, quantization=quantization
    )
    size, source = manifest["bundle_bytes"], manifest["results_folder_bytes"]
    print(
        f"wrote {args.o}: folds {', '.join(manifest['folds'])}, {manifest['parameters']:,} parameters, "
        f"{size / 2**20:.1f} MiB ({size / source:.0%} of the folds' results folders, {source / 2**20:.1f} MiB)"
    )
    if manifest["quantization"]:
        quantized = manifest["quantization"]
        calibrated = ""
        if "calibration_cases" in quantized:
            calibrated = (
                f"calibrated on {len(quantized['calibration_cases'])} case(s), {quantized['calibration_tiles']} tiles; "
            )
        print(
            f"{args.quantize}: {calibrated}predict runs the {args.quantize} networks (--float: the float ones). "
            f"Measure its Dice cost on a test set with nnunet_hlfd efficiency float={args.model} "
            f"{args.quantize}={args.o} --backend onnx -i IMAGES -r LABELS --cases 0"
        )
    print(
        f"predict: nnunet_hlfd predict {args.o} -i IMAGES -o OUT   (or nnUNetv2_predict_from_modelfolder -m {args.o})"
    )


def _predict(args: argparse.Namespace) -> None:
    import torch

    from nnunet_hlfd.deploy.onnx_predictor import load_bundle_predictor
    from nnunet_hlfd.deploy.trained import checked_input_cases
    from nnunet_hlfd.files import output_folder

    output = output_folder(Path(args.o))
    if output.resolve() == Path(args.i).resolve():
        raise DeployError(
            f"-o {args.o} is the input folder -i: the segmentations would land among the images (and be read as "
            "images by the next predict); choose another -o"
        )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    predictor = load_bundle_predictor(
        Path(args.bundle),
        args.f,
        tile_step_size=args.step_size,
        use_mirroring=not args.disable_tta,
        device=device,
        providers=args.provider,
        allow_tqdm=not args.disable_progress_bar,
        float_network=args.float_network,
    )
    checked_input_cases(Path(args.i), predictor.dataset_json)  # every input whole, named and of the model's channels
    output.mkdir(parents=True, exist_ok=True)
    if args.npp == 0 and args.nps == 0:
        predictor.predict_from_files_sequential(
            args.i, args.o, save_probabilities=args.save_probabilities, overwrite=not args.continue_prediction
        )
    else:
        predictor.predict_from_files(
            args.i,
            args.o,
            save_probabilities=args.save_probabilities,
            overwrite=not args.continue_prediction,
            num_processes_preprocessing=max(args.npp, 1),
            num_processes_segmentation_export=max(args.nps, 1),
        )
