"""What makes a run cheaper without changing its results (issue 16): the per-epoch evaluation on a fixed,
class-balanced sample of the test set (the evaluation after each task on all of it), the tasks' data as
views of one class-ordered copy of the dataset, and the exemplars' features reused from the classifiers'
fit instead of computed again for the report."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from helpers import make_run

from cilearn.config import parse_config
from cilearn.data import DatasetSplits, ImageData
from cilearn.engine.evaluate import balanced_sample
from cilearn.engine.runner import Run
from cilearn.scenarios import class_incremental


def test_balanced_sample_takes_the_same_number_from_every_group():
    groups = np.repeat([7, 3, 5], [10, 50, 40])
    rng = np.random.default_rng(0)
    groups = groups[rng.permutation(len(groups))]
    keep = balanced_sample(groups, 30, seed=1)
    assert np.all(np.diff(keep) > 0)  # sorted, no index twice
    counts = {g: int(np.sum(groups[keep] == g)) for g in (7, 3, 5)}
    assert counts == {7: 10, 3: 10, 5: 10}
    assert np.array_equal(keep, balanced_sample(groups, 30, seed=1))  # fixed by the seed
    assert not np.array_equal(keep, balanced_sample(groups, 30, seed=2))
    # a group smaller than its share gives all it has; the others still give only their share
    keep = balanced_sample(groups, 60, seed=1)
    assert {g: int(np.sum(groups[keep] == g)) for g in (7, 3, 5)} == {7: 10, 3: 20, 5: 20}
    assert balanced_sample(groups, 0, seed=1) is None  # 0: everything
    assert balanced_sample(groups, 100, seed=1) is None  # everything fits


def test_per_epoch_evaluation_scores_the_sample_and_the_task_end_all(tmp_path):
    run = make_run(tmp_path, {"name": "finetune"}, num_tasks=2, epochs=2)
    for task in run.scenario[:2]:
        run.method.grow_head(task)
    run.evaluator.quick_limit = 20
    sample = run.evaluator.quick_set(1)
    full = run.evaluator.test_set(1)
    assert len(sample.labels) == 20 and len(full.labels) > 100
    for label in range(4):  # 4 classes seen after task 2: 5 test images each
        assert np.sum(sample.labels == label) == 5
    # The accuracies the log gets are the head's on exactly those images.
    _, logits = run.inference(sample.images)
    correct = logits[:, :4].argmax(1).numpy() == sample.labels
    current, seen = run.evaluator.quick(1)
    assert seen == pytest.approx(correct.mean())
    assert current == pytest.approx(correct[sample.segment == 1].mean())


def test_the_log_says_per_epoch_sample_and_last_epoch_all(tmp_path):
    """As configured by a user: rows before a task's last epoch come from the sample (10 images: accuracies
    in tenths); the last epoch's row is the full evaluation that metrics.json reports."""
    raw = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 5, "class_order": "sorted"},
           "model": {"name": "mlp", "options": {"hidden": [16]}}, "method": {"name": "finetune"},
           "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "scheduler": "constant", "progress": False,
                     "eval_subsample": 10},
           "output": {"save_checkpoints": False}, "seed": 0}
    result = Run(parse_config(raw), tmp_path / "run").execute()
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    head = result["classifiers"]["head"]
    tenths = []
    for task in range(2):
        mine = [r for r in rows if int(r["task"]) == task]
        assert len(mine) == 3
        assert float(mine[-1]["test_accuracy_seen"]) == pytest.approx(head["seen_accuracy"][task], abs=1e-6)
        assert float(mine[-1]["test_accuracy_current"]) == pytest.approx(head["current_accuracy"][task], abs=1e-6)
        tenths += [float(r["test_accuracy_seen"]) * 10 for r in mine[:-1]]
    assert all(abs(t - round(t)) < 1e-4 for t in tenths)
    assert not all(abs(head["seen_accuracy"][t] * 10 - round(head["seen_accuracy"][t] * 10)) < 1e-4
                   for t in range(2))  # the full test set (360 images) is not scored in tenths


