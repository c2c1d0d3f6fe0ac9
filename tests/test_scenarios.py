import numpy as np
import pytest

from cilearn.data import DatasetSplits, ImageData, load_dataset
from cilearn.errors import ConfigError
from cilearn.scenarios import channel_stats, class_incremental, resolve_class_order


def toy_splits(num_classes=10, per_class=6, test_per_class=2) -> DatasetSplits:
    rng = np.random.RandomState(0)

    def make(n):
        labels = np.repeat(np.arange(num_classes), n)
        rng.shuffle(labels)
        images = np.zeros((len(labels), 4, 4, 1), np.uint8)
        images[:, 0, 0, 0] = labels  # each image remembers its original label
        return ImageData(images, labels.astype(np.int64), [f"c{i}" for i in range(num_classes)])

    return DatasetSplits(name="toy", display_name="Toy", train=make(per_class), test=make(test_per_class))


def test_class_incremental_split_remaps_labels_and_partitions_data():
    splits = toy_splits()
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    scenario = class_incremental(splits, classes_per_task=2, class_order=order)
    assert len(scenario) == 5
    assert scenario.class_order == order
    assert scenario.class_names == [f"c{c}" for c in order]
    for task in scenario:
        assert task.new_classes == [2 * task.index, 2 * task.index + 1]
        assert task.seen_classes == list(range(2 * task.index + 2))
        assert sorted(set(task.train.labels)) == task.new_classes
        assert len(task.train) == 2 * 6 and len(task.test) == 2 * 2
        # the remapped label k must hold images of original class order[k]
        original = task.train.images[:, 0, 0, 0]
        assert np.array_equal(original, np.asarray(order)[task.train.labels])
    assert sum(len(t.train) for t in scenario) == len(splits.train)


def test_initial_classes_b50_style_and_slicing():
    scenario = class_incremental(toy_splits(), classes_per_task=2, initial_classes=4, class_order="sorted")
    assert [len(t.new_classes) for t in scenario] == [4, 2, 2, 2]
    assert [t.index for t in scenario[1:3]] == [1, 2]
    assert scenario[-1].seen_classes == list(range(10))
    assert list(scenario.task_of_class()) == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_class_order_from_seed_and_icarl():
    assert resolve_class_order("seed", 10, 3) == resolve_class_order("seed", 10, 3)
    assert resolve_class_order("seed", 10, 3) != resolve_class_order("seed", 10, 4)
    # iCaRL's CIFAR-100 order is numpy's permutation with seed 1993; it starts 68, 56, 78, 8, 23.
    assert resolve_class_order("icarl", 100, 0)[:5] == [68, 56, 78, 8, 23]


@pytest.mark.parametrize("kwargs, message", [
    ({"classes_per_task": 3}, "does not divide"),
    ({"classes_per_task": 2, "initial_classes": 11}, "more than the 10 classes"),
    ({"classes_per_task": 2, "num_tasks": 6}, "more than the 5 tasks"),
    ({"classes_per_task": 2, "class_order": [0, 1, 2]}, "label 3 is missing"),
    ({"classes_per_task": 2, "class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]}, "label 8 appears twice"),
    ({"classes_per_task": 2, "class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]}, "label 10 does not exist"),
    ({"classes_per_task": 2, "class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]}, "label 9 appears twice"),
    ({"classes_per_task": 2, "class_order": "shuffled"}, "unknown order"),
])
def test_bad_splits_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        class_incremental(toy_splits(), **kwargs)


def test_a_task_without_training_images_is_named_from_1():
    splits = toy_splits(num_classes=4)
    keep = splits.train.labels != 2  # the third task (classes_per_task 1, sorted order) loses its images
    splits.train = splits.train.subset(keep)
    with pytest.raises(ConfigError, match=r"^task 3 has no training images"):
        class_incremental(splits, classes_per_task=1, class_order="sorted")


def test_task_incremental_flag_and_channel_stats():
    scenario = class_incremental(load_dataset("digits"), classes_per_task=2, task_incremental=True)
    assert scenario.task_incremental and all(t.task_incremental for t in scenario)
    images = load_dataset("digits").train.images
    mean, std = channel_stats(images)
    assert mean[0] == pytest.approx(images.mean() / 255, rel=1e-9)
    assert std[0] == pytest.approx(images.std() / 255, rel=1e-6)
