"""LwF and iCaRL: the frozen teacher, loss variants, the NME classifier, option checks, resume state, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cilearn import cli
from cilearn.methods.parts.classifiers import NearestMean, SklearnClassifier
from cilearn.config import parse_config
from cilearn.schema import to_dict
from cilearn.errors import ConfigError
from cilearn.methods import method_options
from cilearn.methods.parts.distill import DistillationObjective, LossSetup
from cilearn.methods.parts.components import resolve_losses
from cilearn.engine.checkpoints import load_checkpoint, save_checkpoint
from cilearn.engine.runner import Run
from helpers import digits_config, make_run


@pytest.fixture(scope="module")
def icarl_run(tmp_path_factory):
    """iCaRL trained on the first two tasks (teacher = the model after task 0)."""
    run = make_run(tmp_path_factory.mktemp("icarl"), {"name": "icarl", "memory_size": 40,
                                                      "classifiers": ["nme", "head", "knn", "svm", "mlp"]},
                   num_tasks=3)
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
    run.method.grow_head(second)
    run.method.begin_task(second)
    teacher = run.method.teacher.model
    assert teacher is not None and not teacher.training
    assert run.method.teacher.num_classes == len(first.seen_classes)
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


# --- iCaRL's objective against the original formula ------------------------------------------------------
def original_icarl_loss(logits, labels, teacher_logits):
    """The iCaRL paper / Theano code, written as plainly as possible: the network has every class's output;
    targets are one-hot over all outputs (0 for classes not seen yet), the old classes' columns replaced by
    the previous network's sigmoid outputs; one sigmoid BCE averaged over the batch and every output."""
    n, outputs = logits.shape
    total = torch.zeros(())
    for i in range(n):
        for c in range(outputs):
            if teacher_logits is not None and c < teacher_logits.shape[1]:
                y = torch.sigmoid(teacher_logits[i, c])
            else:
                y = torch.tensor(1.0 if c == labels[i] else 0.0)
            p = torch.sigmoid(logits[i, c])
            total = total - (y * torch.log(p) + (1 - y) * torch.log(1 - p))
    return total / (n * outputs)


def _batch(inputs, labels):
    from cilearn.methods import Batch
    return Batch(inputs=inputs, images=inputs, labels=labels, task_ids=labels // 2, indices=torch.arange(len(labels)))


@pytest.mark.parametrize("task_number", [1, 3])
def test_icarl_loss_and_gradient_equal_the_original_formula(tmp_path, task_number):
    """iCaRL has all 10 outputs from the first task (head: full); at task 1 (no teacher) and task 3 (teacher
    with 4 old classes) its loss value and its gradients equal the original single-BCE formula."""
    from cilearn.methods import Output

    run = make_run(tmp_path, {"name": "icarl", "memory_size": 40}, num_tasks=5)
    for task in run.scenario[: task_number - 1]:
        run.run_task(task)
    task = run.scenario[task_number - 1]
    run.method.grow_head(task)
    run.method.begin_task(task)
    assert run.model.num_classes == 10  # every output from the start
    inputs = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(task_number))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])[: 2 * task_number].repeat(6)[:6]  # old (exemplars) and new
    features = run.model.features(inputs)
    logits = run.model.head(features)
    loss = run.method.loss(Output(features, logits), _batch(inputs, labels))
    teacher = run.method.teacher.model(inputs)[:, : 2 * (task_number - 1)] if task_number > 1 else None
    expected = original_icarl_loss(logits.double(), labels, None if teacher is None else teacher.double())
    assert torch.allclose(loss.double(), expected, rtol=1e-6, atol=1e-7)
    got = torch.autograd.grad(loss, list(run.model.parameters()), retain_graph=True)
    want = torch.autograd.grad(original_icarl_loss(logits, labels, teacher), list(run.model.parameters()))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("task_number", [1, 3])