def split_of(labels: list[int], shift: int = 0) -> ImageData:
    images = (np.arange(len(labels))[:, None, None, None] + shift) * np.ones((1, 2, 2, 1))
    return ImageData((images % 256).astype(np.uint8), np.asarray(labels, dtype=np.int64),
                     [f"c{c}" for c in range(4)])


def test_tasks_are_views_of_one_class_ordered_copy():
    labels = [2, 0, 3, 1, 0, 2, 3, 1, 1, 0, 2, 3]
    splits = DatasetSplits(name="toy", display_name="toy", train=split_of(labels), test=split_of(labels, 100))
    scenario = class_incremental(splits, classes_per_task=2, class_order=[3, 1, 0, 2])
    first, second = scenario[0].train, scenario[1].train
    assert np.shares_memory(first.images, second.images.base if second.images.base is not None else second.images)
    assert not np.shares_memory(first.images, splits.train.images)  # the loaded arrays can be freed
    # Content: a task's images are the samples of its classes in the dataset's order, relabelled by the order.
    original = np.asarray(labels)
    for task, classes in ((scenario[0], [3, 1]), (scenario[1], [0, 2])):
        for new_label, old_label in zip(task.new_classes, classes):
            where = np.flatnonzero(original == old_label)
            assert np.array_equal(task.train.images[task.train.labels == new_label],
                                  splits.train.images[where])


def test_exemplar_features_saved_for_the_report_are_the_current_models(tmp_path):
    """iCaRL's classifiers computed the memory's features after the task: the report's exemplar file gets
    those (the run's own feature pass for it would fail here), and they equal a fresh computation."""
    raw = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 5, "class_order": "sorted"},
           "model": {"name": "mlp", "options": {"hidden": [16]}},
           "method": {"name": "icarl", "memory_size": 40},
           "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "scheduler": "constant", "progress": False},
           "output": {"save_checkpoints": False}, "seed": 0}
    run = Run(parse_config(raw), tmp_path / "run")
    run.setup()
    infer = run.inference  # the method and the evaluator keep this one

    def recomputed(*args, **kwargs):
        raise AssertionError("the exemplars' features were computed a second time")

    run.inference = recomputed
    run.execute()
    for task in range(2):
        assert len(np.load(run.files.exemplars(task))["labels"]) == 40
    last = np.load(run.files.exemplars(1))  # the model still in memory is the last task's
    np.testing.assert_allclose(last["features"], infer(last["images"])[0].numpy(), rtol=1e-5, atol=1e-6)


