"""Experience replay: selection metrics, buffer sizes, buffer mixing, state; the IID-stream baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cilearn.augment import BatchAugment
from cilearn.config import ScenarioConfig
from cilearn.data import load_dataset
from cilearn.engine.evaluate import Inference
from cilearn.errors import ConfigError
from cilearn.methods import MethodContext, method_class, method_options
from cilearn.methods.replay import buffer_size, select, selection_metric
from cilearn.models import build_model
from cilearn.scenarios import build_scenario, class_incremental


def numpy_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def logits_labels():
    rng = np.random.RandomState(0)
    return rng.randn(50, 6) * 3, rng.randint(0, 6, 50)


def test_selection_metrics_match_numpy(logits_labels) -> None:
    z, y = logits_labels
    zt, yt = torch.tensor(z), torch.tensor(y)
    p = numpy_softmax(z)
    one_hot = np.eye(6)[y]
    assert np.allclose(selection_metric(zt, yt, "error_l2").numpy(), np.linalg.norm(p - one_hot, axis=1))
    assert np.allclose(selection_metric(zt, yt, "entropy").numpy(), -(p * np.log(p)).sum(1))
    others = z.copy()
    others[np.arange(50), y] = -np.inf
    margin = z[np.arange(50), y] - others.max(1)
    assert np.allclose(selection_metric(zt, yt, "margin").numpy(), margin)
    assert ((margin < 0) == (z.argmax(1) != y)).all()  # negative exactly when misclassified


def test_selection_metric_with_task_mask() -> None:
    z = torch.tensor([[5.0, 0.0, 9.0, 1.0]])
    mask = torch.tensor([[True, True, False, False]])  # the sample's task owns outputs 0 and 1
    assert selection_metric(z, torch.tensor([0]), "margin", mask).item() == pytest.approx(5.0)
    assert selection_metric(z, torch.tensor([0]), "entropy", mask).item() > 0


def test_select_hardest_easiest_and_random(logits_labels) -> None:
    values = np.array([0.5, 2.0, -1.0, 3.0, 0.0])
    assert select(values, 2, "error_l2", "hardest").tolist() == [1, 3]
    assert select(values, 2, "entropy", "easiest").tolist() == [2, 4]
    assert select(values, 2, "margin", "hardest").tolist() == [2, 4]  # smallest margins
    assert select(values, 2, "margin", "easiest").tolist() == [1, 3]
    picked = select(values, 3, "random", rng=np.random.RandomState(1))
    assert len(picked) == 3 and len(set(picked.tolist())) == 3
    assert np.array_equal(picked, select(values, 3, "random", rng=np.random.RandomState(1)))
    assert select(values, 10, "error_l2").tolist() == [0, 1, 2, 3, 4]


def test_buffer_size_fraction_and_count() -> None:
    assert buffer_size(1000, 0.05, None) == 50
    assert buffer_size(1000, 0.01, None) == 10
    assert buffer_size(1000, None, None) == 50  # default 5%
    assert buffer_size(10, 0.01, None) == 1     # at least one sample
    assert buffer_size(1000, None, 37) == 37
    assert buffer_size(20, None, 37) == 20
    assert buffer_size(1000, 0.0, None) == 0


def make_method(name: str, scenario, **options):
    model = build_model("mlp", 1, 8, hidden=[32])
    model.add_classes(len(scenario[0].new_classes))
    augment = BatchAugment(scenario.mean, scenario.std)
    device = torch.device("cpu")
    context = MethodContext(scenario=scenario, device=device, seed=0,
                            infer=Inference(model, augment, device, 512), augment=augment)
    method = method_class(name)(method_options({"name": name, **options}), model, context)
    method.check(scenario)
    return method


@pytest.fixture(scope="module")
def rotated():
    splits = load_dataset("digits")
    cfg = ScenarioConfig(type="domain_incremental",
                         options={"stream": "rotated", "angles": [0, 90, 180], "train_samples": 200})
    return build_scenario(cfg, splits, 0)


@pytest.mark.parametrize("metric", ["error_l2", "entropy", "margin", "random"])
def test_buffer_selected_by_metric_and_mixed_into_later_training(rotated, metric) -> None:
    method = make_method("replay", rotated, fraction=0.05, metric=metric)
    first = rotated[0]
    method.begin_task(first)
    assert method.training_data(first) is first.train  # nothing to replay yet
    method.end_task(first, first.train)
    assert method.memory_size == 10
    if metric != "random":  # the kept samples are the 10 hardest by the metric, computed directly
        _, logits = method.context.infer(first.train.images)
        values = selection_metric(logits, torch.as_tensor(first.train.labels), metric).numpy()
        hard = np.sort(np.argsort(values if metric == "margin" else -values, kind="stable")[:10])
        assert np.array_equal(method.buffer_images, first.train.images[hard])
        assert np.array_equal(method.buffer_labels, first.train.labels[hard])
    second = rotated[1]
    method.begin_task(second)
    data = method.training_data(second)
    assert len(data) == len(second.train) + 10
    assert np.array_equal(data.images[len(second.train):], method.buffer_images)
    method.end_task(second, data)
    assert method.memory_size == 20 and method.buffer_task.tolist() == [0] * 10 + [1] * 10


def test_easiest_differs_from_hardest_and_count_option(rotated) -> None:
    hard = make_method("replay", rotated, per_experience=7, metric="entropy")
    easy = make_method("replay", rotated, per_experience=7, metric="entropy", keep="easiest")
    easy.model.load_state_dict(hard.model.state_dict())
    for method in (hard, easy):
        method.begin_task(rotated[0])
        method.end_task(rotated[0], rotated[0].train)
    assert hard.memory_size == easy.memory_size == 7
    entropy = lambda m: selection_metric(m.context.infer(m.buffer_images)[1],  # noqa: E731
                                         torch.as_tensor(m.buffer_labels), "entropy")
    assert entropy(hard).min() >= entropy(easy).max()


def test_replay_state_dict_roundtrip(rotated) -> None:
    method = make_method("replay", rotated, fraction=0.05)
    method.begin_task(rotated[0])
    method.end_task(rotated[0], rotated[0].train)
    state = method.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = make_method("replay", rotated, fraction=0.05)
    fresh.load_state_dict(state)
    assert np.array_equal(fresh.buffer_images, method.buffer_images)
    assert np.array_equal(fresh.buffer_labels, method.buffer_labels)
    empty = make_method("replay", rotated)
    empty.load_state_dict(make_method("replay", rotated).state_dict())
    assert empty.buffer() is None


def test_replay_options_checked(rotated) -> None:
    with pytest.raises(ConfigError, match="not several"):
        make_method("replay", rotated, fraction=0.1, per_experience=5)
    with pytest.raises(ConfigError):
        method_options({"name": "replay", "metric": "loss"})


def test_iid_baseline_partitions_the_pooled_stream(rotated) -> None:
    method = make_method("iid", rotated)
    parts = [method.training_data(task) for task in rotated]
    assert [len(p) for p in parts] == [len(t.train) for t in rotated]
    pooled = np.concatenate([t.train.images for t in rotated]).reshape(600, -1)
    mine = np.concatenate([p.images for p in parts]).reshape(600, -1)
    assert sorted(map(bytes, pooled)) == sorted(map(bytes, mine))  # every sample exactly once
    # Each step mixes the experiences (rotations), unlike the stream itself.
    sources = {bytes(r): i for i, t in enumerate(rotated) for r in t.train.images.reshape(200, -1)}
    assert len({sources[bytes(r)] for r in parts[0].images.reshape(200, -1)}) == 3
    class_split = class_incremental(load_dataset("digits"), 2, class_order="sorted")
    with pytest.raises(ConfigError, match="joint"):
        make_method("iid", class_split)


def test_collage_buffer_smaller_than_a_tasks_classes_is_refused(tmp_path) -> None:
    """As iCaRL refuses a memory smaller than the classes: one collage per experience for two classes would
    leave a class without any."""
    from cilearn.experiment import Experiment

    raw = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": 2},
           "model": {"name": "mlp", "options": {"hidden": [16]}},
           "method": {"name": "replay", "exemplars": "collage", "per_experience": 1},
           "train": {"epochs": 1, "progress": False}, "output": {"save_features": False}}
    with pytest.raises(ConfigError, match=r"collage keeps 1 collage of task 1, which brings 2 classes"):
        Experiment.from_dict(raw).run(tmp_path / "small")
    assert not (tmp_path / "small").exists()
    raw["method"]["per_experience"] = 2  # one collage per class: accepted
    assert Experiment.from_dict(raw).run(tmp_path / "enough").complete


def test_shared_memory_with_balanced_repeat_is_hsus_naive_rehearsal() -> None:
    """Hsu et al.'s Naive_Rehearsal (agents/exp_replay.py) with memory_size 100 on three tasks of 288, 288 and
    290 samples: after task t each task keeps the first 100 // t of its random permutation (torch.randperm
    there, the seeded permutation here), and the next task trains on its data plus the memory repeated
    len(task) // 100 times."""
    split = class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=3)
    assert [len(t.train) for t in split] == [288, 288, 290]
    method = make_method("replay", split, memory_total=100, repeat="balanced", metric="random")
    perm = [np.random.RandomState(t).permutation(len(split[t].train)) for t in range(3)]  # seed 0 * 1000 + t
    held = lambda t, n: split[t].train.images[perm[t][:n]]  # noqa: E731
    method.begin_task(split[0])
    assert method.training_data(split[0]) is split[0].train
    method.end_task(split[0], split[0].train)
    assert np.array_equal(method.buffer_images, held(0, 100))
    method.begin_task(split[1])
    data = method.training_data(split[1])
    assert len(data) == 288 + 2 * 100  # 288 // 100 = 2 copies: 200 memory samples against 288 new ones
    assert np.array_equal(data.images[288:388], held(0, 100)) and np.array_equal(data.images[388:], held(0, 100))
    method.end_task(split[1], data)
    assert method.buffer_task.tolist() == [0] * 50 + [1] * 50  # 100 // 2 each: task 1's share halves to a prefix
    assert np.array_equal(method.buffer_images, np.concatenate([held(0, 50), held(1, 50)]))
    method.begin_task(split[2])
    assert len(method.training_data(split[2])) == 290 + 2 * 100
    method.end_task(split[2], method.training_data(split[2]))
    assert method.buffer_task.tolist() == [0] * 33 + [1] * 33 + [2] * 33  # 100 // 3 = 33 each
    assert np.array_equal(method.buffer_images, np.concatenate([held(0, 33), held(1, 33), held(2, 33)]))
    once = make_method("replay", split, memory_total=100, metric="random")  # repeat: once (default)
    once.begin_task(split[0])
    once.end_task(split[0], split[0].train)
    assert len(once.training_data(split[1])) == 288 + 100


def test_shared_memory_options_checked(rotated) -> None:
    with pytest.raises(ConfigError, match="give method.memory_total"):
        make_method("replay", rotated, per_experience=5, repeat="balanced")
    with pytest.raises(ConfigError, match="not several"):
        make_method("replay", rotated, per_experience=5, memory_total=100)
