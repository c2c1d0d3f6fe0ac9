"""``make_report``: every plot and table of a set of runs, and one self-contained ``report.html``."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from .. import metrics
from ..errors import CilearnError
from ..log import count
from ..models import build_model
from ..run_result import RunResult
from ..rundir import atomic_write_text
from . import ReportError, plots, tables
from .gradcam import grad_cam, target_layer
from .model import load_run_model, read_config, read_memory, read_run_info
from .runs import choose_steps, discover_runs, group_runs, read_predictions, safe_name
from .tsne import first_task_classes, run_embedding

OWN_SUFFIXES = (".png", ".csv", ".md", ".html")


@dataclass
class Section:
    title: str
    text: str
    images: list[Path] = field(default_factory=list)
    table: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class ReportOptions:
    steps: list[int] | None = None        # confusion matrices (1-based task numbers)
    tsne_steps: list[int] | None = None
    cam_steps: list[int] | None = None    # default: every task (at most 12, evenly spaced)
    cam_images: int = 6
    cam_target: str = "predicted"         # or "true"
    tsne_classes: int = 5
    tsne_points: int = 500
    exemplars_per_class: int = 10
    exemplar_classes: int = 20
    tsne: bool = True
    gradcam: bool = True
    title: str | None = None


# --- helpers -----------------------------------------------------------------------------------------
def prepare_out(out: Path) -> None:
    """A report folder is either new/empty or a previous report (whose files are replaced); anything
    else is refused so that a wrong --out never mixes a report into unrelated files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out '{out}' is a file; give a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "report.html").is_file():
            raise ReportError(f"--out '{out}' exists, is not empty and holds no previous report; choose an "
                              f"empty or new folder.")
        for old in out.iterdir():
            if old.is_file() and old.suffix in OWN_SUFFIXES:
                old.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _padded(values: list, length: int) -> list[float]:
    out = [math.nan if v is None else float(v) for v in (values or [])][:length]
    return out + [math.nan] * (length - len(out))


