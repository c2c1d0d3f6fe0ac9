"""The Python API: Experiment, results, scenarios in a user's own loop, and user datasets without wrapper files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import cilearn
from cilearn.data import DatasetSplits, from_folder, from_torch, load_dataset, register_dataset
from cilearn.errors import ConfigError, DataError
from cilearn.experiment import Experiment

ROOT = Path(__file__).resolve().parents[1]
TINY = {"scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": 2},
        "model": {"name": "mlp", "options": {"hidden": [32]}},
        "method": {"name": "finetune"},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "scheduler": "constant", "progress": False},
        "output": {"save_features": False}}


class DigitImages(Dataset):
    """A torchvision-style dataset: items (PIL image, int label), a ``classes`` attribute, an optional
    transform — what torchvision.datasets.MNIST looks like to its users, without torchvision."""

    classes = [f"digit {d}" for d in range(10)]

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index, ..., 0], mode="L")
        return (self.transform(image) if self.transform else image), int(self.labels[index])


def to_float_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision's ToTensor for a grey image: (1, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


def torch_style(digits, transform=None):
    return (DigitImages(digits.train.images, digits.train.labels, transform),
            DigitImages(digits.test.images, digits.test.labels, transform))


def test_two_tasks_through_the_python_api_on_a_torchvision_style_dataset(tmp_path, digits):
    splits = from_torch(*torch_style(digits), name="my_digits")
    assert splits.class_names == DigitImages.classes  # from the dataset's classes attribute
    assert np.array_equal(splits.train.images, digits.train.images)  # PIL items read back exactly
    result = Experiment.from_dict(TINY, data=splits).run(out=tmp_path / "run")
    assert result.path == tmp_path / "run" and result.complete
    matrix = result.accuracy_matrix
    assert matrix.shape == (2, 2) and np.isnan(matrix[0, 1])
    assert matrix[0, 0] > 0.9 and matrix[1, 1] > 0.9  # each two-class task is learnt
    assert result.metrics["num_tasks"] == 2 and result.metrics["dataset"] == "my_digits"
    assert result.run.last_accuracy == pytest.approx(result.metrics["seen_accuracy"][-1])
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["class_names"][:4] == ["digit 0", "digit 1", "digit 2", "digit 3"]


def test_items_as_float_tensors_and_arrays_give_the_same_uint8_images(digits):
    from_tensors = from_torch(*torch_style(digits, to_float_tensor))
    from_arrays = from_torch(*torch_style(digits, np.asarray), class_names=[str(d) for d in range(10)])
    assert np.array_equal(from_tensors.train.images, digits.train.images)
    assert np.array_equal(from_arrays.test.images, digits.test.images)
    assert np.array_equal(from_arrays.test.labels, digits.test.labels)


def test_bad_user_datasets_get_one_clear_message(digits):
    def normalised(image):
        return (to_float_tensor(image) - 0.5) / 0.25

    train, test = torch_style(digits, normalised)
    with pytest.raises(DataError, match=r"train dataset item 0: float image values in .*without Normalize"):
        from_torch(train, test)
    sizes = [np.zeros((8, 8), np.uint8), np.zeros((9, 9), np.uint8)]
    with pytest.raises(DataError, match=r"train dataset item 1: image of shape \(9, 9, 1\).*item 0 is \(8, 8, 1\)"):
        from_torch([(sizes[0], 0), (sizes[1], 1)], [(sizes[0], 0)])
    with pytest.raises(DataError, match=r"item 0: the label 'a' is not a class index"):
        from_torch([(sizes[0], "a")], [(sizes[0], 0)])
    with pytest.raises(DataError, match="label 1 has no class name"):
        from_torch([(sizes[0], 0), (sizes[0], 1)], [(sizes[0], 0)], class_names=["only"])


def test_a_registered_dataset_is_usable_by_name_in_a_config(tmp_path, digits, request):
    register_dataset("api_test_digits", digits)
    request.addfinalizer(lambda: cilearn.data.registry.DATASETS.remove("api_test_digits"))  # ends with this test
    names = [name for name, _ in cilearn.data.list_datasets()]
    assert "api_test_digits" in names
    config = {**TINY, "data": {"name": "api_test_digits"}}
    config.pop("method")
    config["methods"] = ["finetune", "joint"]
    result = Experiment.from_dict(config).run(tmp_path / "exp")
    assert result.labels == ["finetune", "joint"] and len(result) == 2
    assert result["joint"].accuracy_matrix.shape == (2, 2)
    with pytest.raises(ValueError, match="has 2 runs"):
        result.accuracy_matrix  # noqa: B018 - several runs: pick one
    assert result.table().splitlines()[0].startswith("method")
    assert set(result.summary()) == {"finetune", "joint"}
    again = cilearn.load_result(tmp_path / "exp")
    assert again.records() == result.records()
    with pytest.raises(DataError, match="built-in"):
        register_dataset("digits", digits)


def test_resume_through_the_api_needs_the_same_in_memory_data(tmp_path, digits):
    splits = from_torch(*torch_style(digits), name="in_memory_digits")
    config = {**TINY, "output": {"save_features": False}}
    first = Experiment.from_dict(config, data=splits).run(tmp_path / "run")
    # Take the run back to the end of task 1, as a crash during task 2 leaves it.
    run = tmp_path / "run"
    (run / "checkpoints" / "task_01.pt").unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))
    with pytest.raises(DataError, match=r"in_memory_digits', which is not registered.*data=<the same DatasetSplits>"):
        Experiment.resume(run)
    resumed = Experiment.resume(run, data=splits)
    assert resumed.complete
    np.testing.assert_array_equal(resumed.accuracy_matrix, first.accuracy_matrix)  # CPU: exactly the same run
    assert Experiment.resume(run).complete  # already complete: only read, no data needed


def test_config_mistakes_surface_when_the_experiment_is_made(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs"):
        Experiment.from_dict({**TINY, "data": {"name": "digits"}}, overrides=["train.epochs=0"])
    with pytest.raises(ConfigError, match="expected a dict"):
        Experiment.from_dict([1, 2])
    with pytest.raises(ConfigError, match="DatasetSplits"):
        Experiment.from_dict(TINY, data=[1, 2])
    experiment = Experiment.from_yaml(ROOT / "configs/quickstart.yaml", overrides=["method=finetune"])
    assert [label for label, _ in experiment.runs] == ["finetune"]
    assert experiment.default_out().parts[:2] == ("runs", "quickstart")


def test_a_scenario_feeds_a_plain_pytorch_training_loop(digits):
    scenario = cilearn.scenarios.create(digits, classes_per_task=2, class_order="sorted")
    assert len(scenario) == 5 and len(scenario[:2]) == 2 and scenario[:2][1] is scenario[1]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for task in scenario[:2]:
        loader = DataLoader(task.dataset("train"), batch_size=32, shuffle=True)
        images, labels, task_ids = next(iter(loader))
        assert images.dtype == torch.float32 and images.shape[1:] == (1, 8, 8)
        assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
        assert set(labels.tolist()) <= set(task.new_classes) and set(task_ids.tolist()) == {task.index}
        for _ in range(5):
            for images, labels, _ in loader:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(images), labels).backward()
                optimizer.step()
    seen = scenario[:2].dataset("test")
    assert len(seen) == len(scenario[0].test) + len(scenario[1].test)
    images, labels, task_ids = next(iter(DataLoader(seen, batch_size=len(seen))))
    assert np.array_equal(task_ids.numpy(), np.repeat([0, 1], [len(scenario[0].test), len(scenario[1].test)]))
    predictions = model(images).argmax(1)
    new = labels >= 2  # fine-tuning in the user's loop forgets task 1 as cilearn's does
    assert (predictions[new] == labels[new]).float().mean() > 0.9
    assert (predictions[~new] == labels[~new]).float().mean() < 0.5


def test_dataset_formats_and_transforms(digits):
    task = cilearn.scenarios.create("digits", classes_per_task=5, class_order="sorted")[0]
    raw = task.dataset("test", image_format="uint8")[0][0]
    assert raw.dtype == torch.uint8 and raw.shape == (1, 8, 8)
    assert np.array_equal(raw[0].numpy(), task.test.images[0, ..., 0])
    pil, label, task_id = task.dataset("test", image_format="pil")[0]
    assert pil.size == (8, 8) and label == task.test.labels[0] and task_id == 0
    flipped = task.dataset("test", transform=lambda x: x.flip(-1))[0][0]
    assert torch.equal(flipped, raw.flip(-1).float() / 255)
    with pytest.raises(ValueError, match="split must be"):
        task.dataset("validation")
    with pytest.raises(ConfigError, match="classes_per_task"):
        cilearn.scenarios.create("digits")
    with pytest.raises(ConfigError, match="Did you mean 'classes_per_task'"):
        cilearn.scenarios.create("digits", classes_per_tsk=2)


def test_a_folder_of_class_folders_is_a_dataset(tmp_path, digits):
    folder = tmp_path / "plain"
    for c in range(3):
        (folder / f"class{c}").mkdir(parents=True)
        for i, image in enumerate(digits.train.images[digits.train.labels == c][:10]):
            Image.fromarray(image[..., 0]).save(folder / f"class{c}" / f"{i}.png")
    splits = from_folder(folder, test_fraction=0.3, seed=1)
    assert splits.class_names == ["class0", "class1", "class2"]
    assert len(splits.train) == 21 and len(splits.test) == 9  # 3 of every class's 10 images go to test
    assert np.bincount(splits.test.labels).tolist() == [3, 3, 3]
    assert np.array_equal(from_folder(folder, test_fraction=0.3, seed=1).test.images, splits.test.images)
    with pytest.raises(DataError, match="not found"):
        from_folder(tmp_path / "missing")


def test_import_cilearn_stays_cheap():
    """``import cilearn`` loads its names on first use; the modules behind them import what they need at the top
    (torch included: tests/test_architecture.py allows no function-level import of torch)."""
    code = ("import sys, cilearn; assert 'torch' not in sys.modules; cilearn.Experiment; "
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_data_mistakes_surface_when_the_experiment_is_made():
    with pytest.raises(DataError, match=r"data.name: unknown dataset 'digitz'. Did you mean 'digits'\?"):
        Experiment.from_dict({**TINY, "data": {"name": "digitz"}})
    raw = {**TINY, "data": {"name": "digits"}, "scenario": {"classes_per_task": 3}}
    with pytest.raises(ConfigError, match=r"classes_per_task: 3 does not divide the 7 classes left .* has 10"):
        Experiment.from_dict(raw)
    with pytest.raises(ConfigError, match=r"initial_classes: 12 is more than the 10 classes"):
        Experiment.from_dict(raw, overrides=["scenario.initial_classes=12"])
    Experiment.from_dict(raw, overrides=["scenario.initial_classes=4"])  # 4 + 2 × 3: fine


def test_the_known_class_counts_are_the_datasets_own(digits):
    from cilearn.data.registry import known_classes

    assert known_classes("digits") == digits.num_classes == 10
    assert known_classes("image_folder") is None
    for name in ("mnist", "fashion_mnist", "cifar10_jpeg"):
        try:
            splits = load_dataset(name)
        except DataError:
            continue  # not in $CILEARN_DATA here
        assert known_classes(name) == splits.num_classes


def test_running_the_same_script_twice_makes_a_new_version_folder(tmp_path):
    experiment = Experiment.from_dict({**TINY, "data": {"name": "digits"}})
    first = experiment.run(root=tmp_path / "runs")
    second = experiment.run(root=tmp_path / "runs")
    assert (first.path, second.path) == (tmp_path / "runs/version_0", tmp_path / "runs/version_1")
    np.testing.assert_array_equal(first.accuracy_matrix, second.accuracy_matrix)
    (tmp_path / "runs/version_7").mkdir()  # one more than the highest, as Lightning counts
    assert experiment.run(root=tmp_path / "runs").path == tmp_path / "runs/version_8"
    with pytest.raises(ConfigError, match=r"already exists .* run\(root='.*version_0'\) writes a new version_N"):
        experiment.run(tmp_path / "runs/version_0")
    with pytest.raises(ConfigError, match="not both"):
        experiment.run(tmp_path / "a", root=tmp_path / "b")
    with pytest.raises(ConfigError, match="data.options: unknown key 'nope'"):  # found when parsed: no empty folder
        Experiment.from_dict({**TINY, "data": {"name": "digits", "options": {"nope": 1}}})
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0", "version_1", "version_7",
                                                                     "version_8"]


def test_results_plot_report_and_a_sweep_folder(tmp_path):
    from matplotlib.figure import Figure

    raw = {**{k: v for k, v in TINY.items() if k != "method"}, "data": {"name": "digits"}, "seeds": [0, 1],
           "methods": ["finetune", "joint"]}
    result = Experiment.from_dict(raw).run(tmp_path / "exp")
    figure = result.plot()
    assert isinstance(figure, Figure)
    [ax] = figure.axes
    assert len(ax.lines) == 2 and len(ax.collections) == 2  # a mean curve and a ± std band per method
    joint = [run for run in result if run.label == "joint"]
    curves = np.stack([run.seen_accuracy for run in joint])
    line = next(curve for curve in ax.lines if curve.get_label().startswith("joint"))
    np.testing.assert_allclose(line.get_ydata(), 100 * curves.mean(axis=0))
    np.testing.assert_array_equal(line.get_xdata(), [2, 4])  # classes seen
    band = next(c for c in ax.collections if np.allclose(c.get_facecolor()[0][:3],
                                                          matplotlib_rgb(line.get_color())))
    lows = band.get_paths()[0].vertices[:, 1]
    assert np.isclose(lows.min(), (100 * (curves.mean(axis=0) - curves.std(axis=0, ddof=1))).min())
    html = result.report(tmp_path / "report")
    assert html == tmp_path / "report/report.html" and "Accuracy vs number of classes" in html.read_text()
    assert cilearn.make_report is not None and cilearn.ReportOptions is not None

    # a sweep folder: sweep.yaml lists its runs; load_result reads every finished one
    sweep = tmp_path / "sweep"
    for name in ("a/seed0", "b/seed0"):
        (sweep / name).parent.mkdir(parents=True, exist_ok=True)
        import shutil
        shutil.copytree(tmp_path / "exp" / ("finetune/seed0" if name[0] == "a" else "joint/seed0"), sweep / name)
    (sweep / "sweep.yaml").write_text("name: s\nruns:\n- {name: a/seed0, point: a}\n- {name: b/seed0, point: b}\n"
                                      "- {name: c/seed0, point: c}\n")
    loaded = cilearn.load_result(sweep)
    assert loaded.labels == ["a/seed0", "b/seed0"]  # c never finished a task: left out
    assert [run.metrics for run in loaded] == [result["finetune/seed0"].metrics, result["joint/seed0"].metrics]


def matplotlib_rgb(color) -> tuple:
    from matplotlib.colors import to_rgb

    return to_rgb(color)


def test_errors_are_exported_at_the_top():
    from cilearn import errors

    for name in ("CilearnError", "ConfigError", "DataError", "CheckpointError", "TrainingDiverged"):
        assert getattr(cilearn, name) is getattr(errors, name) and name in cilearn.__all__
