"""BiC and WA: each method's defining mechanism on a tiny hand-checkable case, and what the methods on the exemplar
memory share (BiC/WA's objective, LUCIR/PODNet's feature distillation, the scenario check).

Kill/resume, state round trips and option checks of these methods are covered by tests/test_contract.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import make_run

from cilearn.config import parse_config
from cilearn.engine.runner import Run
from cilearn.errors import ConfigError
from cilearn.methods.bic import BiasCorrectedHead
from cilearn.methods.parts.rehearsal import balanced_distillation, feature_distillation
from cilearn.methods.wa import align_weights
from cilearn.models import IncrementalHead


def start_task(run: Run, task) -> list:
    """Grow the head and begin ``task``; its stages."""
    run.method.grow_head(task)
    run.method.begin_task(task)
    return run.method.stages(task)


def changed_parameters(run: Run, before: dict) -> set[str]:
    return {k for k, v in run.model.state_dict().items() if not torch.equal(v, before[k])}


def snapshot(run: Run) -> dict:
    return {k: v.clone() for k, v in run.model.state_dict().items()}


# --- shared: the objective of BiC and WA, the feature distillation of LUCIR and PODNet ------------------
def test_balanced_distillation_is_the_papers_weighted_sum():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.5, -1.0]])
    labels = torch.tensor([2, 0])
    teacher = torch.tensor([[1.0, -1.0], [0.0, 2.0]])  # two old classes, one new: λ = 2/3
    ce = (-(1.0 - math.log(math.exp(2) + 1 + math.exp(1))) - (0.5 - math.log(math.exp(0.5) + math.exp(1.5)
                                                                               + math.exp(-1)))) / 2

    def kd(row, target, t=2.0):  # -Σ softmax(target/T) log softmax(row/T)
        q = [math.exp(v / t) for v in target]
        q = [v / sum(q) for v in q]
        z = math.log(sum(math.exp(v / t) for v in row))
        return -sum(qi * (v / t - z) for qi, v in zip(q, row))

    kd_mean = (kd([2.0, 0.0], [1.0, -1.0]) + kd([0.5, 1.5], [0.0, 2.0])) / 2
    got = balanced_distillation(logits, labels, teacher, temperature=2.0)
    assert got.item() == pytest.approx(ce / 3 + 2 * kd_mean / 3, rel=1e-6)
    assert balanced_distillation(logits, labels, None, 2.0).item() == pytest.approx(ce, rel=1e-6)


def test_feature_distillation_is_one_minus_cosine():
    f = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    old = torch.tensor([[0.0, 2.0], [3.0, 4.0]])  # orthogonal (1 - 0), identical direction (1 - 1)
    assert feature_distillation(f, old).item() == pytest.approx(0.5)


def test_memory_methods_refuse_other_scenarios(tmp_path):
    raw = {"data": {"name": "digits"}, "scenario": {"type": "task_incremental", "classes_per_task": 2},
           "model": {"name": "mlp", "options": {"hidden": [8]}}, "method": {"name": "wa", "memory_size": 40},
           "train": {"progress": False}}
    with pytest.raises(ConfigError, match="class-incremental method"):
        Run(parse_config(raw), tmp_path / "run").setup()


# --- BiC ---------------------------------------------------------------------------------------------
def test_bic_correction_changes_only_the_new_classes_logits():
    torch.manual_seed(0)
    head = BiasCorrectedHead(4)
    head.grow(2)
    head.grow(3)
    with torch.no_grad():
        head.alpha[1].fill_(2.0)
        head.beta[1].fill_(-0.5)
    features = torch.randn(5, 4)
    raw = head.raw(features)
    out = head(features)
    assert torch.equal(out[:, :2], raw[:, :2])  # old classes: exactly the uncorrected logits
    assert torch.allclose(out[:, 2:], 2.0 * raw[:, 2:] - 0.5)  # new classes: α·o + β


def test_bic_holds_out_a_balanced_set_that_stage_one_never_sees(tmp_path):
    run = make_run(tmp_path, {"name": "bic", "memory_size": 40, "bias_epochs": 2}, num_tasks=2)
    run.run_task(run.scenario[0])
    task = run.scenario[1]
    stages = start_task(run, task)
    assert [s.name for s in stages] == ["train", "bias"]
    method = run.method
    # 40 // 4 classes = 10 per class, ceil(0.1 · 10) = 1 held out for each of the 4 classes seen
    assert sorted(method.heldout.labels.tolist()) == [0, 1, 2, 3]
    run.method.begin_stage(stages[0])
    trained = run.method.training_data(task)
    held = {bytes(img) for img, label in zip(method.heldout.images, method.heldout.labels) if label >= 2}
    assert len(held) == 2 and not held & {bytes(img) for img in trained.images}
    assert len(trained) == len(task.train) - 2 + len(method.memory)
    # after task 1 the memory kept 40 // 2 = 20 per class minus the 2 held out
    assert np.bincount(method.memory.labels).tolist() == [18, 18]


def test_bic_bias_stage_trains_only_this_tasks_alpha_and_beta(tmp_path):
    run = make_run(tmp_path, {"name": "bic", "memory_size": 40, "bias_epochs": 3}, num_tasks=2)
    run.run_task(run.scenario[0])
    task = run.scenario[1]
    stages = start_task(run, task)
    run.run_stage(task, stages, 0, None)
    before = snapshot(run)
    data = run.run_stage(task, stages, 1, None)
    assert changed_parameters(run, before) == {"head.alpha.1", "head.beta.1"}
    assert np.bincount(data.labels).tolist() == [1, 1, 1, 1]  # the balanced held-out set
    # stage 1 kept the correction at the identity: the first task's never moves
    assert run.model.head.alpha[0].item() == 1.0 and run.model.head.beta[0].item() == 0.0


def test_bic_refuses_a_memory_too_small_to_hold_out(tmp_path):
    with pytest.raises(ConfigError, match="too few to hold out"):
        make_run(tmp_path, {"name": "bic", "memory_size": 4}, num_tasks=2)


# --- WA ----------------------------------------------------------------------------------------------
def test_wa_aligns_the_mean_norms_and_scales_the_new_logits_by_gamma():
    head = IncrementalHead(2, bias=False)
    head.grow(2)
    head.grow(2)
    with torch.no_grad():
        head.chunks[0].weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))   # norms 5, 1: mean 3
        head.chunks[1].weight.copy_(torch.tensor([[6.0, 8.0], [0.0, 2.0]]))   # norms 10, 2: mean 6
    features = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    before = head(features)
    gamma = align_weights(head, 1)
    assert gamma == pytest.approx(0.5)  # 3 / 6
    norms = [chunk.weight.norm(dim=1).mean().item() for chunk in head.chunks]
    assert norms[0] == pytest.approx(norms[1]) == pytest.approx(3.0)
    after = head(features)
    assert torch.equal(after[:, :2], before[:, :2])
    # by hand: new weights [[3, 4], [0, 1]] → logits [3·1 + 4·2, 0·1 + 1·2] = [11, 2] and [-2.5, -1]
    assert after[:, 2:].tolist() == [[11.0, 2.0], [-2.5, -1.0]]
    assert torch.allclose(after[:, 2:], 0.5 * before[:, 2:])


def test_wa_clips_weights_and_aligns_after_each_task(tmp_path):
    run = make_run(tmp_path, {"name": "wa", "memory_size": 40}, num_tasks=2, epochs=2)
    assert isinstance(run.model.head, IncrementalHead) and all(c.bias is None for c in run.model.head.chunks)
    for task in run.scenario:
        run.run_task(task)
        assert all(bool((chunk.weight >= 0).all()) for chunk in run.model.head.chunks)  # clipped every step
    old, new = (chunk.weight.norm(dim=1).mean().item() for chunk in run.model.head.chunks)
    assert old == pytest.approx(new, rel=1e-5)


# --- what a user runs -----------------------------------------------------------------------------------
def test_cli_lists_every_memory_methods_options_with_its_papers_defaults(capsys):
    from cilearn import cli

    assert cli.main(["list", "--options"]) == 0
    out = capsys.readouterr().out
    for line in ["val_fraction (a number, default 0.1)", "bias_epochs (an integer, default 200)",
                 "clip_weights (true or false, default True)", "lambda_base (a number, default 5.0)",
                 "margin (a number, default 0.5)", "hard_negatives (an integer, default 2)",
                 "proxies (an integer, default 10)", "pod_spatial (a number, default 3.0)",
                 "pod_flat (a number, default 1.0)", "finetune_epochs (an integer, default 20)"]:
        assert line in out, line


def test_cli_runs_the_four_methods_from_one_config(tmp_path):
    import json

    import yaml

    from cilearn import cli

    config = tmp_path / "four.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "digits"}, "scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": 2},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "methods": [{"name": "bic", "memory_size": 40, "bias_epochs": 2}, {"name": "wa", "memory_size": 40},
                    {"name": "lucir", "memory_size": 40},
                    {"name": "podnet", "memory_size": 40, "proxies": 2, "finetune_epochs": 1}],
        "train": {"epochs": 1, "batch_size": 32, "progress": False, "eval_every": 0},
        "output": {"save_features": False, "save_checkpoints": False}}))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "out")]) == 0
    for name in ["bic", "wa", "lucir", "podnet"]:
        metrics = json.loads((tmp_path / "out" / name / "metrics.json").read_text())
        assert metrics["complete"] and metrics["classifier"] == "head" and set(metrics["classifiers"]) == {"head",
                                                                                                          "nme"}
    assert cli.main(["run", str(config), "--out", str(tmp_path / "bad"), "--set", "methods=[{name: bic, "
                     "memory_size: 4}]"]) == 2  # too small to hold out a bias-correction set: refused
    assert not (tmp_path / "bad").exists()
