"""Top-5 accuracy beside top-1: classifiers that rank (head, nme), the evaluation, metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import make_run

from cilearn.augment import BatchAugment
from cilearn.data import DatasetSplits, ImageData
from cilearn.engine.evaluate import Evaluator, Inference
from cilearn.methods.parts.classifiers import HeadClassifier, NearestMean, top_k_correct
from cilearn.metrics import summarize_history
from cilearn.models import build_model
from cilearn.scenarios import class_incremental


def test_top_k_correct_by_hand():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.2, 0.0, 0.9]])  # ranking: 5, 1, 2, 3, 0, then 4
    assert top_k_correct(scores, torch.tensor([0]), 5).tolist() == [True]
    assert top_k_correct(scores, torch.tensor([4]), 5).tolist() == [False]
    assert top_k_correct(scores, torch.tensor([1]), 1).tolist() == [False]
    assert top_k_correct(scores[:, :3], torch.tensor([0]), 5).tolist() == [True]  # fewer classes than k


def test_nearest_mean_scores_are_negative_distances():
    nme = NearestMean().fit_means(torch.eye(3)[[0, 2]], [0, 2])  # means of classes 0 and 2; class 1 has none
    features = torch.tensor([[3.0, 0.0, 4.0], [1.0, 0.0, 0.0]])  # normalised: (0.6, 0, 0.8) and (1, 0, 0)
    scores = nme.scores(features)
    expected = -torch.tensor([[(0.4 ** 2 + 0.8 ** 2) ** 0.5, float("nan"), (0.6 ** 2 + 0.2 ** 2) ** 0.5],
                              [0.0, float("nan"), 2 ** 0.5]])
    torch.testing.assert_close(scores[:, [0, 2]], expected[:, [0, 2]])
    assert torch.isneginf(scores[:, 1]).all()
    assert torch.equal(scores.argmax(1), nme(features))  # the ranking agrees with the prediction
    logits = torch.randn(4, 7)
    assert torch.equal(HeadClassifier().scores(None, logits), logits)


def _toy(num_classes: int) -> DatasetSplits:
    rng = np.random.RandomState(0)

    def make(n):
        labels = np.repeat(np.arange(num_classes), n)
        return ImageData(rng.randint(0, 255, (len(labels), 8, 8, 1)).astype(np.uint8), labels,
                         [str(c) for c in range(num_classes)])

    return DatasetSplits(name="toy", display_name="Toy", train=make(4), test=make(5))


@pytest.mark.parametrize("num_classes", [4, 10])
def test_evaluator_reports_top5_for_datasets_of_ten_classes_or_more(num_classes):
    scenario = class_incremental(_toy(num_classes), num_classes, class_order="sorted")
    torch.manual_seed(0)
    model = build_model("mlp", 1, 8, hidden=[8])
    model.add_classes(num_classes)
    inference = Inference(model, BatchAugment(scenario.mean, scenario.std), torch.device("cpu"), 64)
    scores, _ = Evaluator(scenario, inference).evaluate(0, {"head": HeadClassifier()})
    if num_classes < 10:
        assert "top5_seen_accuracy" not in scores["head"]
        return
    _, logits = inference(scenario[0].test.images)
    labels = torch.as_tensor(scenario[0].test.labels)
    in_top5 = [int(labels[i]) in logits[i].argsort(descending=True)[:5].tolist() for i in range(len(labels))]
    assert scores["head"]["top5_seen_accuracy"] == pytest.approx(np.mean(in_top5))
    assert scores["head"]["top5_seen_accuracy"] >= scores["head"]["seen_accuracy"]


def test_icarl_run_writes_top5_for_head_and_nme(tmp_path):
    run = make_run(tmp_path, {"name": "icarl", "memory_size": 40}, num_tasks=4)
    run.execute()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("nme", "head"):
        entry = metrics["classifiers"][name]
        top5, top1 = entry["top5_seen_accuracy"], entry["seen_accuracy"]
        assert len(top5) == 4 and all(a >= b for a, b in zip(top5, top1))
        assert top5[0] == top5[1] == 1.0  # 2 and 4 classes seen: the label is always among the top 5
        assert top5[3] < 1.0  # 8 classes seen
        assert entry["average_incremental_top5_accuracy"] == pytest.approx(np.mean(top5))
        assert entry["last_top5_accuracy"] == top5[-1]
    assert metrics["last_top5_accuracy"] == metrics["classifiers"]["nme"]["last_top5_accuracy"]  # primary: nme


def test_summaries_without_top5_stay_as_they_were():
    step = {"accuracy_row": [0.5], "seen_accuracy": 0.5, "current_accuracy": 0.5, "old_accuracy": None}
    summary = summarize_history([{"scores": {"knn": step}}], 1, "knn")
    assert not any(key.startswith(("top5", "last_top5", "average_incremental_top5")) for key in summary)
