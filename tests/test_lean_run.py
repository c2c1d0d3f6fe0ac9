"""What makes a run cheaper without changing its results (issue 16): the per-epoch evaluation on a fixed,
class-balanced sample of the test set (the evaluation after each task on all of it), the tasks' data as
views of one class-ordered copy of the dataset, and the exemplars' features reused from the classifiers'
fit instead of computed again for the report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import digits_config, make_run

import cilearn.data.memo as memo
from cilearn import Experiment
from cilearn.config import parse_config
from cilearn.data import DatasetSplits, ImageData
from cilearn.data.base import JoinedData, consecutive_view, joined
from cilearn.engine.evaluate import balanced_sample
from cilearn.engine.runner import Run
from cilearn.engine.train import StageImages
from cilearn.methods.parts.components import ExemplarClassifiers
from cilearn.methods.parts.memory import ExemplarMemory
from cilearn.scenarios import class_incremental, concat


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


def resident_kib(array: np.ndarray) -> int:
    """Resident size of the mapping that holds ``array`` (``/proc/self/smaps``), in KiB."""
    address, found, rss = array.ctypes.data, False, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(part, 16) for part in head.split("-"))
            found = start <= address < end
        elif found and line.startswith("Rss:"):
            rss = int(line.split()[1])
            found = False
    assert rss is not None, "the array's mapping is not in /proc/self/smaps"
    return rss


def test_file_backed_tasks_hold_the_same_images_and_hand_their_pages_back(tmp_path, monkeypatch):
    """data.keep_in_memory false: the class-ordered copy lives in a deleted temporary file (in CILEARN_CACHE); the
    tasks are the same views with the same images, and release_pages drops what is resident while the images
    stay readable."""
    monkeypatch.setenv("CILEARN_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 4000)
    images = rng.integers(0, 256, (4000, 32, 32, 3), dtype=np.uint8)  # 12 MiB
    splits = DatasetSplits(name="toy", display_name="toy", train=ImageData(images, labels, list("abcd")),
                           test=ImageData(images[:400], labels[:400], list("abcd")))
    in_memory = class_incremental(splits, classes_per_task=2, class_order=[3, 1, 0, 2])
    backed = class_incremental(splits, classes_per_task=2, class_order=[3, 1, 0, 2], keep_in_memory=False)
    assert list((tmp_path / "cache").iterdir()) == []  # already deleted: it goes with the process
    for memory_task, file_task in zip(in_memory, backed):
        for split in ("train", "test"):
            a, b = getattr(memory_task, split), getattr(file_task, split)
            assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    whole = consecutive_view([task.train.images for task in backed])
    assert whole is not None and len(whole) == 4000  # still one block: concat() joins tasks without a copy
    if not Path("/proc/self/smaps").is_file():
        pytest.skip("resident pages are read from /proc/self/smaps (Linux)")
    int(whole.sum(dtype=np.int64))  # read every page
    assert resident_kib(whole) > 11 * 1024
    backed.release_pages()
    assert resident_kib(whole) < 256
    first = backed[0].train.images
    assert np.array_equal(first, in_memory[0].train.images)  # read back from the file
    assert 0.8 * first.nbytes / 1024 < resident_kib(whole) < 1.2 * first.nbytes / 1024 + 256
    in_memory.release_pages()  # images in ordinary memory: nothing to do, nothing lost
    assert np.array_equal(in_memory[1].test.images, backed[1].test.images)


def test_keep_in_memory_false_runs_to_the_same_metrics(tmp_path, monkeypatch):
    """The run a user starts (`cilearn run ... --set data.keep_in_memory=false`) gives the default's metrics."""
    from cilearn.cli import main

    monkeypatch.setenv("CILEARN_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "icarl.yaml"
    config.write_text(json.dumps(digits_config(
        scenario={"num_tasks": 3}, method={"name": "icarl", "memory_size": 60},
        train={"epochs": 1, "scheduler": "constant"}, output={"save_checkpoints": False}, seed=3)))
    for name, extra in (("memory", []), ("file", ["--set", "data.keep_in_memory=false"])):
        assert main(["run", "-q", str(config), "--out", str(tmp_path / name), *extra]) == 0
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("memory", "file")]
    assert metrics[0]["accuracy_matrix"] == metrics[1]["accuracy_matrix"]
    assert metrics[0]["classifiers"] == metrics[1]["classifiers"]


