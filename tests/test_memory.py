"""Exemplar memory: herding against a brute-force reference, and iCaRL's memory invariants in a real run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cilearn.config import parse_config
from cilearn.data import ImageData
from cilearn.methods.parts.memory import ExemplarMemory, herding, random_selection
from cilearn.engine.runner import Run
from helpers import make_run


def brute_force_herding(features: np.ndarray, m: int) -> list[int]:
    """iCaRL's herding written as plainly as possible: one candidate at a time."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    mu = f.mean(0)
    chosen: list[int] = []
    for k in range(1, min(m, len(f)) + 1):
        best, best_distance = None, np.inf
        for i in range(len(f)):
            if i in chosen:
                continue
            candidate = (f[chosen].sum(0) + f[i]) / k
            distance = np.linalg.norm(mu - candidate)
            if distance < best_distance:
                best, best_distance = i, distance
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("n,d,m,seed", [(30, 5, 10, 0), (50, 16, 50, 1), (7, 3, 12, 2), (40, 8, 1, 3)])
def test_herding_matches_brute_force(n, d, m, seed):
    features = np.random.RandomState(seed).randn(n, d)
    picks = herding(torch.from_numpy(features).float(), m).tolist()
    assert picks == brute_force_herding(features.astype(np.float64), m)
    assert len(set(picks)) == len(picks) == min(m, n)  # no duplicates, capped at n


def test_herding_first_pick_is_closest_to_mean():
    features = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    f = torch.nn.functional.normalize(features, dim=1)
    closest = int((f - f.mean(0)).norm(dim=1).argmin())
    assert int(herding(features, 3)[0]) == closest


def test_random_selection_is_seeded_and_distinct():
    a = random_selection(20, 8, torch.Generator().manual_seed(5))
    b = random_selection(20, 8, torch.Generator().manual_seed(5))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 8


def _data(per_class: int, classes: list[int]) -> ImageData:
    labels = np.repeat(classes, per_class).astype(np.int64)
    images = np.arange(len(labels) * 4, dtype=np.int64).reshape(-1, 2, 2, 1) % 251
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256  # tell samples apart
    return ImageData(images.astype(np.uint8), labels, [str(c) for c in range(10)])


def test_memory_reduce_keeps_prefix_and_state_round_trip():
    memory = ExemplarMemory(12, selection="random", seed=0)
    memory.update(_data(10, [0, 1]), [0, 1], num_seen=2)
    assert [len(memory.class_indices(c)) for c in (0, 1)] == [6, 6]
    before = {c: memory.images[memory.class_indices(c)].copy() for c in (0, 1)}
    memory.update(_data(10, [2, 3]), [2, 3], num_seen=4)
    for c in (0, 1):
        after = memory.images[memory.class_indices(c)]
        assert len(after) == 3 and np.array_equal(after, before[c][:3])
    clone = ExemplarMemory(12, selection="random")
    clone.load_state_dict(memory.state_dict())
    assert np.array_equal(clone.images, memory.images) and np.array_equal(clone.labels, memory.labels)
    assert np.array_equal(clone.rank, memory.rank)




def test_per_class_floor_and_ceil_as_icarls_script():
    """iCaRL's Theano script keeps nb_protos_cl = ceil(K / classes seen) per class (K = 2000, CIFAR-100
    10x10): at 30 classes 67 each, 2010 exemplars in all; floor keeps 66 each, 1980."""
    floor, ceil = ExemplarMemory(2000), ExemplarMemory(2000, per_class="ceil")
    script = [int(np.ceil(20 * 100.0 / 10 / (step + 1))) for step in range(10)]  # the script's own formula
    assert [ceil.per_class(10 * (step + 1)) for step in range(10)] == script
    assert [floor.per_class(n) for n in (10, 30, 60, 70, 90)] == [200, 66, 33, 28, 22]
    assert [ceil.per_class(n) for n in (10, 30, 60, 70, 90)] == [200, 67, 34, 29, 23]
    stored = [n * ceil.per_class(n) for n in range(10, 101, 10)]
    assert max(stored) == 2070 and all(n * floor.per_class(n) <= 2000 for n in range(1, 101))
    with pytest.raises(ValueError, match="per-class rounding"):
        ExemplarMemory(10, per_class="round")


def test_memory_with_ceil_keeps_ceil_per_class(tmp_path):
    run = make_run(tmp_path, {"name": "icarl", "memory_size": 20, "selection": "random", "per_class": "ceil"},
                   num_tasks=3)
    memory = run.method.memory
    for task in run.scenario:
        run.run_task(task)
        counts = {c: len(memory.class_indices(c)) for c in task.seen_classes}
        assert set(counts.values()) == {-(-20 // len(task.seen_classes))}  # 10, 5, 4: 20, 20, 24 stored
    assert len(memory) == 24


@pytest.mark.parametrize("selection", ["herding", "random"])
def test_memory_invariants_after_every_task(tmp_path, selection):
    capacity = 30
    run = make_run(tmp_path, {"name": "icarl", "memory_size": capacity, "selection": selection})
    memory, previous = run.method.memory, {}
    for task in run.scenario:
        run.run_task(task)
        seen = task.seen_classes
        counts = {c: len(memory.class_indices(c)) for c in seen}
        assert len(memory) <= capacity
        assert set(memory.labels.tolist()) == set(seen)  # only (and every) seen class
        assert max(counts.values()) - min(counts.values()) <= 1
        assert all(n == capacity // len(seen) for n in counts.values())
        assert memory.images.dtype == np.uint8 and memory.labels.dtype == np.int64
        for c, images in previous.items():  # reduction keeps the first exemplars, in order
            now = memory.images[memory.class_indices(c)]
            assert np.array_equal(now, images[: len(now)])
        previous = {c: memory.images[memory.class_indices(c)].copy() for c in seen}
    # exemplars are real training images of their own class
    for c in run.scenario[-1].seen_classes:
        source = next(t.train for t in run.scenario if c in t.new_classes)
        pool = {source.images[i].tobytes() for i in np.flatnonzero(source.labels == c)}
        assert all(memory.images[i].tobytes() in pool for i in memory.class_indices(c))
