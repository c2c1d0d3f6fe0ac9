"""Tables that compare the runs of one experiment (methods × seeds)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from . import metrics
from .log import get_logger
from .rundir import atomic_write_text, write_json

log = get_logger(__name__)

SCALARS = ("average_incremental_accuracy", "last_accuracy", "forgetting")


def group_by_label(results: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        groups[result["label"]].append(result)
    return dict(groups)


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std else "")


def summary_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per method: accuracy on all seen classes after each task, then the scalar metrics
    (mean ± std over seeds when there are several)."""
    groups = group_by_label(results)
    steps = max(len(r.get("seen_accuracy", [])) for r in results)
    header = ["method", "classifier", "seeds"] + [f"after {i + 1}" for i in range(steps)] + [
        "avg incr. acc", "last acc", "forgetting", "old classes (last)"]
    rows = []
    for label, runs in groups.items():
        agg = metrics.aggregate(runs)
        curve = agg.get("seen_accuracy", {})
        cells = [label, str(runs[0].get("classifier", "")), str(len(runs))]
        means = curve.get("mean", [])  # the per-step columns show means; the scalar columns mean ± std
        cells += [_pct(m) for m in means] + ["-"] * (steps - len(means))
        for key in SCALARS:
            entry = agg.get(key)
            cells.append(_pct(entry["mean"], entry["std"]) if entry else "-")
        olds = [r["old_accuracy"][-1] for r in runs if r.get("old_accuracy") and r["old_accuracy"][-1] is not None]
        cells.append(_pct(*metrics.mean_std(olds)) if olds else "-")
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
    title = f"Accuracy (%) on all classes seen so far — {dataset}"
    table = text_table(header, rows)
    log.info(f"\n{title}\n{table}\nResults in {out}")
    if not files:
        return table
    write_json(out / "summary.json", {
        "runs": [{"label": r["label"], "seed": r["seed"], **{k: r.get(k) for k in SCALARS}} for r in results],
        "aggregate": {label: metrics.aggregate(runs) for label, runs in groups.items()},
    })
    atomic_write_text(out / "summary.md", f"# {title}\n\n" + markdown_table(header, rows))
    return table