def test_keep_in_memory_false_is_refused_for_domain_streams_and_without_disk(tmp_path, monkeypatch):
    from cilearn.errors import ConfigError

    monkeypatch.setenv("CILEARN_CACHE", str(tmp_path / "cache"))
    raw = digits_config(scenario={"type": "domain_incremental", "classes_per_task": None,
                                  "options": {"stream": "rotated", "num_tasks": 2}},
                        data={"keep_in_memory": False})
    with pytest.raises(ConfigError, match="domain_incremental streams keep their experiences in memory"):
        Run(parse_config(raw), tmp_path / "run").setup()

    def disk_full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.posix_fallocate", disk_full, raising=False)
    with pytest.raises(ConfigError, match="No space left on device.*set CILEARN_CACHE"):
        make_run(tmp_path / "full", {"name": "finetune"}, data={"keep_in_memory": False})
    assert not (tmp_path / "full").exists() or not any((tmp_path / "full").iterdir())


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


def resnet_inference(fold: bool, batch_size: int = 16, precision: str = "fp32"):
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
    return model, Inference(model, augment, torch.device("cpu"), batch_size, precision, fold_batchnorm=fold)


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


def test_bf16_inference_casts_the_folded_copy_once_and_computes_what_autocast_computes():
    """train.inference_precision: bf16 casts the folded copy's weights to bf16 when it is made, not in every
    batch: the features and logits are those of bf16 autocast over the fp32 folded copy, to the bit (exact on
    CPUs with and without bf16 instructions: the same bf16 operands reach the same kernels)."""
    from cilearn.engine.evaluate import fold_batchnorm
    from cilearn.runtime import autocast

    images = np.random.default_rng(2).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    model, infer = resnet_inference(fold=True, precision="bf16")
    features, logits = infer(images)
    copy_made = infer._folded[1]
    assert {p.dtype for p in copy_made.parameters()} == {torch.bfloat16}
    assert features.dtype == logits.dtype == torch.float32
    folded = fold_batchnorm(model.backbone)
    batches = torch.as_tensor(images).permute(0, 3, 1, 2)
    with torch.inference_mode(), autocast("bf16", torch.device("cpu")):
        expected = [folded(infer.augment.normalize(batches[i:i + 16])) for i in range(0, 40, 16)]
        expected_logits = [model.head(f).float() for f in expected]
    assert torch.equal(features, torch.cat(expected).float())
    assert torch.equal(logits, torch.cat(expected_logits))
    infer(images)
    assert infer._folded[1] is copy_made  # cast once, reused while the weights stay the same


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


# --- issue 24: leaner outside the gradient steps -------------------------------------------------------------
def test_consecutive_blocks_are_joined_as_a_view_and_others_copied():
    base = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3).copy()
    parts = [base[0:2], base[2:3], base[3:5]]
    view = joined(parts)
    assert np.array_equal(view, np.concatenate(parts)) and view.shape == (5, 2, 2, 3)
    assert np.shares_memory(view, base) and view.ctypes.data == base.ctypes.data  # no copy
    inner = joined([base[1:2], base[2:4]])
    assert np.array_equal(inner, base[1:4]) and np.shares_memory(inner, base)
    for apart in ([base[0:2], base[3:5]], [base[2:3], base[0:2]], [base[0:2], base[2:4].copy()]):
        copy = joined(apart)  # a gap, the wrong order, another buffer: a copy with the same values
        assert np.array_equal(copy, np.concatenate(apart)) and not np.shares_memory(copy, base)
    assert joined([base[0:0], base[1:3]]) is not None and np.array_equal(joined([base[0:0], base[1:3]]), base[1:3])
    labels = np.arange(10)
    assert np.shares_memory(joined([labels[:4], labels[4:]]), labels)


def test_the_evaluators_test_set_is_a_view_of_the_tasks_test_data(tmp_path):
    run = make_run(tmp_path, {"name": "finetune"}, num_tasks=3)
    test = run.evaluator.test_set(2)
    tasks = run.scenario[:3]
    assert np.array_equal(test.labels, np.concatenate([t.test.labels for t in tasks]))
    images = np.concatenate([t.test.images for t in tasks])
    assert torch.equal(test.images, torch.as_tensor(images).permute(0, 3, 1, 2))
    assert np.shares_memory(test.images.numpy(), tasks[0].test.images)  # the scenario's own arrays, no copy
    assert np.shares_memory(test.labels, tasks[2].test.labels)


def test_consecutive_tasks_train_together_on_a_view(tmp_path):
    run = make_run(tmp_path, {"name": "joint"}, num_tasks=3)
    pool = run.method.training_data(run.scenario[2])
    assert len(pool) == sum(len(t.train) for t in run.scenario[:3])
    assert np.shares_memory(pool.images, run.scenario[0].train.images)
    memory = ImageData(pool.images[:4].copy(), pool.labels[:4].copy(), pool.class_names)
    mixed = concat([run.scenario[1].train, memory])  # the task's data and a memory: one new array
    assert not np.shares_memory(mixed.images, memory.images)
    assert np.array_equal(mixed.images[-4:], memory.images)


