"""Continual-learning metrics as pure numpy functions, independent of training.

Conventions
-----------
* Accuracies are fractions in [0, 1].
* An accuracy matrix ``A`` is a float ``T x T`` array: ``A[i, j]`` is the accuracy on task ``j``'s test
  data after training task ``i``.  Entries that were not evaluated are NaN (class-incremental runs
  evaluate only ``j <= i``).
* Label/prediction arguments may be numpy arrays, sequences or torch tensors (converted on the CPU;
  this module never imports torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor; float() because numpy has no bfloat16
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _labels(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _to_numpy(y_true).reshape(-1), _to_numpy(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    return t, p


def _accuracy_matrix(A: Any) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be a non-empty square T x T array, got shape {A.shape}")
    return A


# ----------------------------------------------------------------------------- run-level summaries


def average_incremental_accuracy(seen_accuracies: Sequence[float]) -> float:
    """Mean over steps of the accuracy on all classes seen so far (Rebuffi et al. 2017, iCaRL)."""
    acc = np.asarray(seen_accuracies, dtype=np.float64).reshape(-1)
    if acc.size == 0:
        raise ValueError("average_incremental_accuracy needs at least one step")
    return float(acc.mean())


def last_accuracy(seen_accuracies: Sequence[float]) -> float:
    """Accuracy on all classes after the last step."""
    acc = np.asarray(seen_accuracies, dtype=np.float64).reshape(-1)
    if acc.size == 0:
        raise ValueError("last_accuracy needs at least one step")
    return float(acc[-1])


def forgetting_per_task(A: Any) -> np.ndarray:
    """Forgetting of each task ``j < T-1``: ``max_{i in [j, T-2]} A[i, j] - A[T-1, j]`` (length T-1).

    NaN entries of the column are ignored in the max; a task whose column has no evaluated entry in
    ``[j, T-2]``, or whose final accuracy is NaN, gets NaN.
    """
    A = _accuracy_matrix(A)
    T = A.shape[0]
    out = np.full(T - 1, np.nan)
    for j in range(T - 1):
        past = A[j : T - 1, j]
        past = past[~np.isnan(past)]
        if past.size and not np.isnan(A[T - 1, j]):
            out[j] = past.max() - A[T - 1, j]
    return out


def forgetting(A: Any) -> float:
    """Average forgetting (Chaudhry et al. 2018) over tasks ``j < T-1``; 0.0 for T == 1.

    Tasks with undefined forgetting (NaN, see :func:`forgetting_per_task`) are left out of the mean;
    NaN if none is defined.
    """
    per_task = forgetting_per_task(A)
    if per_task.size == 0:
        return 0.0
    return _nanmean(per_task)


def backward_transfer(A: Any) -> float:
    """BWT (Lopez-Paz & Ranzato 2017): mean over ``j < T-1`` of ``A[T-1, j] - A[j, j]``; 0.0 for T == 1.

    Negative values mean forgetting.  Pairs with a NaN entry are left out; NaN if none remains.
    """
    A = _accuracy_matrix(A)
    T = A.shape[0]
    if T == 1:
        return 0.0
    idx = np.arange(T - 1)
    return _nanmean(A[T - 1, idx] - A[idx, idx])


def _nanmean(values: np.ndarray) -> float:
    # np.nanmean warns on all-NaN input; returning NaN quietly is the documented behaviour here.
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


# ----------------------------------------------------------------------------- prediction-level


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct predictions; NaN for zero samples."""
    t, p = _labels(y_true, y_pred)
    return float(np.mean(t == p)) if t.size else math.nan


def old_new_accuracy(y_true: Any, y_pred: Any, new_classes: Any) -> tuple[float, float]:
    """``(accuracy on samples of old classes, accuracy on samples of new classes)``.

    A sample is "new" when its true label is in ``new_classes``; NaN for an empty group.
    """
    t, p = _labels(y_true, y_pred)
    is_new = np.isin(t, _to_numpy(new_classes).reshape(-1))
    return accuracy(t[~is_new], p[~is_new]), accuracy(t[is_new], p[is_new])


