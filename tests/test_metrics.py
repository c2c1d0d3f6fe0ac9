"""Tests for cilearn.metrics against small hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cilearn import metrics as M

NAN = math.nan

# Class-incremental accuracy matrix (only j <= i evaluated).
#   forgetting: task 0: max(0.7, 0.8) - 0.6 = 0.2 ; task 1: 0.9 - 0.5 = 0.4  -> mean 0.3
#   BWT:        task 0: 0.6 - 0.7 = -0.1          ; task 1: 0.5 - 0.9 = -0.4 -> mean -0.25
A_CI = np.array(
    [
        [0.7, NAN, NAN],
        [0.8, 0.9, NAN],
        [0.6, 0.5, 0.95],
    ]
)


def test_average_incremental_and_last_accuracy() -> None:
    seen = [0.9, 0.7, 0.5]
    assert M.average_incremental_accuracy(seen) == pytest.approx(0.7)  # (0.9 + 0.7 + 0.5) / 3
    assert M.last_accuracy(seen) == pytest.approx(0.5)
    assert M.average_incremental_accuracy(np.array([0.4])) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        M.average_incremental_accuracy([])
    with pytest.raises(ValueError):
        M.last_accuracy([])


def test_forgetting_and_bwt_class_incremental() -> None:
    np.testing.assert_allclose(M.forgetting_per_task(A_CI), [0.2, 0.4])
    assert M.forgetting(A_CI) == pytest.approx(0.3)
    assert M.backward_transfer(A_CI) == pytest.approx(-0.25)


def test_forgetting_ignores_entries_before_the_task_was_learned() -> None:
    # Full task-incremental matrix: A[i, j] with i < j (before learning task j) must not count.
    # If A[0, 1] = 0.99 were included, task 1's forgetting would be 0.99 - 0.5 instead of 0.9 - 0.5.
    A = A_CI.copy()
    A[0, 1], A[0, 2], A[1, 2] = 0.99, 0.99, 0.99
    np.testing.assert_allclose(M.forgetting_per_task(A), [0.2, 0.4])
    assert M.forgetting(A) == pytest.approx(0.3)
    assert M.backward_transfer(A) == pytest.approx(-0.25)


def test_negative_forgetting_and_positive_bwt_when_accuracy_improves() -> None:
    # Task 0 rises 0.5 -> 0.6 -> 0.7: forgetting max(0.5, 0.6) - 0.7 = -0.1, BWT 0.7 - 0.5 = +0.2.
    # Task 1 stays at 0.8: forgetting 0, BWT 0.
    A = np.array([[0.5, NAN, NAN], [0.6, 0.8, NAN], [0.7, 0.8, 0.9]])
    np.testing.assert_allclose(M.forgetting_per_task(A), [-0.1, 0.0])
    assert M.forgetting(A) == pytest.approx(-0.05)
    assert M.backward_transfer(A) == pytest.approx(0.1)


def test_single_task() -> None:
    A = np.array([[0.8]])
    assert M.forgetting(A) == 0.0
    assert M.backward_transfer(A) == 0.0
    assert M.forgetting_per_task(A).shape == (0,)


def test_nan_handling_in_matrix() -> None:
    A = A_CI.copy()
    A[2, 1] = NAN  # task 1 not evaluated at the end -> left out
    per_task = M.forgetting_per_task(A)
    assert per_task[0] == pytest.approx(0.2) and math.isnan(per_task[1])
    assert M.forgetting(A) == pytest.approx(0.2)
    assert M.backward_transfer(A) == pytest.approx(-0.1)
    A[0, 0] = NAN  # max over the remaining evaluated entry A[1, 0] = 0.8
    assert M.forgetting_per_task(A)[0] == pytest.approx(0.2)
    A[2, 0] = NAN  # nothing defined at all
    assert math.isnan(M.forgetting(A))
    assert math.isnan(M.backward_transfer(A))


def test_matrix_shape_checked() -> None:
    with pytest.raises(ValueError):
        M.forgetting(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        M.backward_transfer(np.zeros(3))


# Predictions shared by the prediction-level tests.
#   index:   0  1  2  3  4  5
Y_TRUE = [0, 0, 1, 2, 3, 3]
Y_PRED = [0, 1, 1, 3, 3, 0]
# correct:   y  n  y  n  y  n  -> 3/6


def test_accuracy() -> None:
    assert M.accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.5)
    assert M.accuracy(torch.tensor(Y_TRUE), torch.tensor(Y_PRED)) == pytest.approx(0.5)
    assert M.accuracy([0, 1, 2, 3], [0, 1, 0, 3]) == pytest.approx(0.75)
    assert math.isnan(M.accuracy([], []))
    with pytest.raises(ValueError):
        M.accuracy([0, 1], [0])


def test_old_new_accuracy() -> None:
    # old samples (labels 0, 1): indices 0, 1, 2 -> 2/3 correct; new (2, 3): indices 3, 4, 5 -> 1/3
    old, new = M.old_new_accuracy(Y_TRUE, Y_PRED, new_classes=[2, 3])
    assert old == pytest.approx(2 / 3) and new == pytest.approx(1 / 3)
    old, new = M.old_new_accuracy(Y_TRUE, Y_PRED, new_classes=[9])
    assert old == pytest.approx(0.5) and math.isnan(new)
    old, new = M.old_new_accuracy(Y_TRUE, Y_PRED, new_classes=range(4))
    assert math.isnan(old) and new == pytest.approx(0.5)


def test_per_group_accuracy() -> None:
    result = M.per_group_accuracy(Y_TRUE, Y_PRED, [[0, 1], [2, 3], [4]])
    assert result[0] == pytest.approx(2 / 3) and result[1] == pytest.approx(1 / 3)
    assert math.isnan(result[2])


def test_confusion_matrix() -> None:
    cm = M.confusion_matrix(Y_TRUE, Y_PRED, num_classes=5)
    expected = np.array(
        [
            [1, 1, 0, 0, 0],  # true 0: predicted 0 and 1
            [0, 1, 0, 0, 0],  # true 1: predicted 1
            [0, 0, 0, 1, 0],  # true 2: predicted 3
            [1, 0, 0, 1, 0],  # true 3: predicted 3 and 0
            [0, 0, 0, 0, 0],  # class 4 never seen
        ]
    )
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)
    np.testing.assert_array_equal(M.confusion_matrix([], [], 3), np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(ValueError):
        M.confusion_matrix([0, 5], [0, 1], num_classes=5)


def test_task_aware_predictions() -> None:
    logits = np.array(
        [
            [0.1, 0.5, 9.0, 9.0, 9.0],  # task 0 -> argmax of [0.1, 0.5] -> class 1 (global argmax 2)
            [9.0, 9.0, 0.2, 0.1, 0.3],  # task 1 -> argmax of [0.2, 0.1, 0.3] -> class 2 + 2 = 4
            [0.0, 0.0, 5.0, 1.0, 1.0],  # task 1 -> class 2
        ]
    )
    task_ids = np.array([0, 1, 1])
    slices = [slice(0, 2), slice(2, 5)]
    expected = np.array([1, 4, 2])
    pred = M.task_aware_predictions(logits, task_ids, slices)
    assert pred.dtype == np.int64
    np.testing.assert_array_equal(pred, expected)
    pred_t = M.task_aware_predictions(torch.tensor(logits, dtype=torch.bfloat16), torch.tensor(task_ids), slices)
    np.testing.assert_array_equal(pred_t, expected)
    with pytest.raises(ValueError):
        M.task_aware_predictions(logits, np.array([0, 2, 1]), slices)


def test_task_aware_predictions_with_incremental_head() -> None:
    from cilearn.models import IncrementalHead

    torch.manual_seed(0)
    head = IncrementalHead(4)
    head.grow(3)
    head.grow(2)
    features = torch.randn(10, 4)
    task_ids = np.array([0, 1] * 5)
    with torch.no_grad():
        logits = head(features)
    pred = M.task_aware_predictions(logits, task_ids, head.task_slices)
    for n, t in enumerate(task_ids):
        s = head.task_slices[t]
        assert s.start <= pred[n] < s.stop
        assert pred[n] == s.start + int(head.chunks[t](features[n]).argmax())


def test_mean_std() -> None:
    m, s = M.mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == pytest.approx(2.5)
    assert s == pytest.approx(math.sqrt(5 / 3))  # sample std: (2.25 + .25 + .25 + 2.25) / (4 - 1)
    m, s = M.mean_std([1.0, NAN, 3.0])
    assert m == pytest.approx(2.0) and s == pytest.approx(math.sqrt(2.0))
    assert M.mean_std([5.0]) == (5.0, 0.0)
    m, s = M.mean_std([NAN])
    assert math.isnan(m) and math.isnan(s)


def test_aggregate() -> None:
    runs = [
        {"aia": 0.70, "curve": [0.9, 0.7, 0.5], "name": "a", "diverged": False, "epochs": 3, "ragged": [1, 2]},
        {"aia": 0.60, "curve": [0.8, 0.6, 0.4], "name": "b", "diverged": False, "epochs": 3, "ragged": [1]},
        {"aia": 0.65, "curve": np.array([1.0, 0.5, NAN]), "name": "c", "diverged": True, "epochs": 3,
         "ragged": [1, 2], "only_here": 1.0, "nested": {"x": 1.0}},
    ]  # fmt: skip
    out = M.aggregate(runs)
    assert set(out) == {"aia", "curve", "epochs"}

    aia = np.array([0.70, 0.60, 0.65])
    assert out["aia"]["mean"] == pytest.approx(aia.mean())
    assert out["aia"]["std"] == pytest.approx(aia.std(ddof=1))
    assert out["aia"]["values"] == pytest.approx([0.70, 0.60, 0.65])
    assert out["epochs"] == {"mean": 3.0, "std": 0.0, "values": [3.0, 3.0, 3.0]}

    curve = out["curve"]
    np.testing.assert_allclose(curve["mean"], [0.9, 0.6, 0.45])
    np.testing.assert_allclose(curve["std"][:2], [np.std([0.9, 0.8, 1.0], ddof=1), np.std([0.7, 0.6, 0.5], ddof=1)])
    assert curve["std"][2] == pytest.approx(np.std([0.5, 0.4], ddof=1))  # NaN ignored
    assert isinstance(curve["mean"], list) and len(curve["values"]) == 3

    assert M.aggregate([]) == {}
    single = M.aggregate([{"aia": 0.5}])
    assert single["aia"] == {"mean": 0.5, "std": 0.0, "values": [0.5]}


def test_task_mean_accuracy_of_a_hand_built_matrix() -> None:
    # step 0: task 0 only -> 0.7; step 1: (0.8 + 0.9) / 2 = 0.85; step 2: (0.6 + 0.5 + 0.95) / 3 = 0.68333...
    assert M.task_mean_accuracy(A_CI) == pytest.approx([0.7, 0.85, 2.05 / 3])


def test_task_mean_and_sample_weighted_differ_by_the_test_set_sizes() -> None:
    """Two tasks of 1 and 3 test images, predictions by hand: the model gets task 0's image wrong and all of task
    1's right.  Task mean (van de Ven & Tolias, Mammoth): (0 + 1) / 2 = 0.5; sample-weighted: 3 of 4 = 0.75."""
    y_true = np.array([0, 2, 3, 2])
    y_pred = np.array([1, 2, 3, 2])
    rows = [M.per_group_accuracy(y_true[:1], y_pred[:1], [[0, 1]]),
            M.per_group_accuracy(y_true, y_pred, [[0, 1], [2, 3]])]
    history = [{"scores": {"head": {"accuracy_row": rows[0], "seen_accuracy": M.accuracy(y_true[:1], y_pred[:1]),
                                    "current_accuracy": rows[0][0], "old_accuracy": None}}},
               {"scores": {"head": {"accuracy_row": rows[1], "seen_accuracy": M.accuracy(y_true, y_pred),
                                    "current_accuracy": rows[1][1], "old_accuracy": rows[1][0]}}}]
    weighted = M.summarize_history(history, 2, "head")
    task_mean = M.summarize_history(history, 2, "head", headline="task_mean")
    assert weighted["seen_accuracy"] == task_mean["seen_accuracy"] == [0.0, 0.75]
    assert weighted["task_mean_accuracy"] == task_mean["task_mean_accuracy"] == [0.0, 0.5]
    assert weighted["last_accuracy"] == 0.75 and task_mean["last_accuracy"] == 0.5
    assert weighted["average_incremental_accuracy"] == pytest.approx((0 + 0.75) / 2)
    assert task_mean["average_incremental_accuracy"] == pytest.approx((0 + 0.5) / 2)
    for summary in (weighted, task_mean):  # both measures are always there, whichever is the headline
        assert summary["last_accuracy_sample_weighted"] == 0.75 and summary["last_accuracy_task_mean"] == 0.5
    with pytest.raises(ValueError, match="headline"):
        M.summarize_history(history, 2, "head", headline="per_class")


