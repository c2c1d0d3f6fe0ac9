import numpy as np
import pytest
from helpers import make_run

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


def test_class_order_from_seed_and_class_order_seed():
    assert resolve_class_order("seed", 10, 3) == resolve_class_order("seed", 10, 3)
    assert resolve_class_order("seed", 10, 3) != resolve_class_order("seed", 10, 4)
    # class_order_seed fixes the order whatever the run seed; it is numpy's permutation of that seed
    fixed = resolve_class_order("seed", 10, 3, order_seed=7)
    assert fixed == resolve_class_order("seed", 10, 4, order_seed=7) == resolve_class_order("seed", 10, 7)
    assert fixed == list(np.random.RandomState(7).permutation(10))


def test_named_orders_pycil_and_icarl_script():
    # PyCIL draws np.random.seed(1993); np.random.permutation(100) (utils/data_manager.py): 68, 56, 78, 8, 23, ...
    assert resolve_class_order("pycil", 100, 0)[:5] == [68, 56, 78, 8, 23]
    assert resolve_class_order("pycil", 100, 0) == resolve_class_order("seed", 100, 0, order_seed=1993)
    # the original iCaRL script's first order, which PODNet publishes as "taken from original iCaRL implementation"
    icarl = resolve_class_order("icarl_script", 100, 5)
    assert icarl[:10] == [87, 0, 52, 58, 44, 91, 68, 97, 51, 15]
    assert sorted(icarl) == list(range(100))
    with pytest.raises(ConfigError, match="needs 100 classes"):
        resolve_class_order("icarl_script", 10, 0)
    # the old name 'icarl' meant PyCIL's order: refused with what to use instead, never silently re-meant
    with pytest.raises(ConfigError, match="'icarl' is no longer accepted.*'pycil'.*'icarl_script'"):
        resolve_class_order("icarl", 100, 0)


def test_config_class_order_seed(tmp_path):
    from cilearn.config import expand_runs, parse_config
    from cilearn.scenarios import build_scenario

    base = {"data": {"name": "toy"}, "model": {"name": "mlp"}, "method": {"name": "finetune"},
            "scenario": {"classes_per_task": 2}, "seeds": [0, 1]}
    orders = [build_scenario(parse_config(r).scenario, toy_splits(), r["seed"]).class_order for r in expand_runs(base)]
    assert orders[0] != orders[1]  # default: each seed draws its own order (order and init vary together)
    fixed = dict(base, scenario={"classes_per_task": 2, "class_order_seed": 1993})
    runs = [parse_config(r) for r in expand_runs(fixed)]
    assert [r.seed for r in runs] == [0, 1]
    orders = [build_scenario(r.scenario, toy_splits(), r.seed).class_order for r in runs]
    assert orders[0] == orders[1] == list(np.random.RandomState(1993).permutation(10))
    with pytest.raises(ConfigError, match="class_order_seed: only used with class_order: seed"):
        parse_config(expand_runs(dict(base, scenario={"classes_per_task": 2, "class_order": "sorted",
                                                      "class_order_seed": 3}))[0])


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


def test_vandeven_order_reproduces_their_relabelling():
    """Their data.py: np.random.seed(seed); perm = np.random.permutation(list(range(10))); digit y gets label
    perm[y]; task k holds labels 2k, 2k+1.  Seed 1 by hand: perm = [2 9 6 4 0 3 1 7 8 5], so labels 0, 1 are
    digits 4 and 6 (perm[4] = 0, perm[6] = 1), labels 2, 3 digits 0 and 5, ..."""
    np.random.seed(1)
    perm = np.random.permutation(list(range(10)))
    assert perm.tolist() == [2, 9, 6, 4, 0, 3, 1, 7, 8, 5]
    order = resolve_class_order("vandeven", 10, seed=1)
    assert order[:4] == [4, 6, 0, 5]
    assert all(perm[digit] == label for label, digit in enumerate(order))  # digit order[k] is their label k
    for seed in (2, 3, 17):
        np.random.seed(seed)
        perm = np.random.permutation(list(range(10)))
        assert [int(perm[d]) for d in resolve_class_order("vandeven", 10, seed=seed)] == list(range(10))
    assert resolve_class_order("vandeven", 10, seed=0) == list(range(10))  # their seed-0 "exception": no permutation


@pytest.mark.parametrize("method", [{"name": "icarl", "memory_size": 40}, {"name": "der", "buffer_size": 40}])
def test_stopping_after_n_tasks_runs_the_whole_runs_first_tasks(tmp_path, method):
    """scenario.num_tasks stops early; a head with every class's output from the start keeps the outputs of the
    tasks left out, so the tasks that ran are the whole run's, to the digit (a 4-output head would have averaged
    iCaRL's BCE over 4 outputs instead of 10 and drawn another initialisation)."""
    short = make_run(tmp_path / "short", method, num_tasks=2)  # set up and run one after the other: setup seeds
    assert short.scenario.cut_task_sizes == [2, 2, 2]
    short_matrix = short.execute()["accuracy_matrix"]
    assert short.model.num_classes == 10
    whole = make_run(tmp_path / "whole", method, num_tasks=5)
    assert whole.scenario.cut_task_sizes == []
    whole_matrix = whole.execute()["accuracy_matrix"]
    assert [row[:2] for row in whole_matrix[:2]] == [row[:2] for row in short_matrix]
