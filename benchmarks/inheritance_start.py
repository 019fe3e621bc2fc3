"""What a student inherits before it trains: Dice of a slim student whose weights are selected from the teacher's, at
epoch 0 (no fine-tuning), per width and channel importance, on the fold's validation cases (``--cases validation``:
what an importance may be chosen on) or the test set (``--cases test``, the default: reported, never chosen on).

For the benchmark's teacher of one fold, each width's student is the network nnU-Net builds from the derived student
plans (the package's own derivation, as every student trainer makes it), its weights inherited from the teacher
(``nnunet_hlfd.inheritance``). Each is predicted on the test images with nnU-Net's predictor (no mirroring, as the
benchmark predicts) and evaluated with ``nnunet_hlfd evaluate``; the teacher itself is the first row.

    OMP_NUM_THREADS=1 python benchmarks/inheritance_start.py benchmarks/work/kits19_cpu --fold 0 --widths 1 0.5 0.25
    OMP_NUM_THREADS=1 python benchmarks/inheritance_start.py benchmarks/work/kits19_cpu --fold 1 --cases validation

(one thread while the benchmark trains beside it: two processes of two threads on two cores ran 10x slower.)
"""

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from nnunet_hlfd.benchmark.profiles import PLANS, TEACHER_TRAINER
from nnunet_hlfd.deploy.trained import load_predictor
from nnunet_hlfd.evaluation.evaluate import evaluate_folder
from nnunet_hlfd.inheritance import IMPORTANCES, inherit_weights
from nnunet_hlfd.planning import derive_student_architecture


def student_network(predictor, width: float) -> torch.nn.Module:
    """The network nnU-Net builds from the teacher's configuration with the student's derived architecture."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    architecture = derive_student_architecture(
        copy.deepcopy(predictor.configuration_manager.configuration["architecture"]), width
    )
    return get_network_from_plans(
        architecture["network_class_name"], architecture["arch_kwargs"], architecture["_kw_requires_import"],
        len(predictor.dataset_json["channel_names"]), predictor.label_manager.num_segmentation_heads,
        allow_init=True, deep_supervision=False,
    )  # fmt: skip


def dice_of(predictor, network: torch.nn.Module, images: Path, labels: Path, output: Path) -> dict[str, float]:
    predictor.network = network.eval()
    predictor.list_of_parameters = [network.state_dict()]
    output.mkdir(parents=True)
    with contextlib.redirect_stdout(sys.stderr):  # nnU-Net narrates every case: keep stdout for the table
        predictor.predict_from_files_sequential(str(images), str(output), save_probabilities=False, overwrite=True)
    summary = evaluate_folder(output, labels, progress=False)
    return {name: c["metrics"]["Dice"]["mean"] for name, c in summary["classes"].items()}


def validation_cases(work: Path, fold: int, scratch: Path) -> tuple[Path, Path]:
    """Folders of links to the fold's validation images and labels (nnU-Net's raw dataset and split)."""
    raw = next((work / "nnUNet_raw").glob("Dataset*"))
    split = json.loads((work / "nnUNet_preprocessed" / raw.name / "splits_final.json").read_text())[fold]
    images, labels = scratch / "validation_images", scratch / "validation_labels"
    images.mkdir()
    labels.mkdir()
    for case in split["val"]:
        for image in (raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].*"):
            (images / image.name).symlink_to(image)
        label = next((raw / "labelsTr").glob(f"{case}.*"))
        (labels / label.name).symlink_to(label)
    return images, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="the benchmark's --work folder (its teacher and test set)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--importance", nargs="+", choices=IMPORTANCES, default=list(IMPORTANCES))
    parser.add_argument("--cases", choices=("test", "validation"), default="test",
                        help="the test set, or the fold's validation cases (to choose on)")  # fmt: skip
    args = parser.parse_args(argv)
    results = next((args.work / "nnUNet_results").glob(f"Dataset*/{TEACHER_TRAINER}__{PLANS}__*"))
    predictor = load_predictor(results, args.fold, "checkpoint_final.pth", torch.device("cpu"))
    teacher = copy.deepcopy(predictor.network)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        if args.cases == "validation":
            images, labels = validation_cases(args.work, args.fold, Path(scratch))
        else:
            images, labels = args.work / "test" / "images", args.work / "test" / "labels"
        start = time.perf_counter()
        rows.append(("teacher", "", dice_of(predictor, teacher, images, labels, Path(scratch) / "teacher")))
        print(f"teacher: {rows[-1][2]} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        for width in args.widths:
            for importance in args.importance:
                torch.manual_seed(0)
                student = student_network(predictor, width)
                inherit_weights(teacher, student, importance)
                name = f"w{width:g} {importance}"
                rows.append(
                    (f"w{width:g}", importance, dice_of(predictor, student, images, labels, Path(scratch) / name))
                )
                print(f"{name}: {rows[-1][2]}", file=sys.stderr, flush=True)
        n_cases = len(list(labels.iterdir()))
    classes = list(rows[0][2])
    where = "Test-set" if args.cases == "test" else "Validation"
    print(f"{where} Dice at epoch 0 (no fine-tuning), fold {args.fold}, {n_cases} cases:\n")
    print("| student | importance | " + " | ".join(classes) + " |")
    print("|---|---|" + "---|" * len(classes))
    for name, importance, dice in rows:
        print(f"| {name} | {importance} | " + " | ".join(f"{dice[c]:.3f}" for c in classes) + " |")
    print(json.dumps({f"{n} {i}".strip(): d for n, i, d in rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