def test_sem_is_std_over_sqrt_n_as_van_de_ven() -> None:
    values = [0.2, 0.4, 0.9]
    # their compare_all.py: sqrt(np.var(values) / (n - 1)), np.var the population variance
    assert M.sem(values) == pytest.approx(math.sqrt(np.var(values) / 2))
    assert M.sem([0.5]) == 0.0 and math.isnan(M.sem([]))


def test_summary_table_shows_the_headline_measure_and_the_chosen_spread() -> None:
    from cilearn.summary import summary_rows

    def run(seed: int, weighted: float, task_mean: float) -> dict:
        return {"label": "er", "seed": seed, "classifier": "head", "headline_accuracy": "task_mean", "spread": "sem",
                "seen_accuracy": [weighted], "task_mean_accuracy": [task_mean], "last_accuracy": task_mean,
                "average_incremental_accuracy": task_mean, "forgetting": 0.0, "old_accuracy": [None],
                "last_accuracy_sample_weighted": weighted, "last_accuracy_task_mean": task_mean}

    header, rows = summary_rows([run(0, 0.70, 0.50), run(1, 0.80, 0.70)])
    cells = dict(zip(header, rows[0]))
    # task mean 0.5, 0.7: mean 60.0, std 14.14, SEM 14.14 / sqrt(2) = 10.0
    assert cells["after 1"] == "60.0" and cells["last acc"] == "60.0 ± 10.0"
    assert cells["last acc (sample-weighted)"] == "75.0 ± 5.0"  # std 7.07 / sqrt(2)
