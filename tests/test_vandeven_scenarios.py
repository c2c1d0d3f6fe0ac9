"""van de Ven & Tolias's Task-IL and Domain-IL protocols (configs/published/vandeven2019_split_mnist_{task,domain}_il
.yaml): in Task-IL each task's loss covers only its own two outputs (their ``active_classes`` for scenario "task");
in Domain-IL two outputs serve every task (the stream's labels: tests/test_streams.py)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from cilearn.config import load_runs, parse_config
from cilearn.engine.runner import Run

PUBLISHED = Path(__file__).resolve().parents[1] / "configs/published"
CONFIG = PUBLISHED / "vandeven2019_split_mnist_task_il.yaml"


def their_task_il_loss(logits: torch.Tensor, labels: torch.Tensor, task_classes: list[int]) -> torch.Tensor:
    """Their train.py for scenario "task": cross-entropy over ``y_hat[:, active_classes]`` of the current task,
    the labels shifted into that task's slice, averaged over the batch."""
    first = task_classes[0]
    return F.cross_entropy(logits[:, task_classes], labels - first)


def shipped_run_on_digits(tmp_path, method: dict) -> Run:
    raw = yaml.safe_load(CONFIG.read_text())
    raw.pop("methods")
    raw.pop("seeds")
    raw.update(method=method, seed=1, data={"name": "digits", "normalize": False},
               model={"name": "mlp", "options": {"hidden": [16]}})
    raw["train"].update(iterations=3, progress=False, eval_every=0)
    raw["output"] = {**raw.get("output", {}), "save_checkpoints": False, "save_features": False}
    run = Run(parse_config(raw), tmp_path)
    run.setup()
    return run


def test_each_task_s_loss_covers_only_its_own_two_outputs(tmp_path):
    run = shipped_run_on_digits(tmp_path, {"name": "finetune"})
    scenario = run.scenario
    assert scenario.task_incremental and [len(t.new_classes) for t in scenario] == [2] * 5
    for task in scenario[:2]:
        run.run_task(task)
    task = scenario[1]
    images = torch.as_tensor(task.train.images[:24]).permute(0, 3, 1, 2).float() / 255
    labels = torch.as_tensor(task.train.labels[:24]).long()
    logits = run.model(images)
    assert logits.shape[1] == 4  # the outputs of the two tasks so far
    mine = run.method.classification_loss(logits, labels)
    theirs = their_task_il_loss(logits, labels, [2, 3])
    assert torch.allclose(mine, theirs, atol=1e-6)
    # The other task's outputs get no gradient from this task's loss.
    grad, = torch.autograd.grad(mine, logits)
    assert grad[:, :2].abs().max() == 0 and grad[:, 2:].abs().max() > 0


def test_the_shipped_task_il_config_has_their_task_hyper_parameters():
    """param_values.py (branch preprints), scenario "task", splitMNIST: EWC lambda 1e7, online EWC 1e8 with
    gamma 0.8 (0.8e8 here: their running Fisher is multiplied by gamma once more), SI c 50; seeds 1-20."""
    _, runs = load_runs(CONFIG)
    options = {label.split("/")[0]: cfg.method for label, cfg in runs}
    assert float(options["ewc"].ewc_lambda) == 1.0e7 and options["ewc"].variant == "separate"
    assert float(options["online_ewc"].ewc_lambda) == 0.8e8 and options["online_ewc"].gamma == 0.8
    assert options["si"].si_c == 50.0
    assert all(cfg.scenario.type == "task_incremental" for _, cfg in runs)
    assert sorted({cfg.seed for _, cfg in runs}) == list(range(1, 21))  # their compare_all.py: seeds 1-20


def test_the_shipped_domain_il_config_has_their_domain_hyper_parameters():
    """param_values.py (branch preprints), scenario "domain", splitMNIST: EWC lambda 1e6, online EWC 1e8 with
    gamma 0.7 (0.7e8 here), SI c 500; their relabelled digits as targets 0/1 of a 2-output head."""
    _, runs = load_runs(PUBLISHED / "vandeven2019_split_mnist_domain_il.yaml")
    options = {label.split("/")[0]: cfg.method for label, cfg in runs}
    assert float(options["ewc"].ewc_lambda) == 1.0e6
    assert float(options["online_ewc"].ewc_lambda) == 0.7e8 and options["online_ewc"].gamma == 0.7
    assert options["si"].si_c == 500.0
    scenario = runs[0][1].scenario
    assert scenario.type == "domain_incremental"
    assert (scenario.options.stream, scenario.options.classes_per_task, scenario.options.class_order) == \
        ("split", 2, "vandeven")
