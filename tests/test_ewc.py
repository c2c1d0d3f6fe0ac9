"""EWC: Fisher estimates (empirical, sampled), online and separate penalties, growing heads, state, and a
task-incremental CLI run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import method_on

from cilearn.cli import main
from cilearn.data import load_dataset
from cilearn.methods import method_options
from cilearn.methods.base import Batch
from cilearn.scenarios import class_incremental


@pytest.fixture(scope="module")
def scenario():
    return class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=3)


def make_ewc(scenario, **options):
    return method_on(scenario, "ewc", **options)


def start(method, task) -> None:
    method.model.add_classes(len(task.new_classes))
    method.begin_task(task)


def test_fisher_matches_a_per_sample_loop(scenario) -> None:
    method = make_ewc(scenario, fisher_samples=20, fisher_batch_size=7)
    task = scenario[0]
    start(method, task)
    fisher = method.estimate_fisher(task.train)
    names = [n for n, _ in method.model.named_parameters()]
    assert set(fisher) == set(names)
    for n, p in method.model.named_parameters():
        assert fisher[n].shape == p.shape and (fisher[n] >= 0).all()
    # The same 20 samples, one backward pass each.
    pick = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(0))[:20].sort().values.numpy()
    expected = {n: torch.zeros_like(p) for n, p in method.model.named_parameters()}
    for i in pick:
        x = method.context.augment.normalize(torch.from_numpy(task.train.images[i:i + 1]).permute(0, 3, 1, 2))
        method.model.zero_grad()
        F.cross_entropy(method.model(x), torch.tensor([task.train.labels[i]])).backward()
        for n, p in method.model.named_parameters():
            expected[n] += p.grad.square() / 20
    for n in names:
        assert torch.allclose(fisher[n], expected[n], atol=1e-6, rtol=1e-4), n


def test_penalty_zero_at_anchor_positive_after_moving(scenario) -> None:
    method = make_ewc(scenario, ewc_lambda=10.0, fisher_samples=50)
    start(method, scenario[0])
    assert method.penalty().item() == 0.0  # no anchor yet
    method.end_task(scenario[0], scenario[0].train)
    assert method.penalty().item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.1)
    expected = 0.5 * 10.0 * sum((f * 0.01).sum().item() for f in method.fisher.values())
    assert method.penalty().item() == pytest.approx(expected, rel=1e-4)
    # The loss adds the penalty, and its gradient pulls back towards the anchor.
    from cilearn.methods import Batch, Output

    inputs, labels = torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])
    logits = method.model(inputs)
    loss = method.loss(Output(torch.zeros(2, 1), logits), Batch(inputs, inputs, labels, labels, torch.arange(2)))
    assert loss.item() > method.classification_loss(logits, torch.tensor([0, 1])).item()


def test_growing_head_and_online_accumulation(scenario) -> None:
    method = make_ewc(scenario, gamma=0.5, fisher_samples=30)
    start(method, scenario[0])
    method.end_task(scenario[0], scenario[0].train)
    first = {n: f.clone() for n, f in method.fisher.items()}
    assert "head.chunks.1.weight" not in first
    start(method, scenario[1])  # the head grows: the new chunk has no Fisher and no penalty
    assert method.penalty().item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        method.model.head.chunks[1].weight.add_(1.0)
    assert method.penalty().item() == pytest.approx(0.0, abs=1e-12)
    current = method.estimate_fisher(scenario[1].train)
    method.end_task(scenario[1], scenario[1].train)
    assert method.fisher["head.chunks.1.weight"].shape == (2, 16)
    for n, f in first.items():  # F ← γ·F + F_task
        assert torch.allclose(method.fisher[n], 0.5 * f + current[n], atol=1e-7)


def test_overlapping_slice_of_a_grown_parameter(scenario) -> None:
    method = make_ewc(scenario, ewc_lambda=2.0)
    start(method, scenario[0])
    weight = method.model.head.chunks[0].weight
    method.load_state_dict({"penalties": [{"fisher": {"head.chunks.0.weight": torch.ones(1, 16)},
                                           "anchor": {"head.chunks.0.weight": weight.detach()[:1].clone()}}]})
    with torch.no_grad():
        weight[1].add_(5.0)  # outside the anchored slice: free
    assert method.penalty().item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        weight[0].add_(1.0)
    assert method.penalty().item() == pytest.approx(0.5 * 2.0 * 16, rel=1e-5)


def _head_bias_probabilities(method, data) -> torch.Tensor:
    x = method.context.augment.normalize(torch.from_numpy(data.images).permute(0, 3, 1, 2))
    method.model.eval()
    with torch.no_grad():
        return F.softmax(method.model(x), dim=1)


def test_empirical_fisher_of_the_head_bias_by_hand(scenario) -> None:
    """For a softmax output, ∂ log p_y / ∂b_k = 1[k = y] − p_k: the empirical Fisher of the bias is the
    mean over samples of (1[k = y] − p_k)²."""
    task = scenario[0]
    method = make_ewc(scenario, fisher_samples=10_000)  # more than the task has: every sample counts
    start(method, task)
    probs = _head_bias_probabilities(method, task.train)
    onehot = F.one_hot(torch.as_tensor(task.train.labels), 2).float()
    expected = (onehot - probs).square().mean(0)
    fisher = method.estimate_fisher(task.train)
    torch.testing.assert_close(fisher["head.chunks.0.bias"], expected, rtol=1e-4, atol=1e-7)


def test_predicted_label_fisher_of_the_head_bias_by_hand(scenario) -> None:
    """fisher: predicted uses ŷ = argmax p(·|x): the bias Fisher is the mean of (1[k = ŷ] − p_k)²."""
    task = scenario[0]
    method = make_ewc(scenario, fisher="predicted", fisher_samples=10_000)
    start(method, task)
    probs = _head_bias_probabilities(method, task.train)
    expected = (F.one_hot(probs.argmax(1), 2).float() - probs).square().mean(0)
    torch.testing.assert_close(method.estimate_fisher(task.train)["head.chunks.0.bias"], expected,
                               rtol=1e-4, atol=1e-7)


def test_full_head_fisher_uses_the_seen_classes_only(scenario) -> None:
    """head: full (van de Ven & Tolias's 10 outputs, their allowed_classes): after task 1 the network has the
    outputs of all 10 classes (the tasks num_tasks leaves out keep theirs), but ŷ and p are taken over the 2
    seen ones — the bias Fisher of the seen outputs is the mean of (1[k = ŷ] − p_k)² with p the softmax of the
    first 2 logits — and later outputs get none."""
    task = scenario[0]
    method = make_ewc(scenario, fisher="predicted", fisher_samples=10_000, head="full")
    method.grow_head(task)
    method.begin_task(task)
    assert method.model.num_classes == 10
    x = method.context.augment.normalize(torch.from_numpy(task.train.images).permute(0, 3, 1, 2))
    method.model.eval()
    with torch.no_grad():
        probs = F.softmax(method.model(x)[:, :2], dim=1)
    expected = (F.one_hot(probs.argmax(1), 2).float() - probs).square().mean(0)
    fisher = method.estimate_fisher(task.train)
    torch.testing.assert_close(fisher["head.chunks.0.bias"], expected, rtol=1e-4, atol=1e-7)
    for later in range(1, 5):
        assert not fisher[f"head.chunks.{later}.bias"].any() and not fisher[f"head.chunks.{later}.weight"].any()


def test_sampled_fisher_is_the_true_fisher_in_expectation(scenario) -> None:
    """Labels drawn from p(·|x): for the bias, E_y[(1[k = y] − p_k)²] = p_k(1 − p_k), whatever the true
    label; the empirical Fisher of the same samples (all labelled 0) is (1[k = 0] − p_k)² instead."""
    task = scenario[0]
    n = 4000
    one = task.train.subset(np.zeros(n, dtype=np.int64))  # one image, n times, label of sample 0
    method = make_ewc(scenario, fisher="sampled", fisher_samples=n, fisher_batch_size=500)
    start(method, task)
    with torch.no_grad():  # a less confident model, so that both labels get drawn
        method.model.head.chunks[0].weight.mul_(0.1)
    p = _head_bias_probabilities(method, one)[0]
    sampled = method.estimate_fisher(one)["head.chunks.0.bias"]
    true_fisher = p * (1 - p)
    assert 0.05 < p.min() and torch.allclose(sampled, true_fisher, rtol=0.06)  # ± 4 standard errors
    y = int(one.labels[0])
    empirical = make_ewc(scenario, fisher_samples=n)
    start(empirical, task)
    empirical.model.load_state_dict(method.model.state_dict())
    expected = (F.one_hot(torch.tensor(y), 2).float() - p).square()
    torch.testing.assert_close(empirical.estimate_fisher(one)["head.chunks.0.bias"], expected, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(sampled, expected, rtol=0.1)
    # the draws are seeded: the same run estimates the same Fisher
    torch.testing.assert_close(method.estimate_fisher(one)["head.chunks.0.bias"], sampled)


def test_separate_ewc_keeps_one_penalty_per_task(scenario) -> None:
    """Kirkpatrick et al.: Σ_t λ/2 Σ F_t (θ − θ*_t)², each past task with its own Fisher and anchor."""
    method = make_ewc(scenario, variant="separate", ewc_lambda=3.0, fisher_samples=40)
    fishers, anchors = [], []
    for task in scenario[:2]:
        start(method, task)
        with torch.no_grad():  # stands for training: the weights move between tasks
            for p in method.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        fishers.append(method.estimate_fisher(task.train))
        method.end_task(task, task.train)
        anchors.append({n: p.detach().clone() for n, p in method.model.named_parameters()})
    assert len(method.penalties) == 2
    for penalty, fisher, anchor in zip(method.penalties, fishers, anchors):
        assert set(penalty.importance) == set(fisher) == set(penalty.anchor)
        for name in fisher:
            torch.testing.assert_close(penalty.importance[name], fisher[name])
            torch.testing.assert_close(penalty.anchor[name], anchor[name])
    start(method, scenario[2])
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.1)
    params = dict(method.model.named_parameters())
    expected = 0.0
    for fisher, anchor in zip(fishers, anchors):
        for name, f in fisher.items():
            theta = params[name][tuple(slice(0, d) for d in f.shape)]  # the slice the task's Fisher covers
            anchored = anchor[name][tuple(slice(0, d) for d in f.shape)]
            expected += 0.5 * 3.0 * (f * (theta - anchored).square()).sum().item()
    assert method.penalty().item() == pytest.approx(expected, rel=1e-5)
    # online EWC with the same data keeps one penalty anchored at the last task only
    online = make_ewc(scenario, ewc_lambda=3.0, fisher_samples=40)
    start(online, scenario[0])
    online.end_task(scenario[0], scenario[0].train)
    start(online, scenario[1])
    online.end_task(scenario[1], scenario[1].train)
    assert len(online.penalties) == 1
    # state round trip keeps both penalties
    fresh = make_ewc(scenario, variant="separate")
    fresh.load_state_dict(method.state_dict())
    assert len(fresh.penalties) == 2
    for ours, theirs in zip(fresh.penalties, method.penalties):
        for part in ("importance", "anchor"):
            assert all(torch.equal(getattr(ours, part)[n], getattr(theirs, part)[n]) for n in getattr(theirs, part))


def test_gamma_only_with_online_ewc() -> None:
    from cilearn.errors import ConfigError

    with pytest.raises(ConfigError, match="variant separate keeps every task's own Fisher"):
        method_options({"name": "ewc", "variant": "separate", "gamma": 0.5})
    with pytest.raises(ConfigError, match="method.fisher: unknown value 'true'"):
        method_options({"name": "ewc", "fisher": "true"})


def test_ewc_loads_the_state_of_earlier_versions(scenario) -> None:
    method = make_ewc(scenario, fisher_samples=10)
    start(method, scenario[0])
    method.end_task(scenario[0], scenario[0].train)
    legacy = {"fisher": dict(method.fisher), "anchor": dict(method.anchor)}  # before "penalties" existed
    fresh = make_ewc(scenario)
    start(fresh, scenario[0])
    fresh.load_state_dict(legacy)
    assert len(fresh.penalties) == 1 and set(fresh.fisher) == set(method.fisher)
    fresh.load_state_dict({"fisher": {}, "anchor": {}})
    assert fresh.penalties == [] and fresh.penalty().item() == 0.0


def test_ewc_state_dict_roundtrip(scenario) -> None:
    method = make_ewc(scenario, fisher_samples=10)
    start(method, scenario[0])
    method.end_task(scenario[0], scenario[0].train)
    state = method.state_dict()
    fresh = make_ewc(scenario)
    start(fresh, scenario[0])
    fresh.load_state_dict(state)
    assert set(fresh.fisher) == set(method.fisher)
    assert all(torch.equal(fresh.anchor[n], method.anchor[n]) for n in method.anchor)


def test_cli_task_incremental_ewc(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tmp_path / "til.yaml"
    config.write_text("""
data: {name: digits}
scenario: {type: task_incremental, classes_per_task: 2, class_order: sorted, num_tasks: 3}
model: {name: mlp, options: {hidden: [32]}}
method: {name: ewc, ewc_lambda: 100, fisher_samples: 100}
train: {epochs: 2, batch_size: 32, lr: 0.05, scheduler: constant, progress: false}
""")
    assert main(["run", str(config), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and set(metrics["classifiers"]) == {"head", "head_task_aware"}
    aware, agnostic = metrics["classifiers"]["head_task_aware"], metrics["classifiers"]["head"]
    assert len(aware["accuracy_matrix"]) == 3
    assert aware["last_accuracy"] >= agnostic["last_accuracy"]
    assert aware["last_accuracy"] > 0.8
    state = torch.load(out / "checkpoints" / "task_02.pt", weights_only=True)
    assert "head.chunks.1.weight" in state["method"]["penalties"][0]["fisher"]


def test_full_head_in_task_il_uses_each_samples_own_task_outputs() -> None:
    """head: full in Task-IL (van de Ven & Tolias's one 10-unit layer, their Task-IL active_classes): every output
    exists from the first task, yet the loss of a sample is the cross-entropy over its own task's two outputs only
    (other outputs get no gradient from it), and the Fisher of a task's outputs is the mean of (1[k = ŷ] − p_k)² with
    p the softmax over those two outputs — the outputs of the other tasks get none."""
    til = class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=3, task_incremental=True)
    method = make_ewc(til, fisher="predicted", fisher_samples=10_000, head="full")
    method.check(til)  # accepted in Task-IL (refused before: one head per task was the only set-up)
    task = til[1]
    method.grow_head(til[0])
    method.begin_task(task)
    assert method.model.num_classes == 10  # the 2 tasks num_tasks leaves out keep their outputs
    images = torch.from_numpy(task.train.images[:32]).permute(0, 3, 1, 2)
    labels = torch.as_tensor(task.train.labels[:32])
    x = method.context.augment.normalize(images)
    batch = Batch(inputs=x, images=images, labels=labels, task_ids=torch.ones_like(labels),
                  indices=torch.arange(32))
    method.model.zero_grad()
    loss = method.loss(method.forward(batch), batch)
    logits = method.model(x).detach()
    expected = F.cross_entropy(logits[:, 2:4], labels - 2)  # task 2 holds classes 2 and 3
    torch.testing.assert_close(loss, expected)
    loss.backward()
    head = method.model.head.chunks
    assert not head[0].weight.grad.any() and not head[2].weight.grad.any()
    assert head[1].weight.grad.abs().sum() > 0
    method.model.eval()
    with torch.no_grad():
        probs = F.softmax(method.model(method.context.augment.normalize(
            torch.from_numpy(task.train.images).permute(0, 3, 1, 2)))[:, 2:4], dim=1)
    fisher = method.estimate_fisher(task.train)
    expected_fisher = (F.one_hot(probs.argmax(1), 2).float() - probs).square().mean(0)
    torch.testing.assert_close(fisher["head.chunks.1.bias"], expected_fisher, rtol=1e-4, atol=1e-7)
    for other in ("head.chunks.0", "head.chunks.2"):
        assert not fisher[f"{other}.bias"].any() and not fisher[f"{other}.weight"].any()
