"""t-SNE of saved test features (and of the exemplars in memory) for the first task's classes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..run_result import RunResult
from .model import read_memory
from .runs import read_predictions


@dataclass
class Embedding:
    task: int                  # 0-based step
    points: np.ndarray         # (n, 2) test samples
    labels: np.ndarray         # (n,)
    exemplar_points: np.ndarray  # (m, 2)
    exemplar_labels: np.ndarray  # (m,)
    classes: list[int]
    note: str = ""
    exemplar_kinds: np.ndarray | None = None  # (m,) what each exemplar is: "real", "collage", "synthetic"


def first_task_classes(run: RunResult, limit: int) -> list[int]:
    """Remapped labels of the first task are 0..k-1 (scenarios relabel by class order)."""
    first = run.classes_per_step[0] if run.classes_per_step else 0
    return list(range(min(first, limit)))


def embed(features: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    n = len(features)
    if n < 3:
        return np.zeros((n, 2))
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    # One thread: for a few hundred points OpenMP's spinning threads cost far more than they give,
    # many times more on a shared machine, and keep spinning into whatever runs next.
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    learning_rate="auto").fit_transform(features.astype(np.float64))


def run_embedding(run: RunResult, task: int, classes: list[int], max_points: int = 500,
                  exemplars: bool = True) -> Embedding:
    """Test features saved after ``task`` (``predictions/task_XX.npz``) of ``classes``; with ``exemplars``
    the stored samples of ``exemplars/task_XX.npz`` are embedded with them (their saved features)."""
    data = read_predictions(run, task)
    if "features" not in data or "feature_index" not in data:
        return Embedding(task, np.zeros((0, 2)), np.zeros(0, int), np.zeros((0, 2)), np.zeros(0, int), classes,
                         "no features were saved (output.save_features or max_feature_samples is 0)")
    labels = data["labels"][data["feature_index"]]
    keep = np.flatnonzero(np.isin(labels, classes))
    if len(keep) > max_points:
        keep = np.sort(np.random.RandomState(0).choice(keep, max_points, replace=False))
    features, labels = data["features"][keep], labels[keep]
    ex_features, ex_labels, note = np.zeros((0, features.shape[1]), np.float32), np.zeros(0, np.int64), ""
    ex_kinds = np.zeros(0, dtype=str)
    if exemplars:

        memory = read_memory(run.path, task)  # saved with its features under the same model
        if memory is not None and memory.features is not None:
            chosen = np.flatnonzero(np.isin(memory.labels, classes))
            ex_features, ex_labels, ex_kinds = memory.features[chosen], memory.labels[chosen], memory.kinds()[chosen]
    both = embed(np.concatenate([features, ex_features]))
    return Embedding(task, both[: len(features)], labels, both[len(features):], ex_labels, classes, note, ex_kinds)
