"""``compare``: evaluated runs (teacher, student alone, KD methods; several folds or seeds each) in one table.

A *run* is a name and one or more ``evaluate`` outputs (its repeats: folds or seeds). Per label/region and
metric the table gives

- mean ± std: the mean of the repeats' means, ± their sample standard deviation when the run has two or
  more repeats, else ± the sample standard deviation over cases (the table says which);
- Δ and p against the student baseline: the mean paired difference over the cases both runs evaluated (a
  case's value is its mean over the run's repeats that contain it) and the two-sided Wilcoxon signed-rank
  test on those pairs;
- gap recovered: (run − student) / (teacher − student), the share of the teacher's lead the run recovers.

RVD is compared as |RVD| (closer to 0 is better, whatever the sign).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nnunet_hlfd.errors import EvaluationError
from nnunet_hlfd.evaluation.evaluate import PER_CASE_FILE, SUMMARY_FILE, first_names, read_per_case
from nnunet_hlfd.evaluation.metrics import HIGHER_IS_BETTER, METRICS, UNITS
from nnunet_hlfd.files import file_sha256, write_csv, write_text

COMPARED = tuple("|RVD|" if m == "RVD" else m for m in METRICS)
CSV_FILE = "comparison.csv"
MARKDOWN_FILE = "comparison.md"
CSV_COLUMNS = (
    "class",
    "run",
    "metric",
    "mean",
    "std",
    "std_over",
    "repeats",
    "cases",
    "delta_vs_baseline",
    "p_value",
    "paired_cases",
    "gap_recovered",
    "gap_withheld",
)


def _value(row: dict, metric: str) -> float:
    return abs(row["RVD"]) if metric == "|RVD|" else row[metric]


@dataclass
class Run:
    """One run's per-case values: ``values[class][metric][repeat]`` maps case -> value (NaN dropped)."""

    name: str
    sources: list[Path]
    values: dict[str, dict[str, list[dict[str, float]]]]
    tolerances_mm: dict[str, float] | None = None  # NSD's per label/region, from the summary beside each CSV
    surface_metrics: str | None = None  # the surface definition, from the same summary
    cases: dict[str, set[str]] = field(default_factory=dict)  # per class: every case of any repeat

    def restricted_to(self, cases: dict[str, set[str]]) -> Run:
        """The same run with only these cases (per class) in every repeat."""
        values = {
            cls: {
                m: [{c: v for c, v in r.items() if c in cases[cls]} for r in repeats]
                for m, repeats in by_metric.items()
            }
            for cls, by_metric in self.values.items()
        }
        own = {cls: self.cases[cls] & cases[cls] for cls in self.cases}
        return replace(self, values=values, cases=own)


# Summaries written before the surface-element definition record none: their HD95, ASSD and NSD were computed on
# boundary voxels, and must not share a table with the new ones.
OLD_SURFACE_METRICS = "boundary voxels (an evaluation of nnunet_hlfd before surface elements)"
NO_SUMMARY = f"unknown (no {SUMMARY_FILE} beside the per-case CSV)"


def _evaluation_settings(source: Path, classes: list[str]) -> tuple[str, tuple[tuple[str, float], ...]]:
    """(surface definition, NSD tolerance per class as sorted pairs; empty if not recorded) beside one CSV."""
    summary_file = source.with_name(SUMMARY_FILE)
    if not summary_file.is_file():
        return NO_SUMMARY, ()
    summary = json.loads(summary_file.read_text())
    tolerances = summary.get("nsd_tolerance_mm") or {}
    if isinstance(tolerances, (int, float)):  # one value for all labels/regions, as older summaries record it
        tolerances = {c: float(tolerances) for c in classes}
    return summary.get("surface_metrics", OLD_SURFACE_METRICS), tuple(sorted(tolerances.items()))


def per_case_file(path: str | os.PathLike) -> Path:
    """An ``evaluate`` output folder (or a predictions folder it wrote into), or the CSV itself."""
    path = Path(path)
    file = path / PER_CASE_FILE if path.is_dir() else path
    if not file.is_file():
        raise EvaluationError(f"{file} not found: run `nnunet_hlfd evaluate` on that predictions folder first")
    return file