def test_a_single_run_does_not_keep_the_loaded_dataset(tmp_path, monkeypatch):
    """The experiment's dataset cache serves several runs; one run builds its scenario (its own class-ordered
    copy) and trains without the loaded splits beside it."""
    held = []
    execute = Run.execute

    def watched(self, *args, **kwargs):
        held.append(dict(memo._SPLITS_CACHE or {}))
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(Run, "execute", watched)
    raw = digits_config(scenario={"num_tasks": 1}, method={"name": "finetune"}, train={"epochs": 1},
                        output={"save_checkpoints": False, "save_features": False})
    Experiment.from_dict(raw).run(out=tmp_path / "one")
    assert held == [{}]
    held.clear()
    Experiment.from_dict({**raw, "seeds": [0, 1]}).run(out=tmp_path / "two")
    assert len(held) == 2 and all(len(cache) == 1 for cache in held)  # several runs share one load


def memory_and_classifiers(inference, fresh: bool, counted: list[int]):
    """An iCaRL memory (24 exemplars, herding) over two steps of 2 classes (20 noise images each), with NME
    fitted after each step; ``counted`` gets the size of every inference pass."""
    def infer(images, flip=False):
        counted.append(len(images))
        return inference(images, flip=flip)

    infer.folds = inference.folds
    rng = np.random.default_rng(3)
    data = ImageData(rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(4), 20),
                     [f"c{c}" for c in range(4)])
    memory = ExemplarMemory(24, "herding")
    classifiers = ExemplarClassifiers(["nme", "head"], infer, flip=True, seed=0)
    means = []
    for step, classes in enumerate(([0, 1], [2, 3])):
        memory.update(data, classes, 2 * (step + 1), lambda images: infer(images)[0], step)
        classifiers.fit(memory, fresh=fresh)
        means.append(classifiers.nme.means.clone())
    return memory, classifiers, means


@pytest.mark.parametrize("batch_size", [8, 32])
def test_class_means_from_herdings_features_equal_recomputed_ones(batch_size):
    """Herding computed the new exemplars' features under the model the class means are fitted with: reused,
    the means (and the features the report saves) are the same to the bit, and the pass over the memory
    covers only the old classes' exemplars (batch 8: every pass runs the folded copy; batch 32: none does)."""
    _, inference = resnet_inference(fold=True, batch_size=batch_size)
    recomputed_passes, reused_passes = [], []
    _, recomputed, recomputed_means = memory_and_classifiers(inference, False, recomputed_passes)
    memory, reused, reused_means = memory_and_classifiers(inference, True, reused_passes)
    for before, after in zip(recomputed_means, reused_means):
        assert torch.equal(before, after)
    assert torch.equal(recomputed.memory_features, reused.memory_features)
    # step 1: herding 20 + 20, then 24 flipped (nothing else); step 2: herding 20 + 20, the 12 old exemplars, 24 flipped
    assert recomputed_passes == [20, 20, 24, 24, 20, 20, 24, 24]
    assert reused_passes == [20, 20, 24, 20, 20, 12, 24]
    assert len(memory) == 24 and set(memory.selection_features) == {2, 3}


def test_class_means_recompute_every_feature_when_the_passes_would_differ():
    """Batch 16: the herding passes (20 images) and the memory's (24) run the folded copy, the 12 old exemplars
    alone would not; the features are then all computed in one pass over the memory, as before."""
    _, inference = resnet_inference(fold=True, batch_size=16)
    passes = []
    _, _, means = memory_and_classifiers(inference, True, passes)
    assert passes == [20, 20, 24, 20, 20, 24, 24]  # step 1 reused (24 flipped only); step 2 recomputed all 24
    recomputed = []
    _, _, recomputed_means = memory_and_classifiers(inference, False, recomputed)
    assert all(torch.equal(a, b) for a, b in zip(means, recomputed_means))


def test_stale_selection_features_are_never_reused():
    rng = np.random.default_rng(0)
    data = ImageData(rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8), np.repeat([0, 1], 10), ["a", "b"])
    features = lambda images: torch.as_tensor(images.reshape(len(images), -1)[:, :5], dtype=torch.float32)  # noqa: E731
    memory = ExemplarMemory(8, "herding")
    memory.add(data, [0, 1], 4, features)
    assert set(memory.selection_features) == {0, 1}
    rows = memory.class_indices(1)
    assert torch.equal(memory.selection_features[1].features, features(memory.images[rows]))
    memory.reduce(2)  # the memory changed: what herding computed no longer describes it
    assert memory.selection_features == {}
    memory.add(data, [1], 2, features)
    assert set(memory.selection_features) == {1}
    memory.load_state_dict(memory.state_dict())
    assert memory.selection_features == {}
    random = ExemplarMemory(8, "random")
    random.add(data, [0, 1], 4)
    assert random.selection_features == {}  # no features were computed


