"""``head: full`` for the methods whose objective is the classification loss (+ a penalty or a gate): fine-tuning,
SI and XdG (EWC's and DGR's own tests cover theirs), and LwF's in Task-IL (its per-task distillation by hand).
van de Ven & Tolias's code gives every method one output layer of all 10 digits, stepped by one Adam from the first
task; in Task-IL each sample's loss covers its own task's two outputs.  What that changes against a head per task
is the optimizer: a task's outputs exist (with zero gradients) before their task, so Adam's step count has advanced
and their first updates are not Adam's first step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import method_on

from cilearn.cli import main
from cilearn.data import load_dataset
from cilearn.methods.base import Batch
from cilearn.scenarios import class_incremental


@pytest.fixture(scope="module")
def task_il():
    return class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=3, task_incremental=True)


make = method_on


def batch_of(method, task, n: int = 32) -> Batch:
    images = torch.from_numpy(task.train.images[:n]).permute(0, 3, 1, 2)
    labels = torch.as_tensor(task.train.labels[:n])
    return Batch(inputs=method.context.augment.normalize(images), images=images, labels=labels,
                 task_ids=torch.full_like(labels, task.index), indices=torch.arange(n))


@pytest.mark.parametrize("name", ["finetune", "si", "xdg"])
def test_full_head_has_every_output_from_the_first_task_and_each_loss_uses_its_own_tasks(task_il, name):
    method = make(task_il, name, head="full")
    assert method.full_head and not make(task_il, name).full_head  # growing stays the default
    method.grow_head(task_il[0])
    assert method.model.num_classes == 10  # the tasks num_tasks leaves out keep their outputs
    task = task_il[1]
    method.begin_task(task)
    if name == "xdg":
        method.begin_stage(method.stages(task)[0])
    batch = batch_of(method, task)
    method.model.zero_grad()
    out = method.forward(batch)
    loss = method.loss(out, batch)
    expected = F.cross_entropy(out.logits.detach()[:, 2:4], batch.labels - 2)  # task 1 holds classes 2 and 3
    torch.testing.assert_close(loss, expected)  # SI: no penalty before the first task's end
    loss.backward()
    chunks = method.model.head.chunks
    assert chunks[1].weight.grad.abs().sum() > 0
    assert all(chunk.weight.grad is not None and not chunk.weight.grad.any() for i, chunk in enumerate(chunks)
               if i != 1)  # part of the graph, with zero gradients: an optimizer steps them (their one layer)


def test_full_head_gives_a_new_tasks_outputs_adams_later_step_as_their_one_layer(task_il):
    """One Adam step on task 0, then one on task 1.  Task 1's outputs had a zero gradient at step 1, so their first
    real update is Adam's step 2 with m = (1 - β1)·g, v = (1 - β2)·g² and the bias corrections of t = 2:
    lr · (0.1 g / 0.19) / (sqrt(0.001 g² / 0.001999) + ε) ≈ 0.744 · lr · sign(g), against lr · sign(g) for a head
    per task whose outputs start with Adam's first step."""
    lr = 0.01
    moved = {}
    for head in ("full", "growing"):
        method = make(task_il, "finetune", head=head)
        optimizer = None
        for task in task_il[:2]:
            method.grow_head(task)
            method.begin_task(task)
            if optimizer is None:
                optimizer = torch.optim.Adam(method.model.parameters(), lr=lr)
            else:  # a head per task: its new outputs join the optimizer now (none are new with head: full)
                known = {id(p) for group in optimizer.param_groups for p in group["params"]}
                new = [p for p in method.model.parameters() if id(p) not in known]
                assert bool(new) == (head == "growing")
                if new:
                    optimizer.add_param_group({"params": new})
            batch = batch_of(method, task)
            optimizer.zero_grad()
            method.loss(method.forward(batch), batch).backward()
            bias = method.model.head.chunks[-1 if head == "growing" else 1].bias  # task 1's outputs at task 1
            before, grad = bias.detach().clone(), bias.grad.clone()
            optimizer.step()
        moved[head] = (bias.detach() - before, grad)
    step, grad = moved["full"]
    m_hat = 0.1 * grad / (1 - 0.9 ** 2)
    v_hat = 0.001 * grad.square() / (1 - 0.999 ** 2)
    torch.testing.assert_close(step, -lr * m_hat / (v_hat.sqrt() + 1e-8))
    step, grad = moved["growing"]
    torch.testing.assert_close(step, -lr * grad / (grad.abs() + 1e-8))  # Adam's first step: lr · sign(g)


