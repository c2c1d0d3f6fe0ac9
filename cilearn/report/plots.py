"""Every figure of a report, drawn with matplotlib's object API on the Agg canvas (no pyplot state,
no display needed).  Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110


def _matplotlib():
    """matplotlib, imported with the first figure: the command line imports this module, and a ``cilearn run``
    that draws nothing does not load matplotlib (~30 MiB of its resident memory).  No matplotlib.use("Agg"):
    every figure here has its own Agg canvas, and choosing the global backend would stop a notebook's inline
    plots."""
    import matplotlib

    return matplotlib


def _colors() -> tuple:
    return _matplotlib().colormaps["tab10"].colors


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def _pct(values) -> np.ndarray:
    return 100 * np.asarray(values, dtype=np.float64)


def _errorbar(ax, x, mean, std, label, color, linestyle="-", marker="o"):
    std = np.nan_to_num(std)
    if np.any(std > 0):
        ax.errorbar(x, mean, yerr=std, label=label, color=color, linestyle=linestyle, marker=marker,
                    capsize=3, markersize=4)
    else:
        ax.plot(x, mean, label=label, color=color, linestyle=linestyle, marker=marker, markersize=4)


# --- curves over steps -------------------------------------------------------------------------------
def accuracy_curve(series: list[dict], dataset: str, path: Path) -> Path:
    """``series``: {label, x (classes seen), mean, std, seeds, linestyle}; accuracies in [0, 1]."""
    figure = _figure(7, 4.5)
    ax = figure.add_subplot()
    colors, palette = {}, _colors()
    for item in series:
        color = colors.setdefault(item["method"], palette[len(colors) % len(palette)])
        _errorbar(ax, item["x"], _pct(item["mean"]), _pct(item["std"]), item["label"], color,
                  item.get("linestyle", "-"))
    ax.set_title(f"Accuracy on all classes seen so far — {dataset}\n(mean ± std over seeds)")
    ax.set_xlabel("number of classes seen")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    xs = sorted({int(v) for item in series for v in item["x"]})
    if len(xs) <= 25:
        ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(figure, path)


def old_new_accuracy(series: list[dict], path: Path) -> Path:
    """``series``: {label, steps, old_mean, old_std, new_mean, new_std}."""
    figure = _figure(10, 4.2)
    axes = figure.subplots(1, 2, sharey=True)
    palette = _colors()
    for i, item in enumerate(series):
        color = palette[i % len(palette)]
        _errorbar(axes[0], item["steps"], _pct(item["old_mean"]), _pct(item["old_std"]), item["label"], color)
        _errorbar(axes[1], item["steps"], _pct(item["new_mean"]), _pct(item["new_std"]), item["label"], color)
    for ax, title in zip(axes, ("Old classes (learned in earlier tasks)", "New classes (the task just learned)")):
        ax.set_title(title)
        ax.set_xlabel("after task")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        steps = sorted({int(s) for item in series for s in item["steps"]})
        if len(steps) <= 25:
            ax.set_xticks(steps)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_ylim(-3, 103)
    figure.suptitle("Old vs new accuracy per step (mean ± std over seeds)")
    return _save(figure, path)


# --- matrices ----------------------------------------------------------------------------------------
def _annotate(ax, matrix: np.ndarray, fmt: str, threshold: float, size: float) -> None:
    for (i, j), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=size,
                    color="white" if value < threshold else "black")


def accuracy_matrix(matrix: np.ndarray, label: str, seeds: int, path: Path) -> Path:
    """Heatmap of the (mean) accuracy matrix, in [0, 1], NaN where not evaluated."""
    t = matrix.shape[0]
    figure = _figure(max(4.5, 0.55 * t + 2.5), max(3.8, 0.5 * t + 1.8))
    ax = figure.add_subplot()
    data = _pct(matrix)
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0, vmax=100)
    if t <= 20:
        _annotate(ax, data, "{:.0f}" if t > 8 else "{:.1f}", 55, 8 if t <= 10 else 6)
    ticks = np.arange(t)
    step = max(1, t // 20)
    ax.set_xticks(ticks[::step], [str(i + 1) for i in ticks[::step]])
    ax.set_yticks(ticks[::step], [str(i + 1) for i in ticks[::step]])
    ax.set_xlabel("evaluated on the test data of task")
    ax.set_ylabel("after training task")
    what = f"mean of {seeds} seeds" if seeds > 1 else "one seed"
    ax.set_title(f"Accuracy matrix — {label} ({what})")
    figure.colorbar(image, ax=ax, label="accuracy (%)")
    return _save(figure, path)


def confusion_matrices(panels: list[dict], title: str, class_names: list[str] | None, path: Path) -> Path:
    """``panels``: {matrix (counts, true × predicted), title, boundaries (class index where a task
    starts)}; rows are normalised to the fraction of each true class."""
    n = len(panels)
    size = max(p["matrix"].shape[0] for p in panels)
    side = float(np.clip(0.3 * size + 2.2, 3.4, 7.0))
    figure = _figure(side * n + 1.0, side + 0.6)
    axes = np.atleast_1d(figure.subplots(1, n))
    image = None
    for ax, panel in zip(axes, panels):
        counts = panel["matrix"].astype(np.float64)
        totals = counts.sum(1, keepdims=True)
        fractions = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
        k = counts.shape[0]
        if k <= 12:
            for (i, j), value in np.ndenumerate(counts):
                if value:
                    ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=7,
                            color="white" if fractions[i, j] > 0.5 else "black")
        for b in panel.get("boundaries", []):
            ax.axhline(b - 0.5, color="darkorange", linewidth=0.8)
            ax.axvline(b - 0.5, color="darkorange", linewidth=0.8)
        if class_names is not None and k <= 20:
            names = [class_names[i] if i < len(class_names) else str(i) for i in range(k)]
            ax.set_xticks(range(k), names, rotation=90, fontsize=7)
            ax.set_yticks(range(k), names, fontsize=7)
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    figure.colorbar(image, ax=list(axes), label="fraction of the true class", shrink=0.8)
    figure.suptitle(title)
    return _save(figure, path)


# --- training log ------------------------------------------------------------------------------------
def training_curves(logs: list[dict], label: str, path: Path) -> Path:
    """Per-epoch curves from log.csv; ``logs`` are the seeds' columns (mean ± band when several seeds have
    the same number of epochs, else the first seed)."""
    lengths = {len(log["task"]) for log in logs}
    use = logs if len(lengths) == 1 else logs[:1]
    first = use[0]
    x = np.arange(1, len(first["task"]) + 1)
    figure = _figure(11, 4.2)
    ax_loss, ax_acc = figure.subplots(1, 2, sharex=True)
    curves = [(ax_loss, "train_loss", "train loss", 1.0),
              (ax_acc, "train_accuracy", "train accuracy (training batches)", 100.0),
              (ax_acc, "test_accuracy_current", "test accuracy, current task", 100.0),
              (ax_acc, "test_accuracy_seen", "test accuracy, all seen classes", 100.0)]
    palette = _colors()
    for i, (ax, key, name, scale) in enumerate(curves):
        if key not in first:
            continue
        stacked = scale * np.stack([log[key] for log in use])
        valid = ~np.all(np.isnan(stacked), axis=0)
        if not valid.any():
            continue
        mean = np.nanmean(stacked[:, valid], axis=0)
        color = palette[i % len(palette)]
        ax.plot(x[valid], mean, color=color, label=name, marker="." if len(x) <= 60 else None)
        if len(use) > 1:
            std = np.nanstd(stacked[:, valid], axis=0, ddof=1)
            ax.fill_between(x[valid], mean - std, mean + std, color=color, alpha=0.2)
    tasks = first["task"]
    starts = [i for i in range(1, len(tasks)) if tasks[i] != tasks[i - 1]]
    for ax in (ax_loss, ax_acc):
        for s in starts:
            ax.axvline(s + 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("epoch (over all tasks; dashed lines: a new task starts)")
        ax.grid(alpha=0.3)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Training loss (the method's full objective)")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(-3, 103)
    ax_acc.set_title("Accuracy")
    ax_loss.legend(fontsize="small")
    ax_acc.legend(fontsize="small", loc="lower left")
    seeds = f"mean ± std of {len(use)} seeds" if len(use) > 1 else "one seed"
    figure.suptitle(f"Training curves — {label} ({seeds})")
    return _save(figure, path)


# --- t-SNE -------------------------------------------------------------------------------------------
# marker, size and legend of each kind of exemplar (cilearn.methods.parts.memory.KINDS)
EXEMPLAR_MARKERS = {"real": ("*", 70, "exemplars in memory"), "collage": ("P", 45, "collage exemplars in memory"),
                    "synthetic": ("D", 30, "synthetic exemplars in memory")}


def tsne(embeddings: list, class_names: list[str], title: str, path: Path) -> Path:
    n = len(embeddings)
    figure = _figure(4.3 * n + 1.5, 4.6)
    axes = np.atleast_1d(figure.subplots(1, n))
    from matplotlib.lines import Line2D

    handles: dict[str, Line2D] = {}
    palette = _colors()
    for ax, emb in zip(axes, embeddings):
        for k, c in enumerate(emb.classes):
            color = palette[k % len(palette)]
            name = class_names[c] if c < len(class_names) else str(c)
            points = emb.points[emb.labels == c]
            ax.scatter(points[:, 0], points[:, 1], s=10, color=color, alpha=0.6, linewidths=0)
            handles.setdefault(f"class {name}", Line2D([], [], marker="o", linestyle="", color=color,
                                                       label=f"class {name} (test)"))
            kinds = (np.asarray(emb.exemplar_kinds).astype(str) if emb.exemplar_kinds is not None
                     else np.full(len(emb.exemplar_labels), "real"))
            for kind, (marker, size, name) in EXEMPLAR_MARKERS.items():
                ex = emb.exemplar_points[(emb.exemplar_labels == c) & (kinds == kind)]
                if len(ex):
                    ax.scatter(ex[:, 0], ex[:, 1], s=size, marker=marker, color=color, edgecolors="black",
                               linewidths=0.7, zorder=3)
                    handles.setdefault(f"exemplars {kind}", Line2D(
                        [], [], marker=marker, linestyle="", color="grey", markeredgecolor="black",
                        markersize=size ** 0.5 + 1.6, label=name))
        ax.set_title(f"after task {emb.task + 1}" + (f"\n({emb.note})" if emb.note else ""), fontsize=10)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_xticks([])
        ax.set_yticks([])
    ordered = ([h for k, h in handles.items() if not k.startswith("exemplars")]
               + [h for k, h in handles.items() if k.startswith("exemplars")])
    figure.legend(handles=ordered, loc="outside right center", fontsize="small")
    figure.suptitle(title)
    return _save(figure, path)


# --- image grids -------------------------------------------------------------------------------------
def _show(ax, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def exemplar_grid(rows: list[tuple[str, np.ndarray]], title: str, path: Path) -> Path:
    """``rows``: (class name, uint8 NHWC exemplars in selection order) per class."""
    columns = max(len(images) for _, images in rows)
    cell = 0.9 if columns > 6 else 1.1
    figure = _figure(cell * columns + 1.4, cell * len(rows) + 1.0)
    axes = np.array(figure.subplots(len(rows), columns, squeeze=False))
    for r, (name, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            if c < len(images):
                _show(ax, images[c])
            else:
                ax.axis("off")
            if r == len(rows) - 1 and c < len(images):
                ax.set_xlabel(f"#{c + 1}", fontsize=7)
        axes[r, 0].set_ylabel(f"class {name}", rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def gradcam_grid(images: np.ndarray, columns: list[dict], row_names: list[str], title: str, path: Path) -> Path:
    """``images`` uint8 NHWC (rows); ``columns``: {title, cams (N, H, W), captions [str], correct [bool]}."""
    n, m = len(images), len(columns) + 1
    figure = _figure(1.45 * m + 1.6, 1.55 * n + 0.9)
    axes = np.array(figure.subplots(n, m, squeeze=False))
    heat = None
    for r in range(n):
        _show(axes[r, 0], images[r])
        axes[r, 0].set_ylabel(row_names[r], fontsize=8)
        grey = images[r].astype(np.float64).mean(-1)
        for c, column in enumerate(columns, start=1):
            ax = axes[r, c]
            if images[r].shape[-1] == 3:
                ax.imshow(images[r], interpolation="nearest")
            else:
                ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            heat = ax.imshow(column["cams"][r], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            correct = column["correct"][r]
            ax.set_xlabel(column["captions"][r], fontsize=7,
                          color="black" if correct is None else ("green" if correct else "red"))
    axes[0, 0].set_title("input", fontsize=9)
    for c, column in enumerate(columns, start=1):
        axes[0, c].set_title(column["title"], fontsize=9)
    if heat is not None:
        figure.colorbar(heat, ax=axes[:, -1].tolist(), label="Grad-CAM (scaled to 1 per image)", shrink=0.8)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)
