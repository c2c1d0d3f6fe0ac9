"""GEM (Lopez-Paz & Ranzato 2017) as its authors' and Hsu et al.'s code compute it: the dual QP's solution by hand
and by its optimality conditions, the per-task memory (Hsu et al.'s shares and their paper-time double slots),
the gradient the loop steps with, and a run through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import digits_config
from test_replay_methods import make_method, start, stream_batch

from cilearn.cli import main
from cilearn.data import load_dataset
from cilearn.methods.agem import project
from cilearn.methods.gem import DIAGONAL, project_to_cone
from cilearn.rundir import write_yaml
from cilearn.scenarios import class_incremental


@pytest.fixture(scope="module")
def scenario():
    return class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=3)


def test_one_memory_without_margin_or_diagonal_is_agems_projection():
    g, ref = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    out = project_to_cone(g, ref[None], margin=0.0, diagonal=0.0)
    assert torch.allclose(out, project(g, ref), atol=1e-12) and out.tolist() == pytest.approx([0.5, 0.5])


def test_two_memories_project_onto_the_cone_they_allow():
    """Updates allowed by g1 = (1, 1) and g2 = (−1, 1) form the cone x2 ≥ |x1|; (0, −1) is nearest its apex."""
    memories = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    out = project_to_cone(torch.tensor([0.0, -1.0], dtype=torch.float64), memories, margin=0.0, diagonal=0.0)
    assert out.tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    # (0.5, −1) violates both as well; (2, 1) only g2: projected onto g2's boundary x2 = x1
    out = project_to_cone(torch.tensor([2.0, 1.0], dtype=torch.float64), memories, margin=0.0, diagonal=0.0)
    assert out.tolist() == pytest.approx([1.5, 1.5], abs=1e-12)


def test_the_margin_is_a_floor_on_every_dual_variable():
    """v = max(margin, −g·r / (r·r + ε)) for one memory: with g ⟂ r the update still gains margin · r."""
    g, r = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    assert project_to_cone(g, r, margin=0.5).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    g = torch.tensor([1.0, -3.0], dtype=torch.float64)  # g·r = −6: v = 6 / (4 + 1e-3) above the floor
    v = 6 / (4 + DIAGONAL)
    assert project_to_cone(g, r, margin=0.5).tolist() == pytest.approx([1.0, -3.0 + 2 * v], abs=1e-12)


def test_the_solution_meets_the_duals_optimality_conditions():
    """Random case, 5 memories in 40 dimensions: v ≥ margin, ∇ = (GGᵀ + εI)v + Gg ≥ 0 and (v − margin)·∇ = 0
    (the KKT conditions of the dual the authors hand to quadprog)."""
    gen = torch.Generator().manual_seed(3)
    G = torch.randn(5, 40, generator=gen, dtype=torch.float64)
    g = -G.sum(0) + 0.3 * torch.randn(40, generator=gen, dtype=torch.float64)  # conflicts with most of them
    out = project_to_cone(g, G, margin=0.5)
    v = torch.linalg.lstsq(G.T, (out - g)[:, None]).solution[:, 0]  # out = g + Gᵀv
    grad = (G @ G.T + DIAGONAL * torch.eye(5, dtype=torch.float64)) @ v + G @ g
    assert (v >= 0.5 - 1e-9).all() and (grad >= -1e-9).all()
    assert torch.allclose((v - 0.5) * grad, torch.zeros(5, dtype=torch.float64), atol=1e-9)
    assert (v > 0.5 + 1e-6).any()  # some constraint is active: the case is not trivial
    assert (G @ out >= -DIAGONAL * v - 1e-9).all()  # the memories' losses do not rise (to first order, up to ε)


def test_memory_shares_shrink_to_prefixes_and_double_slots_halve_them(scenario):
    """memory_total 30 over 3 tasks: one slot per task keeps 30, then 15 + 15; Hsu et al.'s paper-time code
    (two slots per task) keeps 15 + 15 of task 1, then four slots of 30 // 4 = 7."""
    one = make_method(scenario, "gem", memory_total=30)
    two = make_method(scenario, "gem", memory_total=30, slots_per_task=2)
    for method in (one, two):
        start(method, scenario[0])
        method.end_task(scenario[0], scenario[0].train)
    assert np.bincount(one.buffer_task).tolist() == [30] and np.bincount(two.buffer_task).tolist() == [15, 15]
    first = one.buffer_images.copy()
    assert set(two.buffer_labels.tolist()) <= {0, 1} and not np.array_equal(two.buffer_images[:15],
                                                                             two.buffer_images[15:])
    for method in (one, two):
        start(method, scenario[1])
        method.end_task(scenario[1], scenario[1].train)
    assert np.bincount(one.buffer_task).tolist() == [15, 15]
    assert np.array_equal(one.buffer_images[:15], first[:15])  # a prefix of the first share
    assert np.bincount(two.buffer_task).tolist() == [7, 7, 7, 7]
    assert set(two.buffer_labels[14:].tolist()) <= {2, 3}
    assert len(one.constraints()) == 2 and len(two.constraints()) == 4


