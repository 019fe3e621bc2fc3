"""The ``evaluate``, ``compare``, ``efficiency`` and ``visualize`` commands of ``nnunet_hlfd``."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_hlfd.errors import EvaluationError, exit_with_message
from nnunet_hlfd.evaluation.metrics import DEFAULT_TOLERANCE_MM

COMMANDS = ("evaluate", "compare", "efficiency", "visualize")


def named_paths(items: list[str], multiple: bool = False) -> dict[str, list[Path]] | dict[str, Path]:
    """``NAME=PATH`` (``NAME=PATH,PATH`` if ``multiple``) or a bare ``PATH``, named after its folder."""
    named = {}
    for item in items:
        name, sep, paths = item.partition("=")
        if not sep:
            name, paths = Path(item).resolve().name, item
        if not name or not paths:
            raise EvaluationError(f"'{item}' is not NAME=PATH (e.g. student=predictions/student)")
        if name in named:
            raise EvaluationError(f"the name '{name}' is given twice: name each one, NAME=PATH")
        parsed = [Path(p) for p in paths.split(",") if p] if multiple else Path(paths)
        named[name] = parsed
    return named


def add_parsers(commands: argparse._SubParsersAction) -> None:
    from nnunetv2.configuration import default_num_processes

    evaluate = commands.add_parser(
        "evaluate",
        help="predictions vs reference labels: Dice, VOE, RVD, HD95, ASSD, NSD per case and label/region",
        description="Evaluate a predictions folder against nnU-Net raw reference labels, per case and per "
        "label (or region, when dataset.json declares regions). Writes metrics_per_case.csv and "
        "metrics_summary.json. Definitions and the handling of empty masks: README, 'Evaluation'.",
    )
    evaluate.add_argument("predictions", help="a folder of predictions (e.g. nnUNetv2_predict's -o)")
    evaluate.add_argument("references", help="the reference labels (e.g. nnUNet_raw/DatasetXXX_Name/labelsTs)")
    evaluate.add_argument(
        "-djfile",
        "--dataset-json",
        help="dataset.json (default: the one nnUNetv2_predict wrote into the predictions folder, else the "
        "references' parent's)",
    )
    evaluate.add_argument("-o", "--output", help="where to write the two files (default: the predictions folder)")
    evaluate.add_argument(
        "--tolerance-mm",
        nargs="+",
        default=[f"{DEFAULT_TOLERANCE_MM:g}"],
        metavar="MM|NAME=MM",
        help="NSD tolerance in mm: one value for every label/region, NAME=MM per label/region (names from "
        "dataset.json), or both (the bare value for the ones not named). KiTS21/23: kidney=1.0330772532390826 "
        "masses=1.1328796488598762 tumor=1.1498198361434828 (default: %(default)s for all)",
    )
    evaluate.add_argument(
        "-np",
        "--num-processes",
        type=int,
        default=default_num_processes,
        help="parallel workers (default: %(default)s)",
    )
    evaluate.add_argument(
        "--chill",
        action="store_true",
        help="evaluate only the predicted cases, e.g. a fold's validation folder against gt_segmentations",
    )

    compare = commands.add_parser(
        "compare",
        help="evaluated runs -> one table: mean ± std, Δ vs the student with a paired test, gap recovered",
        description="Compare evaluated runs. RUN is NAME=EVAL[,EVAL...]: a name and one evaluate output "
        "(folder or metrics_per_case.csv) per fold or seed. Writes comparison.md and comparison.csv.",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="NAME=EVAL[,EVAL...], e.g. teacher=pred/teacher")
    compare.add_argument("--baseline", default="student", help="the student-alone run (default: %(default)s)")
    compare.add_argument(
        "--teacher", default="teacher", help="the teacher run, for the gap recovered (default: %(default)s, if given)"
    )
    compare.add_argument(
        "--common-cases",
        action="store_true",
        help="compare only the cases every run evaluated (default: refuse runs evaluated on different cases)",
    )
    compare.add_argument("-o", "--output", default=".", help="output folder (default: the current one)")

    efficiency = commands.add_parser(
        "efficiency",
        help="time per case (preprocessing / network / export), peak memory, MACs, Dice: models x backends x settings",
        description="Measure models side by side in one process: per model, backend (PyTorch, ONNX Runtime), "
        "test-time mirroring and sliding-window step, the time per case split into preprocessing, network and "
        "export, peak memory, parameters and MACs; with -r, the Dice of each setting's segmentations. MODEL is "
        "[NAME=]FOLDER[@FOLD,FOLD...]: a results folder (nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIG) or "
        "a deploy bundle, with its folds (default: -f); several folds are ensembled, as nnUNetv2_predict does. "
        "Writes efficiency.md, efficiency.json and (with -r) efficiency.png, Dice against time.",
    )
    efficiency.add_argument("models", nargs="+", metavar="MODEL", help="[NAME=]FOLDER[@FOLDS], e.g. teacher=...@0")
    _add_checkpoint_options(efficiency)
    efficiency.add_argument(
        "-i", "--images", help="raw images to time (default: a random case of the plans' median size, network only)"
    )
    efficiency.add_argument("-r", "--references", help="reference labels of the images: adds each setting's Dice")
    efficiency.add_argument("--cases", type=int, default=1, help="how many cases of --images; 0: all (default: 1)")
    efficiency.add_argument("--repeats", type=int, default=3, help="timed turns per model and case (default: 3)")
    efficiency.add_argument(
        "--backend", nargs="+", choices=["pytorch", "onnx"], default=["pytorch"], help="default: pytorch"
    )
    efficiency.add_argument(
        "--tta", nargs="+", choices=["off", "on"], default=["off"], help="test-time mirroring (default: off)"
    )
    efficiency.add_argument(
        "--step-size", nargs="+", type=float, default=[0.5], help="sliding-window step(s) (default: 0.5)"
    )
    efficiency.add_argument(
        "--device", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda when a GPU is visible"
    )
    efficiency.add_argument("-o", "--output", default=".", help="output folder (default: the current one)")

    visualize = commands.add_parser("visualize", help="figures: contours, stage-wise attention maps, loss curves")
    figures = visualize.add_subparsers(dest="figure", required=True)
    cases = figures.add_parser(
        "cases", help="image slice with reference and predicted contours, one PNG per case", description=""
    )
    cases.add_argument("predictions", nargs="+", metavar="PRED", help="[NAME=]predictions folder, e.g. teacher=...")
    cases.add_argument("-i", "--images", required=True, help="raw images (CASE_0000.nii.gz ...)")
    cases.add_argument("-r", "--references", required=True, help="reference labels")
    cases.add_argument("--cases", nargs="+", help="case ids (default: all)")
    cases.add_argument("--slice", type=int, help="axial slice (default: the one with most reference foreground)")
    cases.add_argument("-djfile", "--dataset-json", help="dataset.json (default: as for evaluate)")
    cases.add_argument("-o", "--output", default="figures", help="output folder (default: %(default)s)")
    attention = figures.add_parser(
        "attention",
        help="stage-wise attention maps of several models on one case (teacher, student, HLFD student)",
    )
    attention.add_argument("models", nargs="+", metavar="MODEL", help="[NAME=]results folder")
    attention.add_argument("-i", "--images", required=True, help="raw images")
    attention.add_argument("--case", required=True, help="case id")
    attention.add_argument("-r", "--references", help="reference labels: centre the patch on the foreground")
    _add_checkpoint_options(attention)
    attention.add_argument("-o", "--output", default="figures", help="output folder (default: %(default)s)")
    training = figures.add_parser("training", help="distillation terms and losses per epoch, runs overlaid")
    training.add_argument(
        "runs", nargs="+", metavar="RUN", help="[NAME=]results folder (all its folds) or one fold_X folder"
    )
    training.add_argument("-o", "--output", default="figures/training.png", help="PNG file (default: %(default)s)")


def _add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--fold", default="0", help="fold (default: 0)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="default: %(default)s")


def run(args: argparse.Namespace) -> None:
    with exit_with_message(f"nnunet_hlfd {args.command}"):
        _run(args)


def _writes_a_folder(args: argparse.Namespace) -> bool:
    if args.command == "visualize":
        return args.figure != "training"  # that one writes a PNG file
    return args.command != "evaluate" or args.output is not None  # evaluate: the predictions folder by default


def _run(args: argparse.Namespace) -> None:
    if _writes_a_folder(args):
        from nnunet_hlfd.files import output_folder

        output_folder(Path(args.output), "--output")
    if args.command == "evaluate":
        from nnunet_hlfd.evaluation.evaluate import PER_CASE_FILE, SUMMARY_FILE, evaluate_folder, parse_tolerances
        from nnunet_hlfd.evaluation.metrics import METRICS

        summary = evaluate_folder(
            args.predictions,
            args.references,
            args.dataset_json,
            args.output,
            parse_tolerances(args.tolerance_mm),
            args.num_processes,
            args.chill,
        )
        output = Path(args.output or args.predictions)
        print(f"{summary['num_cases']} cases; mean per label/region (n = cases where defined):")
        for name, stats in summary["classes"].items():
            tolerance = summary["nsd_tolerance_mm"][name]
            values = ", ".join(
                f"{f'NSD@{tolerance:g}mm' if m == 'NSD' else m} {stats['metrics'][m]['mean']:.3f}"
                for m in METRICS
                if stats["metrics"][m]["mean"] is not None
            )
            print(f"  {name}: {values}")
        print(f"wrote {output / PER_CASE_FILE} and {output / SUMMARY_FILE}")
    elif args.command == "compare":
        from nnunet_hlfd.evaluation.compare import (
            CSV_FILE,
            MARKDOWN_FILE,
            compare_runs,
            format_markdown,
            load_run,
            write_comparison,
        )

        runs = [load_run(name, paths) for name, paths in named_paths(args.runs, multiple=True).items()]
        teacher = args.teacher if args.teacher in [r.name for r in runs] else None
        rows = compare_runs(runs, args.baseline, teacher, args.common_cases)
        markdown = format_markdown(rows, args.baseline, teacher, runs[0].tolerances_mm)
        write_comparison(rows, markdown, Path(args.output))
        print(markdown)
        print(f"wrote {Path(args.output) / MARKDOWN_FILE} and {Path(args.output) / CSV_FILE}")
    elif args.command == "efficiency":
        import torch

        from nnunet_hlfd.evaluation.efficiency import (
            format_markdown,
            hardware,
            measure_efficiency,
            model_specs,
            settings_grid,
            write_efficiency,
        )

        devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
        images = Path(args.images) if args.images else None
        references = Path(args.references) if args.references else None
        settings = settings_grid(args.backend, [t == "on" for t in args.tta], args.step_size)
        models = model_specs(named_paths(args.models), args.fold)
        num_cases = args.cases if args.cases > 0 else 10**9
        rows = measure_efficiency(
            models, devices, settings, images, references, Path(args.output), args.checkpoint, num_cases, args.repeats
        )
        markdown = format_markdown(rows, args.repeats, hardware(devices))
        written = write_efficiency(rows, markdown, Path(args.output))
        print(markdown)
        print("wrote " + ", ".join(str(p) for p in written))
    elif args.command == "visualize":
        from nnunet_hlfd.evaluation import figures

        if args.figure == "cases":
            written = figures.plot_case_contours(
                Path(args.images),
                Path(args.references),
                named_paths(args.predictions),
                Path(args.output),
                args.cases,
                args.dataset_json,
                args.slice,
            )
        elif args.figure == "attention":
            references = Path(args.references) if args.references else None
            written = [
                figures.plot_attention_maps(
                    named_paths(args.models),
                    Path(args.images),
                    args.case,
                    Path(args.output),
                    references,
                    args.fold,
                    args.checkpoint,
                )
            ]
        else:
            logs = {}
            for name, path in named_paths(args.runs).items():
                folds = figures.read_training_log(path)
                logs.update({name if len(folds) == 1 else f"{name} {fold}": log for fold, log in folds.items()})
            from nnunet_hlfd.plots import plot_training_curves

            written = [plot_training_curves(logs, Path(args.output))]
        for path in written:
            print(f"wrote {path}")
