"""``nnunet_hlfd convert`` (challenge downloads -> nnU-Net raw datasets) and ``nnunet_hlfd split`` (limit-trained
splits for multi-teacher KD)."""

import argparse

from nnunet_hlfd.errors import exit_with_message


def add_convert_parser(commands: argparse._SubParsersAction) -> None:
    from nnunetv2.configuration import default_num_processes

    from nnunet_hlfd.conversion import CONVERTERS
    from nnunet_hlfd.conversion.core import DEFAULT_GEOMETRY_TOLERANCE
    from nnunet_hlfd.conversion.tasks import TASKS, TUMOR_TASK_ID_OFFSET

    convert = commands.add_parser(
        "convert",
        help="a challenge download -> nnU-Net raw dataset (KiTS19/21/23, LiTS, MSD, multi-site prostate)",
        description="Convert a challenge download into nnUNet_raw/DatasetXXX_Name. Every case is checked first "
        "(readable files, image/label geometry, label values); the dataset is written to a temporary folder "
        "and moved into place only if every case succeeded.",
    )
    datasets = convert.add_subparsers(dest="dataset", required=True)
    for name, converter in CONVERTERS.items():
        sub = datasets.add_parser(name, help=converter.help, description=converter.help)
        sub.add_argument("input", help="the extracted download (layout: dataset_conversion/README.md)")
        sub.add_argument("-d", "--dataset-id", type=int, help="nnU-Net dataset id (default: see above)")
        sub.add_argument("--name", help="dataset name in DatasetXXX_Name (default: the challenge's)")
        sub.add_argument("-o", "--output", help="nnU-Net raw folder (default: $nnUNet_raw)")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that id and name")
        sub.add_argument("-np", "--num-processes", type=int, default=default_num_processes, help="parallel workers")
        sub.add_argument("--verify", action="store_true", help="run nnU-Net's dataset integrity check on the result")
        sub.add_argument(
            "--tolerance",
            type=float,
            default=DEFAULT_GEOMETRY_TOLERANCE,
            help="image/label geometry tolerance (mm for spacing and origin, cosine for direction)",
        )
        if converter.has_task:
            sub.add_argument(
                "--task",
                choices=TASKS,
                default="organ_tumor",
                help=f"organ_tumor: the challenge's labels/regions; tumor: HLFD's binary tumour task "
                f"(default id + {TUMOR_TASK_ID_OFFSET}, name + 'Tumor')",
            )
        if converter.has_binarize:
            sub.add_argument("--binarize", action="store_true", help="map every non-zero label value to prostate (1)")


def run_convert(args: argparse.Namespace) -> None:
    from nnunet_hlfd.conversion import CONVERTERS

    extra = {k: getattr(args, k) for k in ("task", "binarize") if hasattr(args, k)}
    with exit_with_message(f"nnunet_hlfd convert {args.dataset}"):
        summary = CONVERTERS[args.dataset].function(
            args.input,
            dataset_id=args.dataset_id,
            name=args.name,
            output_root=args.output,
            overwrite=args.overwrite,
            num_processes=args.num_processes,
            verify=args.verify,
            tolerance=args.tolerance,
            **extra,
        )
    print(summary)


def add_split_parser(commands: argparse._SubParsersAction) -> None:
    split = commands.add_parser(
        "split",
        help="splits_final.json for limit-trained teachers (disjoint subsets or one site each) and their student",
        description="Write nnU-Net's splits_final.json so that k teachers each train on a small disjoint subset "
        "(fold i = teacher i) and the student (fold k) trains on all of them, every fold validating on the same "
        "held-out cases that no teacher trains on. With --check, only check an existing split for leakage.",
    )
    split.add_argument("dataset", help="dataset id or name (nnUNet_raw and nnUNet_preprocessed must hold it)")
    how = split.add_mutually_exclusive_group(required=True)
    how.add_argument("-k", "--teachers", type=int, help="number of teachers, each on a disjoint chunk")
    how.add_argument("--by-site", action="store_true", help="one teacher per site (sites.json, multi-site prostate)")
    how.add_argument("--check", nargs="+", type=int, metavar="FOLD", help="TEACHER_FOLD... STUDENT_FOLD: check only")
    split.add_argument("--holdout", type=float, default=0.2, help="validation share (default: %(default)s)")
    split.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    split.add_argument("--overwrite", action="store_true", help="replace an existing splits_final.json (kept as .bak)")


def run_split(args: argparse.Namespace) -> None:
    from nnunet_hlfd.splits import check_splits_file, write_limit_trained_splits

    with exit_with_message("nnunet_hlfd split"):
        if args.check:
            print(check_splits_file(args.dataset, args.check[:-1], args.check[-1]))
        else:
            print(
                write_limit_trained_splits(
                    args.dataset, args.teachers, args.by_site, args.holdout, args.seed, args.overwrite
                )
            )