def _refuse_repeated_evaluations(name: str, sources: list[Path]) -> None:
    """A run's repeats are its folds or seeds: one evaluation listed twice (or a copy of it) would count as two and
    shrink the std and the p-value."""
    seen: dict[str, Path] = {}
    for source in sources:
        for key in (str(source.resolve()), file_sha256(source)):
            if key in seen:
                how = "is" if str(seen[key].resolve()) == key else "has the same contents as"
                raise EvaluationError(
                    f"run {name}: {source} {how} {seen[key]}: one evaluation would count as two repeats. Give each "
                    "fold's or seed's evaluation once"
                )
            seen[key] = source


def load_run(name: str, paths: list[str | os.PathLike]) -> Run:
    sources = [per_case_file(p) for p in paths]
    _refuse_repeated_evaluations(name, sources)
    values: dict = defaultdict(lambda: {m: [] for m in COMPARED})
    cases: dict[str, set[str]] = defaultdict(set)
    for source in sources:
        rows = read_per_case(source)
        by_class = defaultdict(list)
        for row in rows:
            by_class[row["class"]].append(row)
            cases[row["class"]].add(row["case"])
        for cls, class_rows in by_class.items():
            for metric in COMPARED:
                values[cls][metric].append(
                    {r["case"]: _value(r, metric) for r in class_rows if not math.isnan(_value(r, metric))}
                )
    settings = {str(source): _evaluation_settings(source, list(values)) for source in sources}
    whose = f"run {name}: its repeats were"
    _require_one("surface metrics", {s: d for s, (d, _) in settings.items()}, EVALUATE_AGAIN, whose)
    _require_one("NSD tolerances", {s: _tolerance_text(t) for s, (_, t) in settings.items()}, SAME_TOLERANCE, whose)
    definition, tolerances = next(iter(settings.values()))  # the same for every repeat
    return Run(name, sources, dict(values), dict(tolerances) or None, definition, dict(cases))


EVALUATE_AGAIN = "evaluate them all again with this version of `nnunet_hlfd evaluate`"
SAME_TOLERANCE = "evaluate them all with the same --tolerance-mm"


def _require_one(what: str, recorded: dict[str, str], fix: str, whose: str = "runs were") -> None:
    """Refuse evaluations that differ in ``what``: one table, one definition (``recorded``: whose -> value)."""
    if len(set(recorded.values())) > 1:
        listed = "; ".join(f"{key}: {value}" for key, value in recorded.items())
        raise EvaluationError(f"{whose} evaluated with different {what} ({listed}): {fix}")


def _tolerance_text(tolerances: tuple[tuple[str, float], ...] | dict[str, float] | None) -> str:
    if not tolerances:
        return "not recorded"
    return " ".join(f"{name}={mm:g}" for name, mm in dict(tolerances).items()) + " mm"


def _case_means(repeats: list[dict[str, float]]) -> dict[str, float]:
    pooled = defaultdict(list)
    for repeat in repeats:
        for case, value in repeat.items():
            pooled[case].append(value)
    return {case: float(np.mean(v)) for case, v in pooled.items()}


def summarize_metric(repeats: list[dict[str, float]]) -> dict:
    means = [float(np.mean(list(r.values()))) for r in repeats if r]
    cases = _case_means(repeats)
    if len(means) >= 2:
        std, over = float(np.std(means, ddof=1)), "repeats"
    else:
        std, over = (float(np.std(list(cases.values()), ddof=1)) if len(cases) >= 2 else None), "cases"
    return {
        "mean": float(np.mean(means)) if means else None,
        "std": std,
        "std_over": over,
        "repeats": len(repeats),
        "cases": len(cases),
    }


def paired_difference(run: list[dict[str, float]], baseline: list[dict[str, float]]) -> dict:
    """Mean paired difference (run − baseline) over the common cases, and the Wilcoxon signed-rank p."""
    from scipy.stats import wilcoxon

    a, b = _case_means(run), _case_means(baseline)
    common = sorted(set(a) & set(b))
    differences = np.array([a[c] - b[c] for c in common], dtype=np.float64)
    if not common:
        return {"delta_vs_baseline": None, "p_value": None, "paired_cases": 0}
    if np.all(differences == 0):
        p = 1.0
    elif len(common) < 2:
        p = None
    else:
        p = float(wilcoxon(differences).pvalue)
    return {"delta_vs_baseline": float(differences.mean()), "p_value": p, "paired_cases": len(common)}