def test_the_command_line_loads_no_plotting_library():
    """``cilearn run`` imports the report's commands with the rest of the CLI; matplotlib (~30 MiB resident)
    comes only with the first figure, scikit-learn with the first classifier or k-means that needs it."""
    code = "import sys, cilearn.cli; assert not {'matplotlib', 'sklearn'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_a_task_and_its_memory_train_together_without_one_joined_array(tmp_path, monkeypatch):
    """iCaRL trains on the task's data and the exemplars: the loop draws its batches from the two arrays (no
    joined copy is made), and the network it trains is bit for bit the one trained on a joined copy."""
    import cilearn.methods.parts.rehearsal

    weights = []
    for layout in ("parts", "copy"):
        if layout == "copy":
            monkeypatch.setattr(cilearn.methods.parts.rehearsal, "concat", lambda datasets: ImageData(
                np.concatenate([d.images for d in datasets]), np.concatenate([d.labels for d in datasets]),
                datasets[0].class_names))
        run = make_run(tmp_path / layout, {"name": "icarl", "memory_size": 40}, num_tasks=2, epochs=2)
        trained_on = []
        training_data = run.method.training_data
        run.method.training_data = lambda task, record=trained_on, made=training_data: (
            record.append(made(task)) or record[-1])
        run.execute()
        assert trained_on[0] is run.scenario[0].train  # no memory yet: the task's own data
        if layout == "parts":
            data = trained_on[1]
            assert isinstance(data, JoinedData) and data._images is None  # trained on without joining
            assert len(data) == len(run.scenario[1].train) + 40 and data.image_shape == (8, 8, 1)
            assert data.parts[0] is run.scenario[1].train and len(data.parts[1]) == 40  # the memory after task 1
            assert np.array_equal(data.images, np.concatenate([part.images for part in data.parts]))
        weights.append(run.model.state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_stage_images_draw_the_same_batches_from_parts_as_from_one_array():
    rng = np.random.default_rng(0)
    first = ImageData(rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8), np.zeros(7, dtype=np.int64), ["a", "b"])
    second = ImageData(rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8), np.ones(5, dtype=np.int64), ["a", "b"])
    joined_data = JoinedData([first, second])
    whole = StageImages(ImageData(joined_data.images.copy(), joined_data.labels, ["a", "b"]), torch.device("cpu"))
    parts = StageImages(JoinedData([first, second]), torch.device("cpu"))
    for indices in (torch.tensor([11, 0, 7, 6, 3]), torch.arange(12).flip(0), torch.tensor([2]), torch.tensor([8, 9])):
        assert torch.equal(parts[indices], whole[indices])
    assert np.shares_memory(parts.parts[1].numpy(), second.images)  # the parts themselves, not copies


def test_run_costs_reads_the_peaks_and_the_eval_and_end_share(tmp_path):
    """benchmarks/run_costs.py: a run's memory and timing sections as a table or JSON, and a limit to check."""
    root = Path(__file__).resolve().parents[1]
    metrics = {"complete": True, "precision": "fp32",
               "timing": {"train_seconds": 80.0, "eval_seconds": 6.0, "checkpoint_seconds": 2.0,
                          "end_task_seconds": 12.0},
               "memory": {"peak_rss_mib": {"data": 600.0, "train": 990.5, "eval": 900.0, "end_task": 910.0,
                                           "checkpoint": 905.0}, "overall_peak_rss_mib": 990.5,
                          "per_phase_exact": True}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    script = [sys.executable, str(root / "benchmarks" / "run_costs.py"), str(tmp_path / "run")]
    out = subprocess.run([*script, "--json"], check=True, capture_output=True, text=True).stdout
    figures = json.loads(out)[str(tmp_path / "run")]
    assert figures["eval_and_end_task_share"] == pytest.approx(0.18)
    assert figures["peak_mib"]["train"] == 990.5 and figures["timed_seconds"] == 100.0
    table = subprocess.run(script, check=True, capture_output=True, text=True).stdout
    assert "eval + end of task share" in table and "18.0 %" in table and "1.039" in table  # 990.5 MiB in GB
    assert subprocess.run([*script, "--limit-gb", "1.0"], capture_output=True).returncode == 1
    assert subprocess.run([*script, "--limit-gb", "1.1"], capture_output=True).returncode == 0


def test_read_only_blocks_are_copied():
    base = np.arange(24, dtype=np.uint8).reshape(6, 4)
    base.flags.writeable = False  # torch warns on a read-only array: the caller gets a writeable copy
    assert consecutive_view([base[:2], base[2:]]) is None
    assert joined([base[:2], base[2:]]).flags.writeable
