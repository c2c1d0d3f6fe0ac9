"""Domain-incremental streams: rotated/permuted digits, CIFAR-100 superclasses, CLEAR-style buckets."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cilearn.cli import main
from cilearn.config import ScenarioConfig
from cilearn.data import load_dataset
from cilearn.data.clear import load_clear, natural_key
from cilearn.errors import ConfigError, DataError
from cilearn.scenarios import build_scenario
from cilearn.streams import permute_pixels, pixel_permutations, rotate_images


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def stream(options: dict, splits, seed: int = 0, **kw):
    return build_scenario(ScenarioConfig(type="domain_incremental", options=options, **kw), splits, seed)


def check_domain_structure(scenario, num_classes: int) -> None:
    assert scenario.kind == "domain_incremental"
    everything = list(range(num_classes))
    for task in scenario:
        assert task.seen_classes == everything
        assert task.new_classes == (everything if task.index == 0 else [])
        assert not task.task_incremental


# --- rotated / permuted ----------------------------------------------------------------------------------
def test_rotate_images_matches_rot90_and_identity() -> None:
    x = np.random.RandomState(0).randint(0, 256, (3, 8, 8, 1)).astype(np.uint8)
    assert np.array_equal(rotate_images(x, 0), x) and np.array_equal(rotate_images(x, 360), x)
    assert np.array_equal(rotate_images(x, 90), np.rot90(x, 1, axes=(1, 2)))  # counter-clockwise
    assert np.array_equal(rotate_images(x, 180), np.rot90(x, 2, axes=(1, 2)))


def test_rotated_stream_shapes_labels_determinism(digits) -> None:
    scenario = stream({"stream": "rotated", "num_tasks": 3, "angles": [0, 45, 90]}, digits)
    again = stream({"stream": "rotated", "num_tasks": 3, "angles": [0, 45, 90]}, digits, seed=5)
    assert len(scenario) == 3
    check_domain_structure(scenario, 10)
    assert np.array_equal(scenario[0].train.images, digits.train.images)
    for task, twin in zip(scenario, again):
        assert task.train.images.shape == digits.train.images.shape
        assert task.test.images.shape == digits.test.images.shape
        assert np.array_equal(task.train.labels, digits.train.labels)
        assert np.array_equal(task.test.labels, digits.test.labels)
        assert np.array_equal(task.train.images, twin.train.images)  # a rotation has no randomness
    assert np.array_equal(scenario[2].test.images, np.rot90(digits.test.images, 1, axes=(1, 2)))
    assert not np.array_equal(scenario[1].train.images, scenario[0].train.images)
    default = stream({"stream": "rotated", "num_tasks": 4}, digits)
    assert [t.name for t in default] == ["rotated 0°", "rotated 45°", "rotated 90°", "rotated 135°"]


def test_rotated_train_samples_subsets(digits) -> None:
    scenario = stream({"stream": "rotated", "num_tasks": 3, "angles": [0, 0, 0], "train_samples": 100}, digits)
    assert [len(t.train) for t in scenario] == [100, 100, 100]
    assert [len(t.test) for t in scenario] == [len(digits.test)] * 3
    # Disjoint subsets of the training set while the data lasts.
    rows = [{r.tobytes() + bytes([l]) for r, l in zip(t.train.images, t.train.labels)} for t in scenario]
    assert not (rows[0] & rows[1]) and not (rows[1] & rows[2])


def test_permuted_stream(digits) -> None:
    scenario = stream({"stream": "permuted", "num_tasks": 3}, digits, seed=1)
    again = stream({"stream": "permuted", "num_tasks": 3}, digits, seed=1)
    other = stream({"stream": "permuted", "num_tasks": 3}, digits, seed=2)
    check_domain_structure(scenario, 10)
    assert np.array_equal(scenario[0].train.images, digits.train.images)  # identity first
    perms = pixel_permutations(3, 64, 1)
    for t in range(3):
        assert np.array_equal(scenario[t].train.labels, digits.train.labels)
        assert np.array_equal(scenario[t].train.images, again[t].train.images)
        assert np.array_equal(scenario[t].test.images, permute_pixels(digits.test.images, perms[t]))
        # Same pixels, other places.
        assert np.array_equal(np.sort(scenario[t].train.images.reshape(len(digits.train), -1), 1),
                              np.sort(digits.train.images.reshape(len(digits.train), -1), 1))
    assert not np.array_equal(scenario[1].train.images, scenario[2].train.images)
    assert not np.array_equal(scenario[1].train.images, other[1].train.images)
    shuffled = stream({"stream": "permuted", "num_tasks": 2, "identity_first": False}, digits, seed=1)
    assert not np.array_equal(shuffled[0].train.images, digits.train.images)


def test_stream_option_errors(digits) -> None:
    with pytest.raises(ConfigError, match="options.stream: required"):
        stream({}, digits)
    with pytest.raises(ConfigError, match="Did you mean 'rotated'"):
        stream({"stream": "rotate"}, digits)
    with pytest.raises(ConfigError, match="unknown key 'angle'"):
        stream({"stream": "rotated", "angle": [1]}, digits)
    with pytest.raises(ConfigError, match="superclass"):
        stream({"stream": "superclass"}, digits)
    with pytest.raises(ConfigError, match="buckets"):
        stream({"stream": "buckets"}, digits)
    with pytest.raises(ConfigError, match="classes_per_task"):
        stream({"stream": "permuted"}, digits, classes_per_task=2)
    assert len(stream({"stream": "permuted", "num_tasks": 4}, digits, num_tasks=2)) == 2


# --- superclass ------------------------------------------------------------------------------------------
def write_cifar100(root: Path, rng: np.random.Generator, per_class: int = 2) -> None:
    """Official ``cifar-100-python`` pickle layout; fine class f belongs to superclass f % 20."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, count in (("train", per_class), ("test", 1)):
        fine = np.repeat(np.arange(100), count)
        rng.shuffle(fine)
        with open(folder / split, "wb") as f:
            pickle.dump({b"fine_labels": fine.tolist(), b"coarse_labels": (fine % 20).tolist(),
                         b"data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)}, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]}, f, protocol=2)


def test_superclass_stream_with_cifar100_fixture(tmp_path: Path) -> None:
    write_cifar100(tmp_path, np.random.default_rng(0))
    splits = load_dataset("cifar100", root=tmp_path)
    scenario = stream({"stream": "superclass"}, splits)
    assert len(scenario) == 5 and scenario.class_names == [f"coarse_{i}" for i in range(20)]
    check_domain_structure(scenario, 20)
    for t, task in enumerate(scenario):
        assert len(task.train) == 40 and len(task.test) == 20
        assert sorted(task.train.labels.tolist()) == sorted(list(range(20)) * 2)
        assert task.train.class_names == scenario.class_names
        # Experience t holds fine class c + 20 t of superclass c (fine classes in label order).
        fine = {splits.train.images[i].tobytes(): int(splits.train.labels[i]) for i in range(len(splits.train))}
        for image, coarse in zip(task.train.images, task.train.labels):
            assert fine[image.tobytes()] == coarse + 20 * t
    seeded = stream({"stream": "superclass", "fine_order": "seed", "num_tasks": 2}, splits, seed=3)
    assert len(seeded) == 2 and len(seeded[0].train) == 40
    with pytest.raises(ConfigError, match="fine classes in every superclass"):
        stream({"stream": "superclass", "num_tasks": 6}, splits)


# --- CLEAR-style buckets ---------------------------------------------------------------------------------
def write_clear(root: Path, buckets=("1", "2", "10"), classes=("bus", "cat"), per_class: int = 5,
                test_folder: bool = False, size: int = 8, rng=None) -> dict:
    """Bucket b's images are filled with value 10·(index of b) + class index (to recognise them)."""
    written = {}
    for b_index, bucket in enumerate(buckets):
        for c_index, name in enumerate(classes):
            splits = [("", per_class)] + ([("test", 2)] if test_folder else [])
            for split, count in splits:
                folder = root / bucket / split / name if split else root / bucket / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    value = 10 * b_index + c_index + (100 if split else 0)
                    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(folder / f"{i}.png")
                    written.setdefault((bucket, split or "train"), []).append(value)
    return written


def test_natural_sort() -> None:
    assert sorted(["10", "2", "1", "year_2010", "year_2009"], key=natural_key) == [
        "1", "2", "10", "year_2009", "year_2010"]


def test_clear_reader_with_test_folders(tmp_path: Path) -> None:
    write_clear(tmp_path / "clear", test_folder=True)
    ds = load_dataset("clear", path=str(tmp_path / "clear"))
    assert ds.bucket_names == ["1", "2", "10"] and ds.train.class_names == ["bus", "cat"]
    assert len(ds.train) == 3 * 2 * 5 and len(ds.test) == 3 * 2 * 2
    # Bucket b, class c: value 10 b + c (train) or 100 + 10 b + c (test folder).
    assert np.array_equal(ds.train.images[:, 0, 0, 0], 10 * ds.train_buckets + ds.train.labels)
    assert np.array_equal(ds.test.images[:, 0, 0, 0], 100 + 10 * ds.test_buckets + ds.test.labels)
    scenario = stream({"stream": "buckets"}, ds)
    assert [t.name for t in scenario] == ["bucket 1", "bucket 2", "bucket 10"]
    check_domain_structure(scenario, 2)
    assert np.all(scenario[2].train.images[:, 0, 0, 0] // 10 == 2)


def test_clear_reader_split_without_test_folders(tmp_path: Path) -> None:
    write_clear(tmp_path / "clear", per_class=10)
    ds = load_clear(tmp_path / "clear", test_fraction=0.3, seed=0)
    again = load_clear(tmp_path / "clear", test_fraction=0.3, seed=0)
    other = load_clear(tmp_path / "clear", test_fraction=0.3, seed=1)
    assert len(ds.train) == 3 * 2 * 7 and len(ds.test) == 3 * 2 * 3  # stratified: 3 of 10 per class and bucket
    for b in range(3):
        assert np.bincount(ds.test.labels[ds.test_buckets == b]).tolist() == [3, 3]
    assert np.array_equal(ds.test.images, again.test.images)
    # Images of one bucket and class are identical here, so compare which files went to test via order.
    assert np.array_equal(ds.train.images[:, 0, 0, 0], 10 * ds.train_buckets + ds.train.labels)
    assert other.test.images.shape == ds.test.images.shape
    scenario = stream({"stream": "buckets", "num_tasks": 2}, ds)
    assert len(scenario) == 2 and len(scenario[1].test) == 6


def test_clear_reader_parallel_test_root_and_errors(tmp_path: Path) -> None:
    write_clear(tmp_path / "train", per_class=3)
    write_clear(tmp_path / "test", per_class=2)
    ds = load_clear(tmp_path / "train", test_path=tmp_path / "test")
    assert len(ds.train) == 18 and len(ds.test) == 12
    write_clear(tmp_path / "odd", buckets=("1",), size=8)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "odd" / "1" / "bus" / "big.png")
    with pytest.raises(DataError, match="image_size"):
        load_clear(tmp_path / "odd")
    assert load_clear(tmp_path / "odd", image_size=4).train.images.shape[1:] == (4, 4, 3)
    with pytest.raises(DataError, match="not found"):
        load_clear(tmp_path / "missing")
    (tmp_path / "empty" / "1" / "bus").mkdir(parents=True)
    with pytest.raises(DataError, match="no .png"):
        load_clear(tmp_path / "empty")


# --- through the CLI -------------------------------------------------------------------------------------
def test_cli_domain_stream_run(tmp_path: Path) -> None:
    write_clear(tmp_path / "clear", per_class=12, test_folder=True)
    config = tmp_path / "stream.yaml"
    config.write_text(f"""
data: {{name: clear, options: {{path: {tmp_path / 'clear'}}}}}
scenario: {{type: domain_incremental, options: {{stream: buckets}}}}
model: {{name: mlp, options: {{hidden: [16]}}}}
methods: [{{name: finetune}}, {{name: replay, fraction: 0.25, metric: entropy}}, {{name: iid}}]
train: {{epochs: 1, batch_size: 8, lr: 0.05, scheduler: constant, progress: false, augment: none}}
""")
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 0
    for label in ("finetune", "replay", "iid"):
        metrics = json.loads((out / label / "metrics.json").read_text())
        assert metrics["complete"] and metrics["num_tasks"] == 3
        matrix = metrics["accuracy_matrix"]
        assert len(matrix) == 3 and all(len(row) == 3 and None not in row for row in matrix)
        assert metrics["average_accuracy_all_experiences"] == pytest.approx([np.mean(r) for r in matrix])
        assert metrics["classes_per_step"] == [2, 2, 2]


# --- split (Domain-IL split MNIST) ------------------------------------------------------------------------
def test_split_stream_labels_each_digit_as_van_de_ven_and_tolias_domain_scenario(digits) -> None:
    """Their data.py for scenario "domain": digit y becomes perm[y] (perm: numpy's permutation after
    np.random.seed(seed)), task k holds the relabelled classes 2k and 2k + 1, and its target is perm[y] mod 2."""
    seed = 3
    scenario = stream({"stream": "split", "classes_per_task": 2, "class_order": "vandeven"}, digits, seed=seed)
    check_domain_structure(scenario, 2)
    np.random.seed(seed)
    perm = np.random.permutation(list(range(10)))
    for k, task in enumerate(scenario):
        for part, data in ((task.train, digits.train), (task.test, digits.test)):
            kept = (perm[data.labels] // 2) == k
            assert np.array_equal(part.images, data.images[kept])
            assert np.array_equal(part.labels, perm[data.labels[kept]] % 2)
    assert len(scenario) == 5 and sum(len(t.test) for t in scenario) == len(digits.test)
    three = stream({"stream": "split", "classes_per_task": 3}, digits)  # sorted order, the last digit left out
    assert len(three) == 3 and sorted(set(three[2].train.labels.tolist())) == [0, 1, 2]
    with pytest.raises(ConfigError, match="need 22 classes"):
        stream({"stream": "split", "classes_per_task": 2, "num_tasks": 11}, digits)
