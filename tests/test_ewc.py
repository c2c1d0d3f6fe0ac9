"""Online EWC: Fisher estimate, penalty, growing heads, state, and a task-incremental CLI run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cilearn.augment import BatchAugment
from cilearn.cli import main
from cilearn.data import load_dataset
from cilearn.evaluate import Inference
from cilearn.methods import MethodContext, method_class, method_options
from cilearn.models import build_model
from cilearn.scenarios import class_incremental


@pytest.fixture(scope="module")
def scenario():
    return class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=3)


def make_ewc(scenario, **options):
    torch.manual_seed(0)
    model = build_model("mlp", 1, 8, hidden=[16])
    augment = BatchAugment(scenario.mean, scenario.std)
    device = torch.device("cpu")
    context = MethodContext(scenario=scenario, device=device, seed=0,
                            infer=Inference(model, augment, device, 256), augment=augment)
    return method_class("ewc")(method_options({"name": "ewc", **options}), model, context)


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
    method.fisher = {"head.chunks.0.weight": torch.ones(1, 16)}
    method.anchor = {"head.chunks.0.weight": weight.detach()[:1].clone()}
    with torch.no_grad():
        weight[1].add_(5.0)  # outside the anchored slice: free
    assert method.penalty().item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        weight[0].add_(1.0)
    assert method.penalty().item() == pytest.approx(0.5 * 2.0 * 16, rel=1e-5)


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
    assert "head.chunks.1.weight" in state["method"]["fisher"]