def test_growing_head_bce_has_the_original_gradient_per_output(tmp_path, task_number):
    """With a growing head (outputs of unseen classes absent), ``bce_average: all_classes`` divides by every
    class of the scenario: each existing output gets exactly the original formula's gradient.  The cilearn
    0.1 normalisation (``seen_classes``) is (10 / seen) times larger."""
    from cilearn.methods import Output

    run = make_run(tmp_path, {"name": "icarl", "memory_size": 40, "head": "growing"}, num_tasks=5)
    assert make_run(tmp_path / "b", {"name": "icarl", "memory_size": 40, "head": "growing",
                                     "bce_average": "seen_classes"}, num_tasks=5).method.objective.normaliser is None
    for task in run.scenario[: task_number - 1]:
        run.run_task(task)
    task = run.scenario[task_number - 1]
    run.method.grow_head(task)
    run.method.begin_task(task)
    seen = 2 * task_number
    assert run.model.num_classes == seen and run.method.objective.normaliser == 10
    inputs = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    labels = torch.arange(6) % seen
    logits = run.model(inputs).detach().requires_grad_(True)
    loss = run.method.loss(Output(torch.zeros(6, 1), logits), _batch(inputs, labels))
    got = torch.autograd.grad(loss, logits)[0]
    teacher = run.method.teacher.model(inputs) if task_number > 1 else None
    # the original network: the same seen logits plus 10 - seen outputs of classes not seen yet
    full = torch.cat([logits.detach(), torch.randn(6, 10 - seen)], 1).requires_grad_(True)
    want = torch.autograd.grad(original_icarl_loss(full, labels, teacher), full)[0][:, :seen]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)
    run.method.objective.normaliser = None  # bce_average: seen_classes
    loss = run.method.loss(Output(torch.zeros(6, 1), logits), _batch(inputs, labels))
    assert torch.allclose(torch.autograd.grad(loss, logits)[0], want * (10 / seen), rtol=1e-5, atol=1e-8)


def test_lwf_distillation_has_no_t2_factor(tmp_path):
    """Li & Hoiem's L_old: -Σ softmax(teacher/T) · log softmax(logits/T), averaged over the batch, T = 2, no T²;
    ``kd_t2_scaling: true`` gives Hinton's T²-scaled version."""
    from cilearn.methods import Output

    values = {}
    for scaled in (False, True):
        run = make_run(tmp_path / str(scaled), {"name": "lwf", "kd_t2_scaling": scaled}, num_tasks=2)
        run.run_task(run.scenario[0])
        second = run.scenario[1]
        run.method.grow_head(second)
        run.method.begin_task(second)
        inputs = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
        labels = torch.tensor([2, 3, 2, 3, 2])
        logits = run.model(inputs)
        values[scaled] = run.method.loss(Output(torch.zeros(5, 1), logits), _batch(inputs, labels))
        q = torch.softmax(run.method.teacher.model(inputs) / 2, 1)
        l_old = -(q * torch.log_softmax(logits[:, :2] / 2, 1)).sum(1).mean()
        l_new = F.cross_entropy(logits[:, 2:], labels - 2)  # the new task's outputs
        expected = l_new + (4 if scaled else 1) * l_old
        assert torch.allclose(values[scaled], expected, atol=1e-6)


# --- loss variants ------------------------------------------------------------------------------------
PAIRS = [(c, d) for c in ("bce", "ce", "mse") for d in ("bce", "mse", "kd")]


