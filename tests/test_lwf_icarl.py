"""LwF and iCaRL: the frozen teacher, loss variants, the NME classifier, option checks, resume state, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cilearn import cli
from cilearn.classifiers import NearestMean, SklearnClassifier
from cilearn.config import parse_config
from cilearn.errors import ConfigError
from cilearn.methods import method_options
from cilearn.methods.lwf import LossSetup, resolve_losses
from cilearn.rundir import load_checkpoint, save_checkpoint
from cilearn.runner import Run
import helpers
from helpers import one_thread  # noqa: F401  (autouse fixture)


def make_run(tmp_path, method: dict, num_tasks: int = 3, epochs: int = 1):
    return helpers.make_run(tmp_path, method, num_tasks, epochs)


@pytest.fixture(scope="module")
def icarl_run(tmp_path_factory):
    """iCaRL trained on the first two tasks (teacher = the model after task 0)."""
    run = make_run(tmp_path_factory.mktemp("icarl"), {"name": "icarl", "memory_size": 40,
                                                      "classifiers": ["nme", "head", "knn", "svm", "mlp"]})
    for task in run.scenario[:2]:
        run.run_task(task)
    return run


# --- the teacher ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [{"name": "lwf"}, {"name": "lwf", "variant": "icarl"},
                                    {"name": "icarl", "memory_size": 20}])
def test_teacher_is_frozen_and_used(tmp_path, method):
    run = make_run(tmp_path, method, num_tasks=2, epochs=2)
    first, second = run.scenario[0], run.scenario[1]
    run.run_task(first)
    after_first = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.model.add_classes(len(second.new_classes))
    run.method.begin_task(second)
    teacher = run.method.teacher
    assert teacher is not None and not teacher.training
    assert teacher.num_classes == len(first.seen_classes)
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    for k, v in snapshot.items():  # the teacher is the model as it was after the first task
        assert torch.equal(v, after_first[k])
    calls = []
    teacher.register_forward_hook(lambda module, inputs, output: calls.append(output.requires_grad))
    data = run.method.training_data(second)
    run.trainer.start(run.method)
    run.trainer.fit(run.model, run.method, data)
    assert calls and not any(calls)  # one forward per batch, outside autograd
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, snapshot[k])  # the teacher never moved ...
    assert any(not torch.equal(v, after_first[k]) for k, v in run.model.state_dict().items()
               if k in after_first)  # ... while the student trained


def test_distillation_targets_come_from_teacher(icarl_run):
    method = icarl_run.method
    inputs = torch.randn(8, 1, 8, 8)
    logits = icarl_run.model(inputs)
    targets = torch.full((8,), 2)
    with torch.no_grad():
        teacher_logits = method.teacher(inputs)
    n_old, total = teacher_logits.shape[1], logits.shape[1]
    expected_dist = F.binary_cross_entropy_with_logits(logits[:, :n_old], torch.sigmoid(teacher_logits))
    one_hot = F.one_hot(targets, total).float()
    expected_cls = F.binary_cross_entropy_with_logits(logits[:, n_old:], one_hot[:, n_old:])
    # iCaRL's loss = one BCE averaged over every output, new ones against one-hot, old ones against
    # the teacher's sigmoid outputs
    joint = F.binary_cross_entropy_with_logits(logits, torch.cat([torch.sigmoid(teacher_logits),
                                                                  one_hot[:, n_old:]], 1))
    loss = method.loss(logits, targets, inputs)
    assert torch.allclose(loss, expected_cls * (total - n_old) / total + expected_dist * n_old / total)
    assert torch.allclose(loss, joint)


# --- loss variants ------------------------------------------------------------------------------------
PAIRS = [(c, d) for c in ("bce", "ce", "mse") for d in ("bce", "mse", "kd")]


@pytest.mark.parametrize("outputs", ["new", "all"])
@pytest.mark.parametrize("balance", ["sum", "outputs"])
def test_every_loss_pair_is_finite(icarl_run, outputs, balance):
    method = icarl_run.method
    saved = method.losses
    try:
        for cls, dist in PAIRS:
            method.losses = LossSetup(cls, dist, outputs, balance)
            inputs = torch.randn(16, 1, 8, 8)
            logits = icarl_run.model(inputs)
            targets = torch.arange(16) % 4  # old (0, 1) and new (2, 3) classes, as with exemplars
            loss = method.loss(logits, targets, inputs)
            assert loss.ndim == 0 and torch.isfinite(loss), (cls, dist)
            icarl_run.model.zero_grad()
            loss.backward()
            assert all(torch.isfinite(p.grad).all() for p in icarl_run.model.parameters() if p.grad is not None)
    finally:
        method.losses = saved
        icarl_run.model.zero_grad(set_to_none=True)


def test_variants_resolve_to_the_published_pairs():
    def setup(**kw):
        options = method_options({"name": kw.pop("method", "lwf"), **kw})
        return resolve_losses(options, has_memory=getattr(options, "memory_size", 0) > 0)
    assert setup() == LossSetup("ce", "kd", "new", "sum")
    assert setup(variant="icarl") == LossSetup("bce", "bce", "new", "outputs")
    assert setup(method="icarl") == LossSetup("bce", "bce", "new", "outputs")
    assert setup(method="icarl", classification_loss="ce", distillation_loss="mse") == \
        LossSetup("ce", "mse", "all", "outputs")
    assert setup(variant="icarl", classification_loss="mse", distillation_loss="kd").distillation == "kd"


@pytest.mark.parametrize("variant", ["original", "icarl"])
def test_lwf_trains_end_to_end(tmp_path, variant):
    run = make_run(tmp_path, {"name": "lwf", "variant": variant}, num_tasks=2)
    result = run.execute()
    assert result["complete"] and np.isfinite(result["last_accuracy"])


# --- classifiers -------------------------------------------------------------------------------------
def test_nme_equals_direct_nearest_class_mean(icarl_run):
    method, memory = icarl_run.method, icarl_run.method.memory
    infer = method.context.infer
    features = infer(memory.images)[0].numpy()
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    if method.flip_means:
        g = infer(memory.images, flip=True)[0].numpy()
        f = (f + g / np.linalg.norm(g, axis=1, keepdims=True)) / 2
    classes = sorted(set(memory.labels.tolist()))
    means = np.stack([f[memory.labels == c].mean(0) for c in classes])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    test = np.concatenate([t.test.images for t in icarl_run.scenario[:2]])
    test_features = infer(test)[0]
    t = test_features.numpy() / np.linalg.norm(test_features.numpy(), axis=1, keepdims=True)
    expected = np.asarray(classes)[((t[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    assert np.array_equal(method.nme(test_features, None).numpy(), expected)
    assert set(method.classifiers()) == {"nme", "head", "knn", "svm", "mlp"}
    assert method.primary_classifier == "nme"


def test_nearest_mean_on_toy_points():
    nme = NearestMean().fit_means(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [7, 3])
    assert nme(torch.tensor([[5.0, 1.0], [0.1, 2.0]]), None).tolist() == [7, 3]


@pytest.mark.parametrize("name", ["knn", "svm", "mlp"])
def test_sklearn_classifiers_fit_separable_features(name):
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(4) * 5
    labels = torch.arange(40) % 4
    features = centers[labels] + 0.1 * torch.randn(40, 4, generator=g)
    clf = SklearnClassifier(name, seed=0).fit(features, labels)
    assert (clf(features, None) == labels).float().mean() > 0.95


# --- checks --------------------------------------------------------------------------------------------
def test_memory_smaller_than_classes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="smaller than the number of classes"):
        make_run(tmp_path, {"name": "icarl", "memory_size": 5}, num_tasks=5)  # setup() calls check()
    make_run(tmp_path / "ok", {"name": "icarl", "memory_size": 6}, num_tasks=3)  # 6 classes in 3 tasks


@pytest.mark.parametrize("method,message", [
    ({"name": "icarl", "classifiers": ["nme", "nmc"]}, "unknown classifier"),
    ({"name": "lwf", "classifiers": ["nme"]}, "needs an exemplar memory"),
    ({"name": "lwf", "classifiers": ["head", "svm"]}, "needs an exemplar memory"),
    ({"name": "icarl", "classifiers": []}, "at least one"),
])
def test_bad_classifier_choices_are_config_errors(method, message):
    with pytest.raises(ConfigError, match=message):
        method_options(method)


# --- resume ---------------------------------------------------------------------------------------------
def test_state_dict_round_trip_restores_memory_and_teacher(icarl_run, tmp_path):
    method = icarl_run.method
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"method": method.state_dict()})
    state = load_checkpoint(path)["method"]  # weights_only load: tensors and plain values only
    fresh = make_run(tmp_path / "fresh", dict(icarl_run.cfg.method))
    for size in [s.stop - s.start for s in icarl_run.model.head.task_slices]:
        fresh.model.add_classes(size)
    fresh.method.load_state_dict(state)
    new = fresh.method
    assert np.array_equal(new.memory.images, method.memory.images)
    assert np.array_equal(new.memory.labels, method.memory.labels)
    assert np.array_equal(new.memory.rank, method.memory.rank)
    assert new.teacher is not None and new.teacher.num_classes == method.teacher.num_classes
    for (k, a), (_, b) in zip(new.teacher.state_dict().items(), method.teacher.state_dict().items()):
        assert torch.equal(a, b), k
    assert all(not p.requires_grad for p in new.teacher.parameters()) and not new.teacher.training
    assert torch.equal(new.nme.means, method.nme.means)


def test_lwf_state_without_teacher(tmp_path):
    run = make_run(tmp_path, {"name": "lwf"}, num_tasks=2)
    assert run.method.state_dict() == {"teacher_chunks": 0}
    run.method.load_state_dict({"teacher_chunks": 0})
    assert run.method.teacher is None


# --- command line ---------------------------------------------------------------------------------------
def test_cli_icarl_run_reports_every_classifier(tmp_path):
    out = tmp_path / "run"
    code = cli.main(["run", "configs/icarl_digits.yaml", "--out", str(out), "--set", "train.epochs=1",
                     "--set", "train.progress=false", "--set", "method.classifiers=[nme, head]",
                     "--set", "output.save_features=false"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["classifier"] == "nme"
    assert set(metrics["classifiers"]) == {"nme", "head"}
    for scores in metrics["classifiers"].values():  # all seen classes and the current task's, per step
        assert len(scores["seen_accuracy"]) == len(scores["current_accuracy"]) == metrics["num_tasks"]
        assert scores["old_accuracy"][0] is None and scores["old_accuracy"][-1] is not None
    assert metrics["seen_accuracy"] == metrics["classifiers"]["nme"]["seen_accuracy"]


def _resume_config(method: dict) -> dict:
    return {"data": {"name": "digits"},
            "scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": 3},
            "model": {"name": "mlp", "options": {"hidden": [32]}}, "method": method,
            "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "scheduler": "constant", "progress": False,
                      "eval_every": 0, "checkpoint_every": 1},
            "output": {"save_features": False}, "seed": 0}


@pytest.mark.parametrize("method", [{"name": "icarl", "memory_size": 30}, {"name": "lwf"}])
def test_resume_reproduces_the_run(tmp_path, monkeypatch, method):
    """Stopped after a task (memory from the checkpoint, teacher rebuilt by begin_task) or inside one
    (teacher and memory both from the checkpoint), a resumed run ends exactly like an uninterrupted one."""
    from cilearn.methods import METHODS
    from cilearn.runner import resume_experiment

    full = Run(parse_config(_resume_config(method)), tmp_path / "full").execute()

    after_task = tmp_path / "after_task"
    Run(parse_config(_resume_config(method)), after_task).execute()
    (after_task / "checkpoints" / "task_02.pt").unlink()  # as if it had stopped after its second task
    resume_experiment(after_task)

    inside = tmp_path / "inside_task"
    cls = METHODS[method["name"]]
    original = cls.end_task

    def crash(self, task, data):
        if task.index == 2:
            raise KeyboardInterrupt  # stopped after the last epoch checkpoint of the third task
        return original(self, task, data)

    monkeypatch.setattr(cls, "end_task", crash)
    with pytest.raises(KeyboardInterrupt):
        Run(parse_config(_resume_config(method)), inside).execute()
    monkeypatch.undo()
    assert torch.load(inside / "checkpoints" / "epoch.pt", weights_only=True)["next_epoch"] == 2
    resume_experiment(inside)

    for out in (after_task, inside):
        resumed = json.loads((out / "metrics.json").read_text())
        assert resumed["complete"]
        for name, scores in full["classifiers"].items():
            assert resumed["classifiers"][name]["accuracy_matrix"] == scores["accuracy_matrix"], (out.name, name)