def resnet_inference(fold: bool, batch_size: int = 16):
    """iCaRL's ResNet-32 (shortcut A, signed features) with non-trivial BatchNorm statistics, eval inference."""
    from cilearn.augment import BatchAugment
    from cilearn.engine.evaluate import Inference
    from cilearn.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet32", 3, 32, shortcut="A", last_relu=False)
    model.add_classes(4)
    with torch.no_grad():  # training-mode passes move the running statistics away from 0 / 1
        for _ in range(3):
            model(torch.rand(32, 3, 32, 32) * 2)
    augment = BatchAugment((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    return model, Inference(model, augment, torch.device("cpu"), batch_size, fold_batchnorm=fold)


def test_folded_batchnorm_gives_the_networks_features_and_the_same_decisions():
    from cilearn.methods.parts.classifiers import NearestMean, exemplar_means
    from cilearn.methods.parts.memory import herding

    images = np.random.default_rng(0).integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    labels = torch.as_tensor(np.repeat(np.arange(4), 24))
    _, plain = resnet_inference(fold=False)
    _, folded = resnet_inference(fold=True)
    f_plain, l_plain = plain(images)
    f_folded, l_folded = folded(images)
    assert folded._folded is not None and folded._folded[1] is not None  # the folded copy ran
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded._folded[1].modules())
    torch.testing.assert_close(f_folded, f_plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l_folded, l_plain, rtol=1e-4, atol=1e-5)
    # what iCaRL decides from them: herding's picks and the nearest-mean predictions
    assert torch.equal(herding(f_folded[:24], 10), herding(f_plain[:24], 10))
    decisions = []
    for features in (f_plain, f_folded):
        nme = NearestMean()
        nme.fit_means(exemplar_means(features, labels, [0, 1, 2, 3], None), [0, 1, 2, 3])
        decisions.append(np.asarray(nme(features, None)))
    assert np.array_equal(*decisions)


def test_the_folded_copy_follows_the_weights():
    model, folded = resnet_inference(fold=True)
    images = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    before = folded(images)[0]
    copy_made = folded._folded[1]
    assert folded(images)[0].equal(before) and folded._folded[1] is copy_made  # unchanged weights: reused
    with torch.no_grad():
        model.backbone.stem[0].weight.mul_(1.5)  # an optimizer step changes weights in place like this
    after = folded(images)[0]
    assert folded._folded[1] is not copy_made
    _, plain = resnet_inference(fold=False)
    plain.model = model
    torch.testing.assert_close(after, plain(images)[0], rtol=1e-4, atol=1e-5)
    model.train()
    with torch.no_grad():  # BatchNorm statistics move in training-mode forwards: rebuilt too
        model(torch.rand(8, 3, 32, 32))
    assert not folded(images)[0].equal(after)
    assert model.training  # inference puts the model back in the mode it was in


def test_a_backbone_fx_cannot_trace_runs_as_it_is():
    from cilearn.engine.evaluate import fold_batchnorm

    class DataDependent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y.mean((2, 3)) if y.sum() > 0 else -y.mean((2, 3))  # control flow on values: untraceable

    assert fold_batchnorm(DataDependent()) is None


@pytest.mark.parametrize("method", ["icarl", "lwf"])
def test_teacher_runs_before_the_student_with_the_same_loss(tmp_path, method):
    from cilearn.methods import Batch, Output
    from cilearn.methods.parts.components import TaughtOutput

    run = make_run(tmp_path, {"name": method}, num_tasks=2)
    run.execute()  # after the last task: a teacher of the first task, the model of the second
    images = torch.as_tensor(run.scenario[1].train.images[:16]).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(run.scenario[1].train.labels[:16])
    batch = Batch(inputs=run.augment.normalize(images), images=images, labels=labels,
                  task_ids=torch.ones_like(labels), indices=torch.arange(16))
    assert run.method.teacher
    out = run.method.forward(batch)
    assert isinstance(out, TaughtOutput)
    torch.testing.assert_close(out.teacher_logits, run.method.teacher.logits(batch.inputs))
    plain = Output(out.features, out.logits)  # a forward of another kind: the loss asks the teacher itself
    assert run.method.loss(out, batch).item() == pytest.approx(run.method.loss(plain, batch).item(), rel=1e-6)


def test_training_on_a_view_of_the_data_trains_the_same_network(tmp_path, monkeypatch):
    """The loop reads a task's images through a channels_last view of the uint8 array (no copy); the
    network it trains is bit for bit the one trained from a contiguous NCHW copy."""
    import cilearn.engine.train
    from cilearn.augment import to_tensor_images

    rng = np.random.default_rng(0)
    splits = DatasetSplits(name="noise", display_name="noise",
                           train=ImageData(rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8),
                                           np.repeat([0, 1], 24), ["a", "b"]),
                           test=ImageData(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                                          np.repeat([0, 1], 4), ["a", "b"]))
    raw = {"data": {"name": "noise"}, "scenario": {"classes_per_task": 2}, "method": {"name": "finetune"},
           "model": {"name": "resnet20"},
           "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "progress": False, "eval_every": 0},
           "output": {"save_checkpoints": False, "save_features": False}, "seed": 0}
    weights = []
    for layout in ("view", "copy"):
        if layout == "copy":
            monkeypatch.setattr(cilearn.engine.train, "nchw_view", to_tensor_images)
        run = Run(parse_config(raw), tmp_path / layout, data=splits)
        run.execute()
        weights.append(run.model.state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