def per_group_accuracy(y_true: Any, y_pred: Any, groups: Sequence[Sequence[int]]) -> list[float]:
    """Accuracy on the samples whose true label is in each group (e.g. each task's classes).

    A prediction counts as correct only if it is the exact class, so this is class-incremental
    accuracy restricted to a group's samples, not task-aware accuracy.  NaN for a group with no samples.
    """
    t, p = _labels(y_true, y_pred)
    result = []
    for group in groups:
        mask = np.isin(t, np.asarray(list(group)))
        result.append(accuracy(t[mask], p[mask]))
    return result


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """``num_classes x num_classes`` int64 counts; rows are true classes, columns predictions."""
    t, p = _labels(y_true, y_pred)
    for what, labels in (("y_true", t), ("y_pred", p)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            # sklearn would silently drop such samples; a wrong num_classes is a bug worth seeing.
            raise ValueError(f"{what} has labels outside [0, {num_classes})")
    if t.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix  # lazy: sklearn import is slow

    return sk_confusion_matrix(t, p, labels=np.arange(num_classes)).astype(np.int64)


def task_aware_predictions(logits: Any, task_ids: Any, task_slices: Sequence[slice]) -> np.ndarray:
    """Task-incremental (multi-head) prediction: argmax inside each sample's task slice.

    Returns global class indices (int64), i.e. ``slice.start + argmax(logits[n, slice])``.
    """
    z = _to_numpy(logits)
    tasks = _to_numpy(task_ids).reshape(-1)
    if z.ndim != 2 or z.shape[0] != tasks.shape[0]:
        raise ValueError(
            f"logits must be (N, C) with N = len(task_ids), got {z.shape} and {tasks.shape[0]} ids"
        )
    if tasks.size and (tasks.min() < 0 or tasks.max() >= len(task_slices)):
        raise ValueError(f"task_ids must lie in [0, {len(task_slices)})")
    pred = np.empty(tasks.shape[0], dtype=np.int64)
    for t, s in enumerate(task_slices):
        start, stop, step = s.indices(z.shape[1])
        if step != 1 or stop <= start:
            raise ValueError(f"task {t}: slice {s} is empty or strided for {z.shape[1]} logits")
        rows = np.flatnonzero(tasks == t)
        if rows.size:
            pred[rows] = start + z[rows, start:stop].argmax(axis=1)
    return pred


# ----------------------------------------------------------------------------- across seeds


def _nan_mean_std(stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (ddof=1) over axis 0 ignoring NaN; std 0 for one value, NaN for none."""
    valid = ~np.isnan(stacked)
    count = valid.sum(axis=0)
    filled = np.where(valid, stacked, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=0) / count
        sq = np.where(valid, (stacked - mean) ** 2, 0.0).sum(axis=0)
        std = np.where(count > 1, np.sqrt(sq / np.maximum(count - 1, 1)), 0.0)
    std = np.where(count == 0, np.nan, std)
    return mean, std


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (ddof=1) of the non-NaN values.

    std is 0.0 when one value remains; both are NaN when none does.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    mean, std = _nan_mean_std(arr)
    return float(mean[0]), float(std[0])


def _is_scalar(v: Any) -> bool:
    # bool is an int subclass but a flag, not a metric.
    return isinstance(v, (Real, np.number)) and not isinstance(v, (bool, np.bool_))


def _as_numeric_array(v: Any) -> np.ndarray | None:
    if not isinstance(v, (list, tuple, np.ndarray)):
        return None
    try:
        arr = np.asarray(v)
    except ValueError:  # ragged nested lists
        return None
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        return None  # object, string or bool arrays
    return arr.astype(np.float64)


def aggregate(dicts: Sequence[dict]) -> dict:
    """Combine metric dicts from several seeds.

    For every key present in *all* dicts:

    * numeric scalar -> ``{"mean": m, "std": s, "values": [...]}`` (as :func:`mean_std`: sample std,
      NaN ignored);
    * numeric list/array with the same shape in every dict (e.g. a per-step accuracy curve) ->
      element-wise ``{"mean": [...], "std": [...], "values": [[...], ...]}``.

    Anything else (strings, bools, nested dicts, ragged or differently shaped lists, keys missing
    from some dicts) is dropped.  Output values are plain Python floats/lists (JSON-ready).
    """
    if not dicts:
        return {}
    out: dict = {}
    for key in dicts[0]:
        if not all(key in d for d in dicts):
            continue
        values = [d[key] for d in dicts]
        if all(_is_scalar(v) for v in values):
            m, s = mean_std([float(v) for v in values])
            out[key] = {"mean": m, "std": s, "values": [float(v) for v in values]}
            continue
        arrays = [_as_numeric_array(v) for v in values]
        if all(a is not None for a in arrays) and len({a.shape for a in arrays}) == 1:
            stacked = np.stack(arrays)
            mean, std = _nan_mean_std(stacked)
            out[key] = {"mean": mean.tolist(), "std": std.tolist(), "values": stacked.tolist()}
    return out


ACCURACY_MEASURES = ("sample_weighted", "task_mean")
# The per-step curve of each measure in metrics.json
CURVES = {"sample_weighted": "seen_accuracy", "task_mean": "task_mean_accuracy"}


def task_mean_accuracy(A: Any) -> np.ndarray:
    """Per step ``i``: the mean of the per-task accuracies ``A[i, j]`` over the tasks seen, ``j <= i`` (NaN
    entries left out) — the measure of van de Ven & Tolias 2019, Hsu et al. 2018 and Mammoth (DER paper).
    Every task weighs the same, whatever the size of its test set; the sample-weighted accuracy
    (``seen_accuracy``) pools the test images of the seen classes instead."""
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] > A.shape[1]:
        raise ValueError(f"accuracy matrix must be steps x tasks with steps <= tasks, got shape {A.shape}")
    return np.asarray([_nanmean(A[i, : i + 1]) for i in range(A.shape[0])])


def sem(values: Sequence[float]) -> float:
    """Standard error of the mean of the non-NaN values: sample std (ddof=1) / sqrt(count); 0.0 for one
    value (as :func:`mean_std`), NaN for none.  van de Ven & Tolias report it (their ``sqrt(var/(n-1))``)."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    count = int((~np.isnan(arr)).sum())
    _, std = mean_std(arr)
    return std / math.sqrt(count) if count else math.nan


def summarize_history(history: list[dict], num_tasks: int, classifier: str,
                      headline: str = "sample_weighted") -> dict:
    """Scalar metrics of one classifier from a run's per-task evaluation history (``scores`` per task).

    Both accuracy measures are reported, per step (``seen_accuracy``: sample-weighted over the test images
    of the seen classes; ``task_mean_accuracy``: mean of the per-task accuracies) and as last / average
    incremental values (``*_sample_weighted``, ``*_task_mean``); ``last_accuracy`` and
    ``average_incremental_accuracy`` are those of the ``headline`` measure."""
    if headline not in ACCURACY_MEASURES:
        raise ValueError(f"headline must be one of {ACCURACY_MEASURES}, got {headline!r}")
    steps = [h["scores"][classifier] for h in history]
    matrix = np.full((num_tasks, num_tasks), np.nan)
    for i, step in enumerate(steps):
        row = step["accuracy_row"]
        matrix[i, : len(row)] = row
    done = len(steps)
    seen = [s["seen_accuracy"] for s in steps]
    curves = {"sample_weighted": seen, "task_mean": [float(v) for v in task_mean_accuracy(matrix[:done])]}
    square = matrix[:done, :done] if done else matrix[:0, :0]
    summary = {
        "accuracy_matrix": [[None if np.isnan(v) else float(v) for v in row] for row in matrix[:done]],
        "seen_accuracy": seen,
        "task_mean_accuracy": curves["task_mean"],
        "current_accuracy": [s["current_accuracy"] for s in steps],
        "old_accuracy": [s["old_accuracy"] for s in steps],
    }
    for measure, curve in curves.items():
        summary[f"average_incremental_accuracy_{measure}"] = average_incremental_accuracy(curve) if curve else None
        summary[f"last_accuracy_{measure}"] = last_accuracy(curve) if curve else None
    summary.update({
        "average_incremental_accuracy": summary[f"average_incremental_accuracy_{headline}"],
        "last_accuracy": summary[f"last_accuracy_{headline}"],
        "forgetting": forgetting(square) if done else None,
        "backward_transfer": backward_transfer(square) if done else None,
    })
    top5 = [s.get("top5_seen_accuracy") for s in steps]
    if done and all(v is not None for v in top5):  # classifiers that rank classes, datasets of >= 10 classes
        summary["top5_seen_accuracy"] = top5
        summary["average_incremental_top5_accuracy"] = average_incremental_accuracy(top5)
        summary["last_top5_accuracy"] = last_accuracy(top5)
    return summary
