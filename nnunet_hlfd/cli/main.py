"""``nnunet_hlfd``: the package's command line, one sub-command per module of this package (conversion,
evaluation, deployment, benchmark). Training and prediction use nnU-Net's own commands; ``export`` and ``predict``
make and use a deploy bundle."""

import argparse

from nnunet_hlfd.cli import benchmark, conversion, deploy, evaluation
from nnunet_hlfd.ext_path import EXT_TRAINER_DIR

SETUP_LINE = f"export nnUNet_extTrainer={EXT_TRAINER_DIR}"

DESCRIPTION = f"""Knowledge distillation (HLFD) for nnU-Net v2.

Train and predict with nnU-Net's own commands, after one line of set-up:

    {SETUP_LINE}
    nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerHLFD
    nnUNetv2_predict -i IN -o OUT -d DATASET -c 3d_fullres -f FOLD -tr nnUNetTrainerHLFD

If nnU-Net says "Could not find requested nnunet trainer nnUNetTrainerHLFD ... nnUNet_extTrainer", the
set-up line is missing in that shell (it is needed for training, --c, --val and prediction alike).
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnunet_hlfd", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ext-path", help="print the folder to put in nnUNet_extTrainer")
    commands.add_parser("setup", help='print the set-up line for your shell: eval "$(nnunet_hlfd setup)"')
    demo = commands.add_parser("demo", help="synthetic dataset -> teacher -> student alone and HLFD -> table")
    demo.add_argument("--output", default="hlfd_demo", help="work folder (default: ./hlfd_demo)")
    demo.add_argument(
        "--profile",
        choices=["default", "quick"],
        default="default",
        help="default: ~10 min on 2 CPU cores; quick: ~1 min smoke run whose numbers mean nothing",
    )
    demo.add_argument("--overwrite", action="store_true", help="replace the demo dataset in an existing --output")
    conversion.add_convert_parser(commands)
    conversion.add_split_parser(commands)
    evaluation.add_parsers(commands)
    deploy.add_parsers(commands)
    benchmark.add_parser(commands)
    args = parser.parse_args(argv)

    if args.command == "ext-path":
        print(EXT_TRAINER_DIR)
    elif args.command == "setup":
        print(SETUP_LINE)
    elif args.command == "demo":
        from nnunet_hlfd.demo.pipeline import run_demo
        from nnunet_hlfd.errors import exit_with_message

        with exit_with_message("nnunet_hlfd demo"):
            run_demo(args.output, args.profile, args.overwrite)
    elif args.command == "convert":
        conversion.run_convert(args)
    elif args.command == "split":
        conversion.run_split(args)
    elif args.command in evaluation.COMMANDS:
        evaluation.run(args)
    elif args.command in deploy.COMMANDS:
        deploy.run(args)
    elif args.command == "benchmark":
        raise SystemExit(benchmark.run(args))


if __name__ == "__main__":
    main()