def mean_std_curves(curves: list[list], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise mean and sample std over seeds (NaN-padded to ``length``), via metrics.aggregate."""
    agg = metrics.aggregate([{"curve": _padded(c, length)} for c in curves])["curve"]
    return np.asarray(agg["mean"], dtype=float), np.asarray(agg["std"], dtype=float)


def class_names(run: RunResult) -> list[str] | None:
    """Class names in the run's (remapped) label order (from its run.json), or None."""
    info = run.files.read_info()
    return list(info["class_names"]) if info and "class_names" in info else None


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


# --- sections ----------------------------------------------------------------------------------------
def results_section(groups, out: Path) -> Section:
    rows = tables.results(groups)
    write_csv(out / "results.csv", rows)
    write_csv(out / "runs.csv", tables.run_rows(groups))
    spread = tables.spread_of(groups)
    header, body = tables.display(rows, spread)
    statistic = {"std": "mean ± std over seeds", "sem": "mean ± SEM over seeds"}[spread]
    atomic_write_text(out / "results.md", f"# Results ({statistic})\n\n" + tables.markdown(header, body))
    said = {"std": "mean ± sample std over seeds",
            "sem": "mean ± standard error of the mean over seeds (the runs' output.spread: sem)"}[spread]
    return Section("Results", "Average incremental accuracy (mean over steps of the accuracy on all classes "
                   "seen so far), last accuracy (after the last task) and average forgetting, for every "
                   f"classifier a method reports; {said}. Also in results.csv / results.md (with both std and "
                   "SEM; runs.csv has one row per run).", table=tables.html_table(header, body))


def accuracy_section(groups, out: Path) -> Section:
    series = []
    for label, group in groups.items():
        length = max(r.tasks_done for r in group)
        x = max(group, key=lambda r: r.tasks_done).classes_per_step
        for name in tables.classifiers_of(group):
            curves = [tables.classifier_metrics(r, name).get("seen_accuracy") for r in group]
            mean, std = mean_std_curves(curves, length)
            primary = name == group[0].headline_classifier
            series.append({"method": label, "label": f"{label} — {name} (n={len(group)})", "x": x, "mean": mean,
                           "std": std, "linestyle": "-" if primary else "--"})
    datasets = sorted({str(r.metrics.get("dataset")) for g in groups.values() for r in g})
    path = plots.accuracy_curve(series, ", ".join(datasets), out / "accuracy_curve.png")
    return Section("Accuracy vs number of classes", "Accuracy on the test data of every class seen so far, after "
                   "each task; error bars: std over seeds. Solid: the method's primary classifier; dashed: its "
                   "other classifiers (e.g. the network head next to NME).", [path])


def old_new_section(groups, out: Path) -> Section:
    series = []
    for label, group in groups.items():
        length = max(r.tasks_done for r in group)
        per = [tables.classifier_metrics(r, group[0].headline_classifier) for r in group]
        old_mean, old_std = mean_std_curves([m.get("old_accuracy") for m in per], length)
        new_mean, new_std = mean_std_curves([m.get("current_accuracy") for m in per], length)
        series.append({"label": label, "steps": np.arange(1, length + 1), "old_mean": old_mean, "old_std": old_std,
                       "new_mean": new_mean, "new_std": new_std})
    path = plots.old_new_accuracy(series, out / "old_new_accuracy.png")
    return Section("Old vs new classes", "After each task: accuracy on the test data of the classes learned in "
                   "earlier tasks (left; undefined after the first task) and on the task just learned (right), "
                   "primary classifier. A method that forgets scores high on the right and low on the left.", [path])


def matrix_section(groups, out: Path) -> Section:
    images = []
    for label, group in groups.items():
        t = max(r.tasks_done for r in group)
        matrices = []
        for run in group:
            rows = tables.classifier_metrics(run, run.headline_classifier).get("accuracy_matrix") or []
            m = np.full((t, t), np.nan)
            for i, row in enumerate(rows[:t]):
                m[i, : len(row[:t])] = _padded(row[:t], len(row[:t]))
            matrices.append(m)
        agg = metrics.aggregate([{"m": m} for m in matrices])["m"]
        images.append(plots.accuracy_matrix(np.asarray(agg["mean"], dtype=float), label, len(group),
                                            out / f"accuracy_matrix_{safe_name(label)}.png"))
    return Section("Accuracy matrices", "Row i: accuracy on each task's test data after training task i "
                   "(primary classifier, mean over seeds). Fine-tuning shows a bright diagonal and a dark lower "
                   "triangle: old tasks are forgotten.", images)


def confusion_section(groups, out: Path, options: ReportOptions) -> Section:
    section = Section("Confusion matrices", "Rows: true class, columns: predicted class, colour: fraction of the "
                      "true class (numbers: counts when there are few classes), for the first seed of each method "
                      "and its primary classifier. Orange lines separate the tasks' classes; a column band on "
                      "the newest classes is the bias towards new classes.")
    for label, group in groups.items():
        run = group[0]
        if not run.has_predictions():
            section.notes.append(f"{label}: no predictions saved (output.save_features: false); skipped.")
            continue
        names = class_names(run)
        panels = []
        for step in choose_steps(options.steps, run.tasks_done):
            data = read_predictions(run, step)
            key = f"pred_{run.headline_classifier}"
            if key not in data:
                key = next(k for k in data if k.startswith("pred_"))
            labels, predicted = data["labels"], data[key]
            k = int(max(run.classes_per_step[step], labels.max(initial=0) + 1, predicted.max(initial=0) + 1))
            seen_starts = sorted({int(b) for b in run.classes_per_step[:step] if 0 < b < k})
            panels.append({"matrix": metrics.confusion_matrix(labels, predicted, k), "boundaries": seen_starts,
                           "title": f"after task {step + 1} ({run.classes_per_step[step]} classes)"})
        section.images.append(plots.confusion_matrices(
            panels, f"Confusion matrices — {label} (seed {run.seed}, classifier {key[5:]})", names,
            out / f"confusion_{safe_name(label)}.png"))
    return section


def curves_section(groups, out: Path) -> Section:
    section = Section("Training curves", "Per epoch, over all tasks in order: the training loss (the method's "
                      "whole objective, e.g. with distillation) and the accuracies logged during training; the "
                      "dashed lines mark where a new task starts. The log has no test loss. Bands: std over seeds.")
    for label, group in groups.items():
        logs = [log for log in (r.log() for r in group) if log is not None and "task" in log]
        if not logs:
            section.notes.append(f"{label}: no log.csv; skipped.")
            continue
        section.images.append(plots.training_curves(logs, label, out / f"training_curves_{safe_name(label)}.png"))
    return section


def tsne_figure(run: RunResult, label: str, steps: list[int], options: ReportOptions, path: Path) -> Path:

    classes = first_task_classes(run, options.tsne_classes)
    embeddings = [run_embedding(run, step, classes, options.tsne_points) for step in steps]
    names = class_names(run) or [str(i) for i in range(max(classes, default=0) + 1)]
    kinds = {str(k) for e in embeddings if e.exemplar_kinds is not None for k in e.exemplar_kinds}
    kinds |= {"real" for e in embeddings if e.exemplar_kinds is None and len(e.exemplar_labels)}
    shapes = {"real": "stars: exemplars in memory", "collage": "plus signs: collage exemplars",
              "synthetic": "diamonds: synthetic exemplars"}
    title = (f"t-SNE of test features of the first task's classes — {label} (seed {run.seed})"
             + "".join(f"; {text}" for kind, text in shapes.items() if kind in kinds))
    return plots.tsne(embeddings, names, title, path)


def tsne_section(groups, out: Path, options: ReportOptions) -> Section:
    section = Section("t-SNE of features", "Test features of (up to) the first task's first classes, embedded "
                      "in 2-D with t-SNE, after several tasks: clusters that stay apart mean the features still "
                      "separate the old classes. Stars are the exemplars the method keeps for those classes "
                      "(plus signs collages, diamonds synthetic images), embedded with the same model.")
    for label, group in groups.items():
        run = group[0]
        if not run.has_predictions():
            section.notes.append(f"{label}: no saved features (output.save_features: false); skipped.")
            continue
        steps = choose_steps(options.tsne_steps, run.tasks_done)
        try:
            section.images.append(tsne_figure(run, label, steps, options, out / f"tsne_{safe_name(label)}.png"))
        except CilearnError as exc:
            section.notes.append(f"{label}: t-SNE skipped: {exc}")
    return section


def exemplar_section(groups, out: Path, options: ReportOptions) -> Section:

    section = Section("Exemplar memory", "The exemplars each method keeps after its last task, per class, in "
                      "selection order (first = most representative for herding).")
    for label, group in groups.items():
        run = group[0]
        memory = read_memory(run.path, run.tasks_done - 1)
        if memory is None:
            section.notes.append(f"{label}: no exemplar memory (the method keeps none).")
            continue
        names = class_names(run)
        classes = [int(c) for c in np.unique(memory.labels)]
        shown = classes[: options.exemplar_classes]
        rows = []
        for c in shown:
            where = np.flatnonzero(memory.labels == c)
            where = where[np.argsort(memory.rank[where], kind="stable")][: options.exemplars_per_class]
            rows.append((names[c] if names and c < len(names) else str(c), memory.images[where]))
        more = f", first {len(shown)} shown" if len(shown) < len(classes) else ""
        what = f" ({memory.description()})" if memory.description() else ""
        title = (f"Exemplar memory after task {run.tasks_done} — {label} (seed {run.seed}): {len(memory)} "
                 f"exemplars{what} of {len(classes)} classes{more}")
        section.images.append(plots.exemplar_grid(rows, title, out / f"exemplars_{safe_name(label)}.png"))
    return section


def default_cam_steps(tasks_done: int, limit: int = 12) -> list[int]:
    if tasks_done <= limit:
        return list(range(tasks_done))
    return sorted({int(round(v)) for v in np.linspace(0, tasks_done - 1, limit)})


def first_task_images(run: RunResult, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed first-task test images the run saved (``samples.npz``), up to ``count``."""
    samples = run.files.read_npz(run.files.samples)
    if samples is None:
        raise ReportError(f"'{run.files.samples}' is missing (runs of cilearn 0.1 lack it).")
    return samples["images"][:count], samples["labels"][:count]


def gradcam_columns(run_dir: Path, steps: list[int], images: np.ndarray, labels: np.ndarray | None,
                    target: str) -> tuple[list[dict], str]:


    columns, layer_name = [], ""
    for step in steps:
        model, _, info = load_run_model(run_dir, step)
        found = target_layer(model)
        if found is None:
            raise ReportError(f"model '{_model_name(run_dir)}' has no convolutional layer; Grad-CAM needs a CNN.")
        layer_name = found[1]
        wanted = torch.as_tensor(labels) if (target == "true" and labels is not None) else None
        cams, predicted, probability = grad_cam(model, info.normalize(images), wanted)
        names = info.class_names
        captions = [f"pred {names[p] if p < len(names) else p} ({100 * q:.0f}%)" if wanted is None
                    else f"pred {names[p] if p < len(names) else p}" for p, q in zip(predicted, probability)]
        correct = [bool(p == t) for p, t in zip(predicted, labels)] if labels is not None else [None] * len(images)
        columns.append({"title": f"after task {step + 1}", "cams": cams, "captions": captions, "correct": correct})
    return columns, layer_name


def _model_name(run_dir: Path) -> str:
    return read_config(run_dir).model.name


def gradcam_section(groups, out: Path, options: ReportOptions) -> Section:

    target = "the true class" if options.cam_target == "true" else "the predicted class"
    section = Section("Grad-CAM attention drift", f"Grad-CAM heatmaps (w.r.t. {target}) on the last "
                      "convolutional stage for the same test images of the first task, computed with the model "
                      "after each task: where the network looks, and how that drifts as it learns new classes. "
                      "Captions: predicted class (green: correct, red: wrong).")
    for label, group in groups.items():
        run = group[0]
        if not run.has_checkpoints():
            section.notes.append(f"{label}: no checkpoints (output.save_checkpoints: false); skipped.")
            continue
        try:
            cfg = read_config(run.path)
            info = read_run_info(run.path)
            h, _, c = info["image_shape"]
            if target_layer(build_model(cfg.model.name, c, h, cfg.model.options)) is None:
                section.notes.append(f"{label}: model '{cfg.model.name}' is not convolutional; Grad-CAM skipped.")
                continue
            steps = (choose_steps(options.cam_steps, run.tasks_done) if options.cam_steps
                     else default_cam_steps(run.tasks_done))
            images, labels = first_task_images(run, options.cam_images)
            columns, layer = gradcam_columns(run.path, steps, images, labels, options.cam_target)
        except CilearnError as exc:
            section.notes.append(f"{label}: Grad-CAM skipped: {exc}")
            continue
        names = info["class_names"]
        rows = [f"true {names[t]}" for t in labels]
        title = f"Grad-CAM on {layer} — {label} (seed {run.seed}), w.r.t. {target}"
        section.images.append(plots.gradcam_grid(images, columns, rows, title, out / f"gradcam_{safe_name(label)}.png"))
    return section


# --- HTML --------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,td:nth-child(2),th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:1em 0;border:1px solid #eee}
.note{color:#8a5300;font-size:.9em}.meta{color:#666;font-size:.9em}nav a{margin-right:1em}
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(title: str, meta: list[str], sections: list[Section]) -> str:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class=\"meta\">{html.escape(line)}</p>" for line in meta]
    parts.append("<nav>" + "".join(f"<a href=\"#s{i}\">{html.escape(s.title)}</a>" for i, s in enumerate(sections))
                 + "</nav>")
    for i, section in enumerate(sections):
        parts.append(f"<section id=\"s{i}\"><h2>{html.escape(section.title)}</h2><p>{html.escape(section.text)}</p>")
        parts.append(section.table)
        for image in section.images:
            parts.append(f"<img src=\"{_data_uri(image)}\" alt=\"{html.escape(Path(image).stem)}\">")
        parts += [f"<p class=\"note\">{html.escape(note)}</p>" for note in section.notes]
        if not section.images and not section.table and not section.notes:
            parts.append("<p class=\"note\">Nothing to show.</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --- the whole report --------------------------------------------------------------------------------
def make_report(paths: list[str | Path], out: str | Path, options: ReportOptions | None = None) -> Path:
    """Write every plot, results.csv/.md, runs.csv and report.html into ``out``; returns report.html."""
    options = options or ReportOptions()
    runs = discover_runs(paths)
    groups = group_runs(runs)
    out = Path(out)
    prepare_out(out)
    sections = [results_section(groups, out), accuracy_section(groups, out), old_new_section(groups, out),
                matrix_section(groups, out), confusion_section(groups, out, options), curves_section(groups, out)]
    if options.tsne:
        sections.append(tsne_section(groups, out, options))
    sections.append(exemplar_section(groups, out, options))
    if options.gradcam:
        sections.append(gradcam_section(groups, out, options))
    datasets = sorted({str(r.metrics.get("dataset")) for r in runs})
    meta = [f"{count(len(runs), 'run')} of {count(len(groups), 'method')} on {', '.join(datasets)}; generated "
            f"{datetime.now().strftime('%Y-%m-%d %H:%M')} by cilearn report (nothing retrained).",
            "Runs: " + "; ".join(f"{r.display_name}: {r.path}" + ("" if r.metrics.get("complete") else
                                 f" (incomplete: {r.tasks_done}/{r.metrics.get('num_tasks')} tasks)") for r in runs)]
    title = options.title or f"cilearn report — {', '.join(groups)} on {', '.join(datasets)}"
    path = out / "report.html"
    atomic_write_text(path, render_html(title, meta, sections))
    return path
