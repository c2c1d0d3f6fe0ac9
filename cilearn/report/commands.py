"""``cilearn report``, ``cilearn gradcam`` and ``cilearn tsne``.  Heavy imports happen in the handlers."""

from __future__ import annotations

import csv
from contextlib import contextmanager
from pathlib import Path

import torch

from ..log import get_logger
from . import ReportError, plots
from .build import ReportOptions, make_report, tsne_figure
from .gradcam import grad_cam, read_images, target_layer
from .model import load_model_from_checkpoint
from .runs import choose_steps, discover_runs, group_runs, safe_name

log = get_logger(__name__)


@contextmanager
def _few_threads():
    """Reports run a few small forward/backward passes: one torch thread is as fast and, on a busy
    machine, far faster than OpenMP threads spinning for cores they do not get."""

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report", help="plots, tables and one self-contained report.html from run directories",
        description="Report on finished runs (nothing is retrained): accuracy curves with error bars over seeds, "
                    "accuracy matrices, old/new accuracy, confusion matrices, training curves, t-SNE, exemplars, "
                    "Grad-CAM, and a results table (CSV, Markdown, HTML). RUN_DIR is a run folder or an "
                    "experiment folder (with experiment.yaml) whose child runs are all included; runs of the "
                    "same method label are the seeds of that method.")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", required=True, metavar="DIR", help="folder for the report (new, empty, or a "
                        "previous report whose files are replaced)")
    report.add_argument("--steps", type=int, nargs="+", metavar="TASK",
                        help="task numbers (1-based, -1 = last) for the confusion matrices (default: first, "
                             "middle, last)")
    report.add_argument("--tsne-steps", type=int, nargs="+", metavar="TASK",
                        help="task numbers for t-SNE (default: first, middle, last)")
    report.add_argument("--cam-steps", type=int, nargs="+", metavar="TASK",
                        help="task numbers for Grad-CAM (default: every task, at most 12)")
    report.add_argument("--cam-images", type=int, default=6, metavar="N", help="first-task test images for Grad-CAM")
    report.add_argument("--cam-target", choices=("predicted", "true"), default="predicted",
                        help="class Grad-CAM explains (default: predicted)")
    report.add_argument("--tsne-classes", type=int, default=5, metavar="N", help="first-task classes in t-SNE")
    report.add_argument("--no-tsne", action="store_true", help="skip t-SNE (the slowest part)")
    report.add_argument("--no-gradcam", action="store_true", help="skip Grad-CAM")
    report.add_argument("--title", help="title of report.html")
    report.set_defaults(handler=cmd_report)

    gradcam = subparsers.add_parser(
        "gradcam", help="Grad-CAM heatmaps of a checkpoint on image files",
        description="Grad-CAM on the last convolutional stage of the model in CHECKPOINT (a checkpoints/task_XX.pt "
                    "inside a run directory; the config is read from the run directory) for PNG/JPG images, "
                    "resized to the model's input size.")
    gradcam.add_argument("checkpoint", metavar="CHECKPOINT")
    gradcam.add_argument("images", nargs="+", metavar="IMAGE")
    gradcam.add_argument("--out", required=True, metavar="DIR")
    gradcam.add_argument("--target", type=int, metavar="CLASS",
                         help="class index to explain (default: each image's predicted class)")
    gradcam.set_defaults(handler=cmd_gradcam)

    tsne = subparsers.add_parser(
        "tsne", help="t-SNE of a run's saved test features (with exemplars when the method keeps a memory)",
        description="t-SNE of the saved test features of the first task's classes after chosen tasks, for every "
                    "run in RUN_DIR (a run or an experiment folder).")
    tsne.add_argument("run_dir", metavar="RUN_DIR")
    tsne.add_argument("--out", required=True, metavar="DIR")
    tsne.add_argument("--steps", type=int, nargs="+", metavar="TASK",
                      help="task numbers (1-based, -1 = last; default: first, middle, last)")
    tsne.add_argument("--classes", type=int, default=5, metavar="N", help="first-task classes to show")
    tsne.set_defaults(handler=cmd_tsne)


def _positive(name: str, value: int) -> None:

    if value < 1:
        raise ReportError(f"{name} must be at least 1, got {value}.")


def cmd_report(args) -> int:

    _positive("--cam-images", args.cam_images)
    _positive("--tsne-classes", args.tsne_classes)
    options = ReportOptions(steps=args.steps, tsne_steps=args.tsne_steps, cam_steps=args.cam_steps,
                            cam_images=args.cam_images, cam_target=args.cam_target, tsne_classes=args.tsne_classes,
                            tsne=not args.no_tsne, gradcam=not args.no_gradcam, title=args.title)
    with _few_threads():
        path = make_report(args.run_dirs, args.out, options)
    print(f"report: {path}")
    return 0


def cmd_gradcam(args) -> int:
    with _few_threads():
        return _gradcam(args)


def _gradcam(args) -> int:



    model, cfg, info = load_model_from_checkpoint(args.checkpoint)
    found = target_layer(model)
    if found is None:
        raise ReportError(f"model '{cfg.model.name}' has no convolutional layer; Grad-CAM needs a CNN "
                          f"(e.g. a resnet), not an MLP.")
    if args.target is not None and not 0 <= args.target < model.num_classes:
        raise ReportError(f"--target {args.target}: the model after task {info.task_index + 1} has classes "
                          f"0..{model.num_classes - 1}.")
    images = read_images(args.images, info.image_size, info.channels)
    target = torch.full((len(images),), args.target) if args.target is not None else None
    cams, predicted, probability = grad_cam(model, info.normalize(images), target)
    names = info.class_names
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    column = {"title": f"after task {info.task_index + 1}", "cams": cams, "correct": [None] * len(images),
              "captions": [f"pred {names[p]} ({q:.0%})" if args.target is None else
                           f"pred {names[p]}; p({names[args.target]}) {q:.0%}" for p, q in zip(predicted, probability)]}
    what = "predicted class" if args.target is None else f"class {names[args.target]}"
    rows = [Path(p).name[:18] for p in args.images]
    path = plots.gradcam_grid(images, [column], rows, f"Grad-CAM on {found[1]} — {Path(args.checkpoint).name}, "
                              f"w.r.t. the {what}", out / "gradcam.png")
    with open(out / "gradcam.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "predicted_class", "predicted_name", "target_probability"])
        for p, c, q in zip(args.images, predicted, probability):
            writer.writerow([p, int(c), names[c], f"{q:.6f}"])
    print(f"gradcam: {path}")
    return 0


def cmd_tsne(args) -> int:

    _positive("--classes", args.classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = ReportOptions(tsne_classes=args.classes)
    with _few_threads():
        _tsne_runs(args, out, options)
    return 0


def _tsne_runs(args, out: Path, options) -> None:

    for label, group in group_runs(discover_runs([args.run_dir])).items():
        for run in group:
            if not run.has_predictions():
                log.warning(f"{run.display_name}: no saved features (output.save_features: false); skipped.")
                continue
            steps = choose_steps(args.steps, run.tasks_done)
            path = tsne_figure(run, label, steps, options, out / f"tsne_{safe_name(label)}_seed{run.seed}.png")
            print(f"tsne: {path}")