@pytest.mark.parametrize("outputs", ["new", "all"])
@pytest.mark.parametrize("balance", ["sum", "outputs"])
def test_every_loss_pair_is_finite(icarl_run, outputs, balance):
    from cilearn.methods import Output

    method = icarl_run.method
    saved = method.objective.setup
    try:
        for cls, dist in PAIRS:
            method.objective.setup = LossSetup(cls, dist, outputs, balance)
            inputs = torch.randn(16, 1, 8, 8)
            logits = icarl_run.model(inputs)
            targets = torch.arange(16) % 4  # old (0, 1) and new (2, 3) classes, as with exemplars
            loss = method.loss(Output(torch.zeros(16, 1), logits), _batch(inputs, targets))
            assert loss.ndim == 0 and torch.isfinite(loss), (cls, dist)
            icarl_run.model.zero_grad()
            loss.backward()
            assert all(torch.isfinite(p.grad).all() for p in icarl_run.model.parameters() if p.grad is not None)
    finally:
        method.objective.setup = saved
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
    if method.fitted.flip:
        g = infer(memory.images, flip=True)[0].numpy()
        f = (f + g / np.linalg.norm(g, axis=1, keepdims=True)) / 2
    classes = sorted(set(memory.labels.tolist()))
    means = np.stack([f[memory.labels == c].mean(0) for c in classes])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    test = np.concatenate([t.test.images for t in icarl_run.scenario[:2]])
    test_features = infer(test)[0]
    t = test_features.numpy() / np.linalg.norm(test_features.numpy(), axis=1, keepdims=True)
    expected = np.asarray(classes)[((t[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    assert np.array_equal(method.fitted.nme(test_features, None).numpy(), expected)
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
    fresh = make_run(tmp_path / "fresh", to_dict(icarl_run.cfg.method), num_tasks=3)
    for size in [s.stop - s.start for s in icarl_run.model.head.task_slices]:
        fresh.model.add_classes(size)
    fresh.method.load_state_dict(state)
    new = fresh.method
    assert np.array_equal(new.memory.images, method.memory.images)
    assert np.array_equal(new.memory.labels, method.memory.labels)
    assert np.array_equal(new.memory.rank, method.memory.rank)
    assert new.teacher and new.teacher.num_classes == method.teacher.num_classes
    for (k, a), (_, b) in zip(new.teacher.model.state_dict().items(), method.teacher.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert all(not p.requires_grad for p in new.teacher.model.parameters()) and not new.teacher.model.training
    assert torch.equal(new.fitted.nme.means, method.fitted.nme.means)


def test_lwf_state_without_teacher(tmp_path):
    run = make_run(tmp_path, {"name": "lwf"}, num_tasks=2)
    assert run.method.state_dict() == {"teacher_chunks": 0}
    run.method.load_state_dict({"teacher_chunks": 0})
    assert not run.method.teacher


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
    from cilearn.experiment import resume_experiment

    full = Run(parse_config(_resume_config(method)), tmp_path / "full").execute()

    after_task = tmp_path / "after_task"
    Run(parse_config(_resume_config(method)), after_task).execute()
    (after_task / "checkpoints" / "task_02.pt").unlink()  # as if it had stopped after its second task
    resume_experiment(after_task)

    inside = tmp_path / "inside_task"
    cls = METHODS.get(method["name"]).factory
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


# --- van de Ven & Tolias's iCaRL objective (GMvandeVen/continual-learning, branch preprints, encoder.py) ---
def vandeven_icarl_loss(logits, labels, teacher_logits, n_seen, temperature=2.0):
    """Their ``train_a_batch`` for the current batch, written plainly: only the active classes' outputs
    (``y_hat[:, active_classes]``); targets one-hot for the task's new classes, ``sigmoid(scores / KD_temp)``
    for the old ones; ``binary_cross_entropy_with_logits(reduction='none').sum(dim=1).mean()``."""
    n = logits.shape[0]
    n_old = 0 if teacher_logits is None else teacher_logits.shape[1]
    total = torch.zeros((), dtype=logits.dtype)
    for i in range(n):
        for c in range(n_seen):
            if c < n_old:
                y = torch.sigmoid(teacher_logits[i, c] / temperature)
            else:
                y = torch.tensor(1.0 if c == labels[i] else 0.0, dtype=logits.dtype)
            total = total + F.softplus(logits[i, c]) - logits[i, c] * y  # = BCE with logits
    return total / n


VANDEVEN_ICARL = {"name": "icarl", "memory_size": 40, "head": "full", "bce_outputs": "seen", "bce_reduction": "sum",
                  "bce_target_temperature": 2.0}


def test_vandeven_icarl_loss_on_a_case_computed_by_hand(tmp_path):
    """One sample of new class 3 at the second task (2 old classes, 4 seen, 10 outputs): the terms are
    softplus(x) − x·y per seen output; the outputs of classes not seen yet (logit 9) add nothing."""
    run = make_run(tmp_path, VANDEVEN_ICARL, num_tasks=5)
    objective = run.method.objective
    logits = torch.tensor([[2.0, 0.0, 0.0, -1.0] + [9.0] * 6], dtype=torch.float64)
    teacher = torch.tensor([[4.0, -2.0]], dtype=torch.float64)
    loss = objective(logits, torch.tensor([3]), teacher, n_seen=4)
    sp = lambda x: float(np.log1p(np.exp(x)))  # noqa: E731
    sig = lambda x: 1 / (1 + float(np.exp(-x)))  # noqa: E731
    # output 0: target σ(4/2) = σ(2); output 1: σ(−1), logit 0 → ln 2; output 2: target 0, logit 0 → ln 2;
    # output 3: target 1, logit −1 → softplus(−1) + 1 = softplus(1)
    by_hand = (sp(2.0) - 2.0 * sig(2.0)) + np.log(2) + np.log(2) + sp(1.0)
    assert abs(float(loss) - by_hand) < 1e-12
    assert abs(float(loss) - float(vandeven_icarl_loss(logits, torch.tensor([3]), teacher, 4))) < 1e-12
    # each option on its own moves the loss: the original (all outputs, mean, T = 1) is another number
    default = make_run(tmp_path / "default", {"name": "icarl", "memory_size": 40}, num_tasks=5).method.objective
    assert abs(float(default(logits, torch.tensor([3]), teacher, n_seen=4)) - by_hand) > 0.1


def test_vandeven_icarl_loss_and_gradient_equal_their_formula(tmp_path):
    """Second task, a batch of new samples and exemplars of the old classes: loss and gradients of every
    parameter equal their formula; outputs of classes not seen yet get no gradient."""
    from cilearn.methods import Output

    run = make_run(tmp_path, VANDEVEN_ICARL, num_tasks=5)
    run.run_task(run.scenario[0])
    task = run.scenario[1]
    run.method.grow_head(task)
    run.method.begin_task(task)
    assert run.model.num_classes == 10
    inputs = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 3, 2, 3])  # two exemplars of the old classes, four new samples
    features = run.model.features(inputs)
    logits = run.model.head(features)
    loss = run.method.loss(Output(features, logits), _batch(inputs, labels))
    teacher = run.method.teacher.model(inputs)[:, :2]
    expected = vandeven_icarl_loss(logits, labels, teacher, n_seen=4)
    assert torch.allclose(loss, expected, rtol=1e-6, atol=1e-6)
    got = torch.autograd.grad(loss, [logits], retain_graph=True)[0]
    want = torch.autograd.grad(expected, [logits])[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)
    assert torch.all(got[:, 4:] == 0)


def test_bce_sum_needs_the_bce_pair(tmp_path):
    with pytest.raises(ConfigError, match="bce_reduction"):
        make_run(tmp_path, {"name": "lwf", "bce_reduction": "sum"}, num_tasks=2)


# --- van de Ven & Tolias's LwF (branch preprints: train.py replay_mode "current", encoder.py, utils.py) -------
def vandeven_lwf_loss(logits, labels, teacher_logits, task, temperature=2.0):
    """Their ``train_a_batch`` with the current batch replayed (``x_ = x``) through the previous model:
    ``rnt · CE(y_hat[:, active], y) + (1 − rnt) · loss_fn_kd(y_hat[:, previous active], scores_, T)``, rnt = 1/task;
    ``loss_fn_kd`` = −Σ softmax(target/T)·log_softmax(scores/T), summed over classes, batch mean, × T², where
    ``scores`` are the replay's ``y_hat[:, active_classes]``, every class seen so far, and the target distribution
    over the old classes gets zeros appended for the new ones."""
    n, n_seen = logits.shape
    ce = sum(-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(n)) / n
    n_old = teacher_logits.shape[1]
    kd = 0.0
    for i in range(n):
        target = torch.cat([torch.softmax(teacher_logits[i] / temperature, 0),
                            torch.zeros(n_seen - n_old, dtype=logits.dtype)])
        kd = kd - (target * torch.log_softmax(logits[i] / temperature, 0)).sum()
    kd = kd / n * temperature ** 2
    rnt = 1.0 / task
    return rnt * ce + (1 - rnt) * kd


VANDEVEN_LWF = {"name": "lwf", "classification_outputs": "all", "distillation_loss": "kd", "temperature": 2.0,
                "kd_t2_scaling": True, "balance": "classes", "distillation_outputs": "seen"}


def test_vandeven_lwf_loss_and_gradient_equal_their_formula(tmp_path):
    """Third task (4 old classes, 6 seen): cilearn's lwf with balance: classes is their LwF, loss and gradient;
    the default balance (sum) is another loss."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([4, 5, 5, 4, 5])
    objective = make_run(tmp_path, VANDEVEN_LWF, num_tasks=5).method.objective
    loss = objective(logits, labels, teacher, n_seen=6)
    expected = vandeven_lwf_loss(logits, labels, teacher, task=3)
    assert abs(loss.item() - expected.item()) < 1e-12
    got, = torch.autograd.grad(loss, [logits])
    want, = torch.autograd.grad(expected, [logits])
    assert torch.allclose(got, want, atol=1e-12)
    for other in ({"balance": "sum"}, {"distillation_outputs": "old"}):  # each option on its own changes the loss
        plain = make_run(tmp_path / str(other), {**VANDEVEN_LWF, **other}, num_tasks=5).method.objective
        assert abs(plain(logits, labels, teacher, n_seen=6).item() - expected.item()) > 0.1, other
    # the first task has no teacher: the plain cross-entropy, as their rnt = 1
    # their 10-output layer (head: full): the outputs of classes not seen yet take no part
    full = make_run(tmp_path / "full", {**VANDEVEN_LWF, "head": "full"}, num_tasks=5).method.objective
    wide = torch.cat([logits.detach(), torch.full((5, 4), 7.0, dtype=torch.float64)], dim=1)
    assert abs(full(wide, labels, teacher, n_seen=6).item() - expected.item()) < 1e-12
    first_labels = torch.tensor([0, 1, 1, 0, 1])
    first = objective(logits[:, :2], first_labels, None, n_seen=2)
    assert abs(first.item() - F.cross_entropy(logits[:, :2], first_labels).item()) < 1e-12


def test_distillation_over_seen_outputs_needs_kd(tmp_path):
    with pytest.raises(ConfigError, match="distillation_outputs"):
        make_run(tmp_path, {"name": "lwf", "distillation_loss": "bce", "distillation_outputs": "seen"}, num_tasks=2)


def kd_t2(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Their ``loss_fn_kd`` written out: −Σ softmax(teacher/T)·log_softmax(student/T), batch mean, × T²."""
    target = torch.softmax(teacher / temperature, 1)
    return -(target * torch.log_softmax(student / temperature, 1)).sum(1).mean() * temperature ** 2


def test_balance_tasks_is_their_rnt_in_domain_il_and_task_il():
    """``balance: tasks``: (1/t)·CE + (1 − 1/t)·KD·T² in task t, their ``rnt = 1/task`` itself. In Domain-IL no
    class is new (two shared outputs, n_old = n_seen), where ``classes`` would give the current data no weight; in
    Task-IL the CE uses the sample's own task's outputs and the KD is the mean over earlier tasks of one softmax per
    task's outputs (their replay loss per previous task, averaged)."""
    gen = torch.Generator().manual_seed(3)
    setup = LossSetup("ce", "kd", "all", "tasks")
    # Domain-IL, task 3: two outputs, the teacher's over the same two
    logits = torch.randn(6, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    objective = DistillationObjective(setup, 1.0, 2.0, True, None)
    got = objective(logits, labels, teacher, n_seen=2, task_number=3)
    want = F.cross_entropy(logits, labels) / 3 + (2 / 3) * kd_t2(logits, teacher)
    assert abs(got.item() - want.item()) < 1e-12
    classes = DistillationObjective(LossSetup("ce", "kd", "all", "classes"), 1.0, 2.0, True, None)
    assert abs(classes(logits, labels, teacher, n_seen=2, task_number=3).item()
               - kd_t2(logits, teacher).item()) < 1e-12  # n_old / n_seen = 1: the current labels are lost
    # Task-IL, task 3 of heads [0, 2), [2, 4), [4, 6): the stream's samples belong to task 3
    logits = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([4, 5, 5, 4, 5])
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[:, 4:6] = True
    slices = [slice(0, 2), slice(2, 4), slice(4, 6)]
    objective = DistillationObjective(setup, 1.0, 2.0, True, None, task_slices=slices)
    got = objective(logits, labels, teacher, n_seen=6, mask=mask, task_number=3)
    want = (F.cross_entropy(logits[:, 4:6], labels - 4) / 3
            + (2 / 3) * (kd_t2(logits[:, 0:2], teacher[:, 0:2]) + kd_t2(logits[:, 2:4], teacher[:, 2:4])) / 2)
    assert abs(got.item() - want.item()) < 1e-12
    g_got, = torch.autograd.grad(got, [logits])
    g_want, = torch.autograd.grad(want, [logits])
    assert torch.allclose(g_got, g_want, atol=1e-12)
    with pytest.raises(ConfigError, match="balance"):
        parse_config(digits_config(method={"name": "lwf", "balance": "task"}))