# The gap recovered is shown only where the teacher beats the student beyond noise: with a tie, (run − student) /
# (teacher − student) divides by noise and can read 200 % or −300 %.
TIE_P = 0.05


def teacher_leads(metric: str, teacher: float | None, student: float | None) -> bool:
    """Is there a gap to recover? Only where the teacher is better than the student alone."""
    if teacher is None or student is None or teacher == student:
        return False
    return (teacher > student) == HIGHER_IS_BETTER.get(metric, False)


def gap_withheld(metric: str, teacher: dict, student_mean: float | None, baseline: str = "student") -> str | None:
    """Why no gap recovered is shown for this metric (``teacher``: its row, with its paired test against the
    ``baseline``, the student the gap is measured from), or None when it is shown."""
    if not teacher_leads(metric, teacher["mean"], student_mean):
        return f"the teacher is not better than {baseline}"
    p = teacher.get("p_value")
    if p is None or p >= TIE_P:
        shown = "–" if p is None else f"{p:.2g}"
        n = teacher["paired_cases"]
        return f"teacher and {baseline} are tied within noise (paired p = {shown} ≥ {TIE_P}, n = {n})"
    return None


def common_cases(runs: list[Run]) -> dict[str, set[str]]:
    """Per class, the cases every run evaluated."""
    return {cls: set.intersection(*(r.cases.get(cls, set()) for r in runs)) for cls in runs[0].cases}


def check_same_cases(runs: list[Run]) -> None:
    """Refuse runs evaluated on different cases: their means would not describe the same patients."""
    for cls in runs[0].cases:
        sets = {r.name: r.cases.get(cls, set()) for r in runs}
        if len({frozenset(c) for c in sets.values()}) > 1:
            shared = set.intersection(*sets.values())
            listed = "; ".join(
                f"{name}: {len(c)} cases"
                + (f" ({first_names(sorted(c - shared), 3)} not in every run)" if c - shared else "")
                for name, c in sets.items()
            )
            raise EvaluationError(
                f"{cls}: the runs were not evaluated on the same cases ({listed}). Evaluate every run on the same "
                f"cases, or pass --common-cases to compare the {len(shared)} cases all runs have."
            )


def compare_runs(
    runs: list[Run], baseline: str, teacher: str | None = None, only_common_cases: bool = False
) -> list[dict]:
    """Rows of the comparison (one per class, run and metric), in the order the runs were given. Runs must
    share their cases, unless ``only_common_cases`` (then every number is over the cases all runs have)."""
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise EvaluationError(f"run names must be unique: {names}")
    if baseline not in names:
        raise EvaluationError(
            f"no run named '{baseline}' (runs: {', '.join(names)}): name the student-alone run {baseline}=PATH, "
            "or pass --baseline NAME"
        )
    if teacher is not None and teacher not in names:
        raise EvaluationError(f"no run named '{teacher}' (runs: {', '.join(names)}): pass --teacher NAME")
    _require_one(
        "surface metrics",
        {r.name: r.surface_metrics for r in runs},
        EVALUATE_AGAIN + ", so one definition serves every row",
    )
    _require_one("NSD tolerances", {r.name: _tolerance_text(r.tolerances_mm) for r in runs}, SAME_TOLERANCE)
    classes = list(runs[0].values)
    for run in runs[1:]:
        if set(run.values) != set(classes):
            raise EvaluationError(
                f"runs evaluated different labels/regions: {runs[0].name} has {sorted(classes)}, {run.name} has "
                f"{sorted(run.values)} (evaluate every run with the same dataset.json)"
            )
    if only_common_cases:
        shared = common_cases(runs)
        runs = [r.restricted_to(shared) for r in runs]
    else:
        check_same_cases(runs)
    by_name = {r.name: r for r in runs}
    rows = []
    for cls in classes:
        for metric in COMPARED:
            stats = {r.name: summarize_metric(r.values[cls][metric]) for r in runs}
            own = {r.name: {"class": cls, "run": r.name, "metric": metric, **stats[r.name]} for r in runs}
            for run in runs:
                if run.name != baseline:
                    own[run.name].update(
                        paired_difference(run.values[cls][metric], by_name[baseline].values[cls][metric])
                    )
            base = stats[baseline]["mean"]
            withheld = gap_withheld(metric, own[teacher], base, baseline) if teacher else None
            for run in runs:
                row = own[run.name]
                compared = teacher is not None and run.name not in (baseline, teacher)
                gap = None
                if compared and withheld is None and row["mean"] is not None:
                    gap = (row["mean"] - base) / (stats[teacher]["mean"] - base)
                row["gap_recovered"] = gap
                row["gap_withheld"] = withheld if compared else None
                rows.append(row)
    return rows


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean_std(row: dict) -> str:
    return _number(row["mean"]) + ("" if row["std"] is None else f" ± {_number(row['std'])}")