def test_si_head_full_keeps_the_seen_outputs_and_all_outputs_still_implies_it():
    scenario = class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=3)
    full = make(scenario, "si", head="full")
    assert full.full_head and not full.all_outputs
    full.grow_head(scenario[0])
    full.begin_task(scenario[0])
    batch = batch_of(full, scenario[0])
    out = full.forward(batch)
    torch.testing.assert_close(full.loss(out, batch), F.cross_entropy(out.logits.detach()[:, :2], batch.labels))
    everything = make(scenario, "si", classification_outputs="all")
    assert everything.full_head and everything.all_outputs
    everything.grow_head(scenario[0])
    everything.begin_task(scenario[0])
    out = everything.forward(batch)
    torch.testing.assert_close(everything.loss(out, batch), F.cross_entropy(out.logits.detach(), batch.labels))


def test_cli_task_il_runs_with_their_one_output_layer(tmp_path: Path):
    config = tmp_path / "til.yaml"
    config.write_text("""
data: {name: digits}
scenario: {type: task_incremental, classes_per_task: 2, class_order: sorted, num_tasks: 3}
model: {name: mlp, options: {hidden: [32]}}
methods:
  - {name: finetune, head: full, label: none}
  - {name: si, si_c: 1.0, head: full}
  - {name: xdg, gating_prop: 0.5, head: full}
  - {name: lwf, classification_outputs: all, distillation_loss: kd, temperature: 2.0, balance: tasks, head: full}
train: {iterations: 20, batch_size: 32, optimizer: adam, optimizer_state: keep, lr: 0.001, scheduler: constant,
        progress: false}
""")
    out = tmp_path / "runs"
    assert main(["run", str(config), "--out", str(out)]) == 0
    for label in ("none", "si", "xdg", "lwf"):
        run = out / label
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["complete"], label
        aware = metrics["classifiers"]["head_task_aware"]
        assert len(aware["accuracy_matrix"]) == 3 and aware["last_accuracy"] > 0.6, label
        first = torch.load(run / "checkpoints" / "task_00.pt", weights_only=True)
        assert "head.chunks.4.weight" in first["model"], label  # every output after the first task


def test_task_il_lwf_on_their_one_layer_is_their_per_task_distillation(task_il):
    """Their Task-IL LwF (train.py replay "current" + distill, encoder.py train_a_batch) on one 10-output layer, in
    task t = 3 (1-based): (1/t)·CE over the batch's own task's two outputs + (1 − 1/t)·the mean over the two earlier
    tasks of T²·KD between the previous model's softmax and the student's, each over that task's two outputs
    (T 2); the later tasks' outputs get exactly zero gradient."""
    method = make(task_il, "lwf", classification_outputs="all", distillation_loss="kd", temperature=2.0,
                  kd_t2_scaling=True, balance="tasks", head="full")
    assert method.full_head
    method.grow_head(task_il[0])
    assert method.model.num_classes == 10
    for task in task_il[:2]:  # the teacher of task 2 is the model as task 1 left it
        method.begin_task(task)
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # the student moves away from its teacher
    method.begin_task(task_il[2])
    teacher = method.teacher.model
    batch = batch_of(method, task_il[2])
    method.model.zero_grad()
    out = method.forward(batch)
    loss = method.loss(out, batch)
    logits = out.logits.detach()
    with torch.no_grad():
        old = teacher(batch.inputs)

    def kd(cols):
        q = F.softmax(old[:, cols] / 2, 1)
        return -(q * F.log_softmax(logits[:, cols] / 2, 1)).sum(1).mean() * 4

    current = F.cross_entropy(logits[:, 4:6], batch.labels - 4)  # task 2 holds classes 4 and 5
    expected = current / 3 + (2 / 3) * (kd(slice(0, 2)) + kd(slice(2, 4))) / 2
    torch.testing.assert_close(loss, expected)
    loss.backward()
    chunks = method.model.head.chunks
    assert all(chunks[i].weight.grad.abs().sum() > 0 for i in range(3))
    assert all(not chunks[i].weight.grad.any() for i in range(3, 5))


def test_icarl_and_l2_still_refuse_one_layer_in_task_il(task_il):
    """iCaRL's and L2's full head stays class-incremental only (LwF's is their Task-IL layer, above)."""
    from cilearn.errors import ConfigError

    for name in ("icarl", "l2"):
        with pytest.raises(ConfigError, match="task-incremental scenarios need one head per task"):
            make(task_il, name, head="full").check(task_il)
