"""Reports: multi-seed aggregation, every plot/table file, the one-file HTML, Grad-CAM and t-SNE commands.

Two methods (fine-tuning and iCaRL, which keeps an exemplar memory and an NME classifier) × two seeds
on the 8×8 digits with a narrow ResNet-20 (so Grad-CAM has a convolutional stage), 3 tasks, 1 epoch;
plus one single-seed MLP run for the non-convolutional paths.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cilearn.cli import main

CONFIG = """
data: {name: digits}
scenario: {classes_per_task: 2, num_tasks: 3}
model: {name: resnet20, options: {width: 0.5}}
methods:
  - {name: finetune}
  - {name: icarl, memory_size: 30}
seeds: [0, 1]
train: {epochs: 1, batch_size: 64, lr: 0.05, scheduler: constant, progress: false,
        num_threads: 1, precision: fp32}  # one thread: OpenMP spinning on a busy 2-core machine is 100x slower;
                                            # fp32: features are recomputed in fp32 and compared
"""

LABELS = ("finetune", "icarl")
SEEDS = (0, 1)


@pytest.fixture(scope="session")
def experiment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_runs")
    config = root / "two_methods.yaml"
    config.write_text(CONFIG)
    out = root / "exp"
    assert main(["run", str(config), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_mlp")
    config = root / "mlp.yaml"
    config.write_text(CONFIG.replace("{name: resnet20, options: {width: 0.5}}", "{name: mlp, options: {hidden: [32]}}")
                      .replace("seeds: [0, 1]", "seed: 0").replace("  - {name: icarl, memory_size: 30}\n", ""))
    out = root / "mlp"
    assert main(["run", str(config), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def report(experiment, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report_out") / "report"
    assert main(["report", str(experiment), "--out", str(out), "--cam-images", "4"]) == 0
    return out


def child_metrics(experiment: Path, label: str) -> list[dict]:
    return [json.loads((experiment / label / f"seed{s}" / "metrics.json").read_text()) for s in SEEDS]


# --- multi-seed runs and their aggregation -----------------------------------------------------------
def test_multi_seed_layout_and_summary_aggregation(experiment):
    for label in LABELS:
        for seed in SEEDS:
            run = experiment / label / f"seed{seed}"
            assert (run / "metrics.json").is_file() and (run / "config.yaml").is_file()
            assert json.loads((run / "metrics.json").read_text())["label"] == label  # seeds share the label
    summary = json.loads((experiment / "summary.json").read_text())
    assert set(summary["aggregate"]) == set(LABELS)  # one entry per method, not per seed
    for label in LABELS:
        runs = child_metrics(experiment, label)
        agg = summary["aggregate"][label]
        for key in ("average_incremental_accuracy", "last_accuracy", "forgetting"):
            values = np.array([r[key] for r in runs])
            assert agg[key]["mean"] == pytest.approx(values.mean())
            assert agg[key]["std"] == pytest.approx(values.std(ddof=1))
        curves = np.array([r["seen_accuracy"] for r in runs])
        np.testing.assert_allclose(agg["seen_accuracy"]["mean"], curves.mean(0))
        np.testing.assert_allclose(agg["seen_accuracy"]["std"], curves.std(0, ddof=1))


# --- the report ----------------------------------------------------------------------------------------
def expected_pngs() -> set[str]:
    names = {"accuracy_curve.png", "old_new_accuracy.png"}
    for label in LABELS:
        names |= {f"accuracy_matrix_{label}.png", f"confusion_{label}.png", f"training_curves_{label}.png",
                  f"tsne_{label}.png", f"gradcam_{label}.png"}
    return names | {"exemplars_icarl.png"}  # fine-tuning keeps no memory


def test_report_writes_every_file(report):
    pngs = {p.name for p in report.glob("*.png")}
    assert pngs == expected_pngs()
    for name in pngs:
        data = (report / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name
    for name in ("results.csv", "results.md", "runs.csv", "report.html"):
        assert (report / name).stat().st_size > 0, name


def test_html_is_self_contained(report):
    text = (report / "report.html").read_text()
    embedded = text.count('<img src="data:image/png;base64,')
    assert embedded == len(list(report.glob("*.png")))
    # Nothing else is loaded: every src is a data URI, every href an in-page anchor, no <link>/<script>.
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', text))
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', text))
    assert "<link" not in text and "<script" not in text and "url(" not in text
    for label in LABELS:
        assert label in text
    assert "no exemplar memory" in text  # fine-tuning's exemplar note
    assert "nme" in text  # iCaRL's second classifier is in the results table


def test_results_table_matches_numpy(report, experiment):
    with open(report / "results.csv", newline="") as handle:
        rows = {(r["method"], r["classifier"]): r for r in csv.DictReader(handle)}
    assert set(rows) == {("finetune", "head"), ("icarl", "nme"), ("icarl", "head")}
    assert rows[("icarl", "nme")]["primary"] == "True" and rows[("icarl", "head")]["primary"] == "False"
    for (label, classifier), row in rows.items():
        runs = [r["classifiers"][classifier] for r in child_metrics(experiment, label)]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        for key in ("average_incremental_accuracy", "last_accuracy", "forgetting"):
            values = np.array([r[key] for r in runs])
            assert float(row[f"{key}_mean"]) == pytest.approx(values.mean(), abs=1e-12)
            assert float(row[f"{key}_std"]) == pytest.approx(values.std(ddof=1), abs=1e-12)
    markdown = (report / "results.md").read_text()
    mean, std = (100 * np.array([r["average_incremental_accuracy"] for r in child_metrics(experiment, "finetune")])
                 ).mean(), (100 * np.array([r["average_incremental_accuracy"]
                                            for r in child_metrics(experiment, "finetune")])).std(ddof=1)
    assert f"{mean:.1f} ± {std:.1f}" in markdown


def test_runs_configured_with_sem_are_reported_with_sem(report, tmp_path):
    """``output.spread: sem`` (the published configs whose paper reports the standard error): the report's table
    gives mean ± std / sqrt(seeds), says so, and results.csv holds both statistics; other runs keep ± std."""
    assert (report / "results.md").read_text().startswith("# Results (mean ± std over seeds)")
    config = tmp_path / "sem.yaml"
    config.write_text(CONFIG.replace("{name: resnet20, options: {width: 0.5}}", "{name: mlp, options: {hidden: [32]}}")
                      .replace("  - {name: icarl, memory_size: 30}\n", "").replace("seeds: [0, 1]", "seeds: [0, 1, 2]")
                      + "output: {spread: sem, save_features: false}\n")
    runs, out = tmp_path / "runs", tmp_path / "report"
    assert main(["run", str(config), "--out", str(runs)]) == 0
    assert main(["report", str(runs), "--out", str(out), "--no-tsne", "--no-gradcam"]) == 0
    last = 100 * np.array([json.loads((runs / "finetune" / f"seed{s}" / "metrics.json").read_text())["last_accuracy"]
                           for s in (0, 1, 2)])
    sem, std = last.std(ddof=1) / np.sqrt(3), last.std(ddof=1)
    assert round(sem, 1) != round(std, 1)  # the test tells them apart
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# Results (mean ± SEM over seeds)")
    assert f"| {last.mean():.1f} ± {sem:.1f} |" in markdown
    with open(out / "results.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["last_accuracy_sem"]) == pytest.approx(sem / 100, abs=1e-12)
    assert float(row["last_accuracy_std"]) == pytest.approx(std / 100, abs=1e-12)
    assert "standard error of the mean" in (out / "report.html").read_text()


def test_rerun_replaces_a_previous_report_but_never_foreign_files(experiment, report, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    assert main(["report", str(experiment), "--out", str(foreign)]) == 2
    assert (foreign / "thesis.txt").read_text() == "keep me"


# --- rebuilding models from a run folder ----------------------------------------------------------------
def test_load_run_model_reproduces_saved_features(experiment):
    from cilearn.report.model import compute_features, load_run_model

    run = experiment / "icarl" / "seed1"
    from cilearn.report.model import read_memory

    model, cfg, info = load_run_model(run, 1)
    # iCaRL's network has every class's output from the first task (all 10 of digits; 3 of its 5 tasks run here)
    assert cfg.seed == 1 and model.num_classes == 10 and info.task_index == 1
    memory = read_memory(run, 1)  # what the run saved after task 2, with features under that model
    assert memory is not None and len(memory) > 0 and set(np.unique(memory.labels)) == {0, 1, 2, 3}
    assert memory.images.dtype == np.uint8 and memory.images.shape[1:] == (8, 8, 1)
    np.testing.assert_allclose(compute_features(model, info, memory.images), memory.features, atol=1e-4)
    samples = np.load(run / "samples.npz")  # Grad-CAM's images: the first task's test images
    assert set(np.unique(samples["labels"])) == {0, 1} and samples["images"].dtype == np.uint8


# --- the stand-alone commands ---------------------------------------------------------------------------
def test_gradcam_command_on_image_files(experiment, tmp_path):
    from PIL import Image

    from cilearn.data import load_dataset

    digits = load_dataset("digits").test.images
    paths = []
    for i, size in enumerate((8, 32)):  # any size: images are resized to the model's input
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(digits[i, ..., 0]).resize((size, size)).save(path)
        paths.append(str(path))
    jpg = tmp_path / "colour.jpg"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (20, 20, 3), dtype=np.uint8)).save(jpg)
    paths.append(str(jpg))
    out = tmp_path / "cam"
    checkpoint = experiment / "finetune" / "seed0" / "checkpoints" / "task_02.pt"
    assert main(["gradcam", str(checkpoint), *paths, "--out", str(out)]) == 0
    assert (out / "gradcam.png").stat().st_size > 5000
    with open(out / "gradcam.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(0 <= int(r["predicted_class"]) < 6 for r in rows)
    assert main(["gradcam", str(checkpoint), paths[0], "--out", str(out), "--target", "9"]) == 2  # 6 classes


def test_gradcam_math_on_a_known_model():
    import torch
    from torch import nn

    from cilearn.report.gradcam import grad_cam

    class Net(nn.Module):  # one conv channel that copies the input; the class score is its mean
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False))
            self.backbone[0].weight.data.fill_(1.0)

        def forward(self, x):
            return torch.cat([self.backbone(x).mean((1, 2, 3))[:, None], torch.zeros(len(x), 1)], 1)

    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 2] = 5.0
    cams, predicted, _ = grad_cam(Net(), x)
    assert predicted.tolist() == [0]
    assert cams.shape == (1, 4, 4) and cams[0].max() == pytest.approx(1.0)
    assert np.unravel_index(cams[0].argmax(), (4, 4)) == (1, 2)


def test_tsne_command(experiment, tmp_path):
    out = tmp_path / "tsne"
    assert main(["tsne", str(experiment / "icarl" / "seed0"), "--out", str(out), "--steps", "1", "-1"]) == 0
    assert (out / "tsne_icarl_seed0.png").stat().st_size > 5000
    assert main(["tsne", str(experiment / "icarl" / "seed0"), "--out", str(out), "--steps", "7"]) == 2


def test_mlp_run_skips_gradcam_with_a_note(mlp_run, tmp_path, capsys):
    out = tmp_path / "mlp_report"
    assert main(["report", str(mlp_run), "--out", str(out), "--no-tsne"]) == 0
    text = (out / "report.html").read_text()
    assert "not convolutional" in text and not list(out.glob("gradcam_*.png"))
    assert text.count('<img src="data:image/png;base64,') == len(list(out.glob("*.png")))
    checkpoint = mlp_run / "checkpoints" / "task_00.pt"
    image = tmp_path / "x.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    capsys.readouterr()
    assert main(["gradcam", str(checkpoint), str(image), "--out", str(tmp_path / "c")]) == 2
    assert "convolutional" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_bad_run_dir_is_a_clear_error(tmp_path, capsys, make):
    target = tmp_path / "not_a_run"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("hello")
    assert main(["report", str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not_a_run" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
