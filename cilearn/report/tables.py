"""Result tables: per method and classifier, mean ± std (or ± SEM, as the runs were configured) over seeds (and
one row per run)."""

from __future__ import annotations

import html
import math

from .. import metrics
from ..run_result import RunResult

# last_accuracy / average_incremental_accuracy are the run's headline measure (output.headline_accuracy); both
# measures' last accuracies follow them (runs made before they existed show "-")
SCALARS = ("average_incremental_accuracy", "last_accuracy", "forgetting", "last_accuracy_sample_weighted",
           "last_accuracy_task_mean")
NAMES = {"average_incremental_accuracy": "avg incr. acc (%)", "last_accuracy": "last acc (%)",
         "forgetting": "forgetting (%)", "last_accuracy_sample_weighted": "last acc, sample-weighted (%)",
         "last_accuracy_task_mean": "last acc, task mean (%)"}


def classifiers_of(group: list[RunResult]) -> list[str]:
    """Classifiers every run of the group reports, the primary one first."""
    primary = group[0].headline_classifier
    common = None
    for run in group:
        names = list((run.metrics.get("classifiers") or {primary: {}}).keys())
        common = names if common is None else [n for n in common if n in names]
    common = common or [primary]
    return sorted(common, key=lambda n: (n != primary, common.index(n)))


def classifier_metrics(run: RunResult, classifier: str) -> dict:
    per = (run.metrics.get("classifiers") or {}).get(classifier)
    return per if per is not None else run.metrics


def _number(value) -> float:
    return math.nan if value is None else float(value)


def spread_of(groups: dict[str, list[RunResult]]) -> str:
    """The statistic beside the means: ``sem`` when every run was configured with ``output.spread: sem`` (a
    published config whose paper reports it), else ``std`` (older runs recorded none: std)."""
    runs = [run for group in groups.values() for run in group]
    return "sem" if runs and all(run.metrics.get("spread") == "sem" for run in runs) else "std"


def results(groups: dict[str, list[RunResult]]) -> list[dict]:
    """One dict per (method, classifier): seeds, and ``<scalar>_mean`` / ``<scalar>_std`` / ``<scalar>_sem``
    (fractions; sample std over seeds and std / sqrt(seeds), 0 for one seed) via :func:`cilearn.metrics.aggregate`."""
    rows = []
    for label, group in groups.items():
        for classifier in classifiers_of(group):
            values = [{k: _number(classifier_metrics(r, classifier).get(k)) for k in SCALARS} for r in group]
            agg = metrics.aggregate(values)
            row = {"method": label, "classifier": classifier, "primary": classifier == group[0].headline_classifier,
                   "seeds": " ".join(str(r.seed) for r in group), "n_seeds": len(group),
                   "complete": all(r.metrics.get("complete") for r in group)}
            for key in SCALARS:
                row[f"{key}_mean"] = agg[key]["mean"]
                row[f"{key}_std"] = agg[key]["std"]
                row[f"{key}_sem"] = metrics.sem(agg[key]["values"])
            rows.append(row)
    return rows


def run_rows(groups: dict[str, list[RunResult]]) -> list[dict]:
    rows = []
    for label, group in groups.items():
        for run in group:
            for classifier in classifiers_of([run]):
                m = classifier_metrics(run, classifier)
                rows.append({"method": label, "seed": run.seed, "classifier": classifier,
                             "tasks_done": run.tasks_done, "complete": bool(run.metrics.get("complete")),
                             **{k: _number(m.get(k)) for k in SCALARS}, "run_dir": str(run.path)})
    return rows


def pct(mean: float, std: float | None = None) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    text = f"{100 * mean:.1f}"
    return text + (f" ± {100 * std:.1f}" if std is not None and not math.isnan(std) else "")


def display(rows: list[dict], spread: str = "std") -> tuple[list[str], list[list[str]]]:
    """The table's header and cells: mean ± ``spread`` (``std`` or ``sem``) of every scalar."""
    header = ["method", "classifier", "seeds"] + [NAMES[k] for k in SCALARS]
    body = []
    for row in rows:
        name = row["classifier"] + (" (primary)" if row["primary"] else "")
        seeds = f"{row['n_seeds']} ({row['seeds']})" + ("" if row["complete"] else ", incomplete")
        body.append([row["method"], name, seeds] + [
            pct(row[f"{k}_mean"], row[f"{k}_{spread}"] if row["n_seeds"] > 1 else None) for k in SCALARS])
    return header, body


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