def test_training_data_is_the_task_alone_or_hsus_balanced_rehearsal(scenario):
    paper = make_method(scenario, "gem", memory_total=30)
    hsu = make_method(scenario, "gem", memory_total=30, train_on_memory=True)
    for method in (paper, hsu):
        start(method, scenario[0])
        method.end_task(scenario[0], scenario[0].train)
    task = scenario[1]
    assert len(paper.training_data(task)) == len(task.train)
    assert len(hsu.training_data(task)) == len(task.train) + 30 * (len(task.train) // 30)


def test_before_step_replaces_the_gradient_by_the_qp_solution(scenario):
    method = make_method(scenario, "gem", memory_total=30, slots_per_task=2)
    start(method, scenario[0])
    method.end_task(scenario[0], scenario[0].train)
    start(method, scenario[1])
    params = [p for p in method.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    # each slot's gradient, computed independently: cross-entropy over the classes seen (4) on its normalised images
    memories = []
    for slot in (0, 1):
        where = np.flatnonzero(method.buffer_task == slot)
        images = torch.from_numpy(method.buffer_images[where]).permute(0, 3, 1, 2)
        inputs = (images.float() / 255 - torch.tensor(scenario.mean)[:, None, None]) \
            / torch.tensor(scenario.std)[:, None, None]
        loss = F.cross_entropy(method.model(inputs)[:, :4], torch.as_tensor(method.buffer_labels[where]))
        memories.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    memories = torch.stack(memories)
    stream = stream_batch(method, scenario[1], np.arange(32))
    optimizer.zero_grad()
    method.loss(method.forward(stream), stream).backward()
    g = torch.cat([p.grad.reshape(-1) for p in params]).clone()
    assert (memories @ g < 0).any()  # learning task 2 raises task 1's loss: GEM steps in
    method.before_step(optimizer)
    new = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(new, project_to_cone(g, memories, 0.5), atol=1e-5) and method.projected == 1
    assert (memories @ new > 0).all()  # with the margin, every memory's loss now falls to first order


def test_gem_runs_from_a_config_and_keeps_what_fine_tuning_forgets(tmp_path):
    config = digits_config(scenario={"num_tasks": 3}, method={"name": "gem", "memory_total": 40,
                                                              "train_on_memory": True, "slots_per_task": 2},
                           train={"epochs": 1, "eval_every": 0, "optimizer": "sgd", "lr": 0.01, "momentum": 0.0},
                           seed=0)
    path = tmp_path / "gem.yaml"
    write_yaml(path, config)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads(next((tmp_path / "run").rglob("metrics.json")).read_text())
    assert metrics["complete"] and metrics["tasks_done"] == 3
    row = metrics["accuracy_matrix"][-1]
    assert row[0] > 0.5  # the memory keeps task 1 (fine-tuning on this run forgets it: 0 %)
    fine = tmp_path / "finetune.yaml"
    write_yaml(fine, {**config, "method": {"name": "finetune"}})
    assert main(["run", str(fine), "--out", str(tmp_path / "fine")]) == 0
    forgot = json.loads(next((tmp_path / "fine").rglob("metrics.json")).read_text())
    assert forgot["accuracy_matrix"][-1][0] < row[0]
