"""Tables that compare the runs of one experiment (methods × seeds)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from . import metrics
from .log import get_logger
from .rundir import RunDir, atomic_write_text, write_json

log = get_logger(__name__)

SCALARS = ("average_incremental_accuracy", "last_accuracy", "forgetting")


def group_by_label(results: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        groups[result["label"]].append(result)
    return dict(groups)


MEASURE_NAMES = {"sample_weighted": "sample-weighted", "task_mean": "task mean"}


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std else "")


def _measures(results: list[dict]) -> tuple[str, str, str]:
    """(headline accuracy measure, the other one, the spread) the runs were configured with (older runs:
    sample-weighted, std)."""
    headline = results[0].get("headline_accuracy", "sample_weighted")
    other = next(m for m in metrics.ACCURACY_MEASURES if m != headline)
    return headline, other, results[0].get("spread", "std")


def _spread(entry: dict, spread: str) -> float:
    return metrics.sem(entry["values"]) if spread == "sem" else entry["std"]


def summary_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per method: the headline accuracy (``output.headline_accuracy``) after each task, then the
    scalar metrics (mean ± std, or ± SEM with ``output.spread: sem``, over seeds when there are several); beside
    a task-mean headline also the sample-weighted last accuracy."""
    groups = group_by_label(results)
    headline, other, spread = _measures(results)
    curve_key = metrics.CURVES[headline]
    steps = max(len(r.get(curve_key) or r.get("seen_accuracy", [])) for r in results)
    # the other measure's column only beside a task-mean headline: the default table stays as it was
    extra = [f"last_accuracy_{other}"] if headline != "sample_weighted" else []
    header = ["method", "classifier", "seeds"] + [f"after {i + 1}" for i in range(steps)] + [
        "avg incr. acc", "last acc", "forgetting", "old classes (last)"] + [
        f"last acc ({MEASURE_NAMES[other]})" for _ in extra]
    rows = []
    for label, runs in groups.items():
        agg = metrics.aggregate(runs)
        curve = agg.get(curve_key, {})
        cells = [label, str(runs[0].get("classifier", "")), str(len(runs))]
        means = curve.get("mean", [])  # the per-step columns show means; the scalar columns mean ± spread
        cells += [_pct(m) for m in means] + ["-"] * (steps - len(means))
        olds = [r["old_accuracy"][-1] for r in runs if r.get("old_accuracy") and r["old_accuracy"][-1] is not None]
        old_entry = metrics.aggregate([{"old": v} for v in olds]).get("old")
        for entry in [agg.get(key) for key in SCALARS] + [old_entry] + [agg.get(key) for key in extra]:
            cells.append(_pct(entry["mean"], _spread(entry, spread)) if entry else "-")
        rows.append(cells)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows])


def write_summary(out: Path, results: list[dict], files: bool = True) -> str:
    """Log the comparison table; with ``files`` also write summary.json and summary.md in ``out``."""
    header, rows = summary_rows(results)
    groups = group_by_label(results)
    dataset = results[0].get("dataset", "")
    headline, _, spread = _measures(results)
    measure = (", mean of the per-task accuracies over the tasks seen" if headline == "task_mean"
               else " on all test images of the classes seen so far")
    title = f"Accuracy (%){measure} — {dataset}" + (" (± SEM over seeds)" if spread == "sem" else "")
    table = text_table(header, rows)
    log.info(f"\n{title}\n{table}\nResults in {out}")
    if not files:
        return table
    write_json(RunDir(out).summary_json, {
        "headline_accuracy": headline,
        "runs": [{"label": r["label"], "seed": r["seed"],
                  **{k: r.get(k) for k in SCALARS + tuple(f"last_accuracy_{m}" for m in metrics.ACCURACY_MEASURES)}}
                 for r in results],
        "aggregate": {label: metrics.aggregate(runs) for label, runs in groups.items()},
    })
    atomic_write_text(RunDir(out).summary_md, f"# {title}\n\n" + markdown_table(header, rows))
    return table