def _delta(row: dict) -> str:
    if row.get("delta_vs_baseline") is None:
        return "–"
    p = row["p_value"]
    gap = row["gap_recovered"]
    text = f"{row['delta_vs_baseline']:+.3f} (p={'–' if p is None else f'{p:.3g}'}, n={row['paired_cases']})"
    return text + ("" if gap is None else f", {100 * gap:.0f}%")


def _header(metric: str, tolerance_mm: float | None) -> str:
    if metric == "|RVD|":
        return r"\|RVD\|"  # a bare | would split the markdown cell
    if metric == "NSD" and tolerance_mm is not None:
        return f"NSD@{tolerance_mm:g}mm"
    return metric + (f" ({UNITS[metric]})" if metric in UNITS else "")


def format_markdown(
    rows: list[dict], baseline: str, teacher: str | None, tolerances_mm: dict[str, float] | None = None
) -> str:
    """Per class: a table of mean ± std, then a table of Δ to the baseline (p, gap recovered); NSD's header
    names the class's tolerance."""
    out = []
    for cls in dict.fromkeys(r["class"] for r in rows):
        own = [r for r in rows if r["class"] == cls]
        runs = list(dict.fromkeys(r["run"] for r in own))
        cell = {(r["run"], r["metric"]): r for r in own}
        head = [_header(m, (tolerances_mm or {}).get(cls)) for m in COMPARED]
        out.append(f"### {cls}\n")
        out.append("| run | repeats × cases | " + " | ".join(head) + " |")
        out.append("|---|---|" + "---|" * len(head))
        for run in runs:
            first = cell[(run, "Dice")]
            out.append(
                f"| {run} | {first['repeats']} × {first['cases']} | "
                + " | ".join(_mean_std(cell[(run, m)]) for m in COMPARED)
                + " |"
            )
        out.append("")
        out.append(f"| Δ vs {baseline} (p{', gap recovered' if teacher else ''}) | " + " | ".join(head) + " |")
        out.append("|---|" + "---|" * len(head))
        for run in runs:
            if run != baseline:
                out.append(f"| {run} | " + " | ".join(_delta(cell[(run, m)]) for m in COMPARED) + " |")
        out.append("")
        withheld = defaultdict(list)
        for r in own:
            if r.get("gap_withheld") and r["metric"] not in withheld[r["gap_withheld"]]:
                withheld[r["gap_withheld"]].append(r["metric"])
        for reason, metrics in withheld.items():
            out.append(f"No gap recovered for {', '.join(_header(m, None) for m in metrics)}: {reason}.\n")
    over = {r["std_over"] for r in rows}
    spread = {
        frozenset({"cases"}): "over cases (each run has one evaluation)",
        frozenset({"repeats"}): "over repeats (folds/seeds)",
    }.get(frozenset(over), "over repeats (folds/seeds) for runs that have several, else over cases")
    out.append(
        f"mean ± sample std {spread}. Δ: mean paired difference to {baseline} over the n cases both evaluated; "
        "p: two-sided Wilcoxon signed-rank test"
        + (
            f"; gap recovered: (run − {baseline}) / ({teacher} − {baseline}), where {teacher} is better than "
            f"{baseline} beyond noise (paired p < {TIE_P})"
            if teacher
            else ""
        )
        + ". Higher is better for Dice and NSD, lower for VOE, |RVD|, HD95 and ASSD."
    )
    return "\n".join(out) + "\n"


def write_comparison(rows: list[dict], markdown: str, output: Path) -> None:
    write_csv(output / CSV_FILE, rows, CSV_COLUMNS)
    write_text(output / MARKDOWN_FILE, markdown)
