"""``nnunet_hlfd benchmark``: the KiTS phantom benchmark (:mod:`nnunet_hlfd.benchmark`), one resumable command.

    nnunet_hlfd benchmark ../shared/data/kits19 --profile cpu --work benchmarks/work/cpu
    nnunet_hlfd benchmark ../shared/data/kits19 --profile gpu --work /scratch/kits_gpu --time-limit-min 24

Run the same command again after an interruption (or after a --time-limit-min piece): finished phantoms,
preprocessing, trainings and predictions are kept, an interrupted training resumes with --c. The report lands in
WORK/report/benchmark_report.md (or --report PATH).
"""

import argparse
import sys
from pathlib import Path

from nnunet_hlfd.errors import exit_with_message
from nnunet_hlfd.runtime import STOPPED_EXIT_CODE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_hlfd.benchmark.profiles import PROFILES, ROWS

    parser.add_argument("labels", type=Path, help="a KiTS19 or KiTS23 folder of case_XXXXX/segmentation.nii.gz")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="cpu",
        help="cpu (default): the documented benchmark, 2D, about 4.5 hours on 2 CPU cores (use --time-limit-min to "
        "run it in pieces); gpu: 3d_fullres on one H100-class GPU, many hours; smoke: a few minutes, numbers that mean "
        "nothing (checks that the harness runs)",
    )
    parser.add_argument("--work", type=Path, required=True, help="working folder (nnU-Net folders, logs, report)")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), help="compare these rows (default: the profile's)")
    parser.add_argument(
        "--variant", nargs=3, action="append", metavar=("NAME", "ROW", "OPTIONS"),
        help="an extra row: ROW's trainer with other options (JSON), e.g. --variant hlfd_t1 hlfd "
        "'{\"temperature\": 1}'; trained on the same plans (a copy with these options), schedule and split; a "
        "\"schedule\" entry changes the copy's schedule, e.g. '{\"schedule\": {\"epochs\": 100}}'",
    )  # fmt: skip
    parser.add_argument(
        "--folds", nargs="+", type=int, help="run these cross-validation folds only (default: all of the profile's)"
    )
    parser.add_argument(
        "--tolerance-mm", nargs="+", metavar="MM|NAME=MM",
        help="NSD's tolerance, as for `nnunet_hlfd evaluate` (default: 1 mm for every label/region); finished "
        "predictions are evaluated again when it changes",
    )  # fmt: skip
    parser.add_argument(
        "--time-limit-min",
        type=float,
        help="minutes > 0 for this piece of the run: no job starts that would not end in time, a training past it "
        "stops after its epoch (exit code 3: run the same command again to continue)",
    )
    parser.add_argument("--report", type=Path, help="also write the report here (e.g. docs/benchmarks.md)")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "benchmark",
        help="the KiTS phantom benchmark: teacher, student alone and KD methods on real KiTS anatomy, one report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from nnunet_hlfd.benchmark import PROFILES, Harness, with_folds, with_rows, with_tolerances, with_variants
    from nnunet_hlfd.evaluation.evaluate import parse_tolerances

    with exit_with_message("nnunet_hlfd benchmark"):
        profile = with_variants(with_folds(with_rows(PROFILES[args.profile], args.rows), args.folds), args.variant)
        profile = with_tolerances(profile, parse_tolerances(args.tolerance_mm) if args.tolerance_mm else None)
        harness = Harness(profile, args.labels, args.work, args.time_limit_min)
        report = harness(args.report)
    if report is None:
        print(f"stopped at the time limit: {harness.stopped_because}", file=sys.stderr)
        return STOPPED_EXIT_CODE
    return 0


def main(argv: list[str] | None = None) -> int:
    """The same command as a script (benchmarks/kits_benchmark.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
