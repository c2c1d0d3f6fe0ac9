"""Training stages declare what they train, what stays fixed, their schedule, data and objective (``Stage``);
the shared loop applies it, so that a method's hooks need not ask which stage runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import make_run

from cilearn.augment import BatchAugment
from cilearn.config import TrainConfig, parse_config
from cilearn.data import ImageData
from cilearn.engine.runner import Run
from cilearn.engine.train import Trainer
from cilearn.experiment import resume_experiment
from cilearn.methods import Method, MethodContext, MethodOptions, Stage, register
from cilearn.models import build_model

CPU = torch.device("cpu")


class Watcher(Method):
    """Fine-tuning that records, at every step, which backbone parameters would get a gradient and in which
    mode the backbone's BatchNorm and the head ran."""

    def __init__(self, options, model, context):
        super().__init__(options, model, context)
        self.backbone_requires_grad: set[bool] = set()
        self.modes: set[tuple[bool, bool]] = set()
        batchnorm = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
        chunk = model.head.chunks[0]
        batchnorm.register_forward_pre_hook(lambda module, args: self.modes.add((module.training, chunk.training)))

    def before_step(self, optimizer):
        self.backbone_requires_grad |= {p.requires_grad for p in self.model.backbone.parameters()}


def tiny_resnet():
    """A ResNet-20 (BatchNorm) with a 4-class head, a finetuning method that watches it, a trainer and data."""
    torch.manual_seed(0)
    model = build_model("resnet20", 3, 8)
    model.add_classes(4)
    augment = BatchAugment((0.5,) * 3, (0.25,) * 3)
    method = Watcher(MethodOptions(name="finetune"), model,
                     MethodContext(scenario=None, device=CPU, seed=0, infer=None, augment=augment))
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, scheduler="constant", progress=False, channels_last=False)
    images = np.random.RandomState(0).randint(0, 256, (48, 8, 8, 3), dtype=np.uint8)
    data = ImageData(images, np.arange(48) % 4, ["a", "b", "c", "d"])
    return model, method, Trainer(cfg, CPU, augment), data


def copied(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def identical(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_a_stage_that_trains_the_head_fixes_the_backbone_and_its_batchnorm_statistics():
    model, method, trainer, data = tiny_resnet()
    backbone, head = copied(model.backbone), copied(model.head)
    trainer.start(method, Stage("head", epochs=2, lr=0.01, trains="head"))
    assert trainer.cfg.epochs == 2
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [0.01]
    assert trainer.optimizer.param_groups[0]["params"] == list(model.head.parameters())
    trainer.fit(model, method, data)
    assert identical(model.backbone, backbone)  # weights and BatchNorm running statistics, bit for bit
    assert not identical(model.head, head)
    assert method.backbone_requires_grad == {False}  # no gradient, no graph through the fixed backbone
    assert method.modes == {(False, True)}  # the backbone ran in eval mode, the trained head in training mode
    # afterwards the model is as before the stage: every parameter trainable, in training mode
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_a_stage_may_keep_the_fixed_part_in_training_mode():
    model, method, trainer, data = tiny_resnet()
    weights = {k: v.clone() for k, v in model.backbone.named_parameters()}
    statistics = [m.running_mean.clone() for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    trainer.start(method, Stage("head", trains=model.head, frozen_in_eval=False))
    trainer.fit(model, method, data)
    assert all(torch.equal(p, weights[k]) for k, p in model.backbone.named_parameters())
    after = [m.running_mean for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not any(torch.equal(a, b) for a, b in zip(after, statistics))  # BatchNorm kept updating
    assert method.modes == {(True, True)}


def test_a_stage_that_trains_everything_changes_nothing_of_the_model():
    model, method, trainer, data = tiny_resnet()
    trainer.start(method, Stage())
    assert trainer.optimizer.param_groups[0]["params"] == list(model.parameters())
    trainer.fit(model, method, data)
    assert method.backbone_requires_grad == {True} and method.modes == {(True, True)}


def test_what_a_stage_trains_is_named_by_path_parameters_or_a_function():
    model, method, trainer, _ = tiny_resnet()
    model.add_classes(2)
    second = model.head.chunks[1]
    for trains in ("head.chunks.1", second, [second.weight, second, second.bias], lambda: second):
        trainer.start(method, Stage(trains=trains))
        assert trainer.optimizer.param_groups[0]["params"] == [second.weight, second.bias]  # each once, in order
    with pytest.raises(ValueError, match="no such submodule"):
        trainer.start(method, Stage("bias", trains="head.chunks.7"))


def test_stage_schedule_fields_and_plain_override_dicts_reach_the_optimizer():
    model, method, trainer, _ = tiny_resnet()
    trainer.start(method, Stage(overrides={"lr": 0.02, "epochs": 3, "scheduler": "constant"}))  # the older way
    assert trainer.cfg.epochs == 3 and trainer.optimizer.param_groups[0]["lr"] == 0.02
    trainer.start(method, {"lr": 0.03})  # a plain dict: the overrides of a stage that trains everything
    assert trainer.optimizer.param_groups[0]["lr"] == 0.03 and trainer.cfg.epochs == 1
    trainer.start(method, Stage(lr=None, epochs=None))  # None: the run's
    assert trainer.optimizer.param_groups[0]["lr"] == 0.05
    with pytest.raises(ValueError, match="lr is given twice"):
        Stage(lr=0.1, overrides={"lr": 0.2})


class DeclaredStages(Method):
    """Fine-tuning, then a stage on the first 20 samples that trains only the head's biases with its own loss."""

    name = "declared_stages_test"

    def __init__(self, options, model, context):
        super().__init__(options, model, context)
        self.events: list[str] = []

    def stages(self, task):
        biases = [chunk.bias for chunk in self.model.head.chunks]
        return [Stage(), Stage("bias", epochs=2, lr=0.01, overrides={"milestones": []}, trains=biases,
                               data=lambda: self.first_samples(task), loss=self.bias_loss)]

    def begin_stage(self, stage):
        super().begin_stage(stage)
        self.events.append(f"begin {stage.name}")

    def first_samples(self, task):
        self.events.append("data")
        return ImageData(task.train.images[:20], task.train.labels[:20], task.train.class_names)

    def loss(self, out, batch):
        self.events.append("method loss")
        return super().loss(out, batch)

    def bias_loss(self, out, batch):
        self.events.append("bias loss")
        return super().loss(out, batch)


register(DeclaredStages)


def test_the_run_applies_a_stages_data_parameters_and_loss(tmp_path):
    run = make_run(tmp_path, {"name": "declared_stages_test"}, num_tasks=1, epochs=1)
    task = run.scenario[0]
    run.method.grow_head(task)
    run.method.begin_task(task)
    stages = run.method.stages(task)
    run.run_stage(task, stages, 0, None)
    before = copied(run.model)
    data = run.run_stage(task, stages, 1, None)
    assert len(data) == 20 and run.trainer.cfg.epochs == 2
    changed = {k for k, v in run.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.chunks.0.bias"}
    events = run.method.events
    second = events.index("begin bias")
    assert events[second + 1] == "data"  # the data function runs when its stage begins
    assert set(events[:second]) == {"begin train", "method loss"} and set(events[second + 2:]) == {"bias loss"}


def _run_config(method: dict) -> dict:
    return {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": 2},
            "model": {"name": "mlp", "options": {"hidden": [24]}}, "method": method,
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "progress": False, "eval_every": 1,
                      "checkpoint_every": 1},
            "output": {"save_features": False}, "seed": 1}


def _results(folder) -> tuple[list[str], list]:
    log = [line.rsplit(",", 1)[0] for line in (folder / "log.csv").read_text().splitlines()]  # minus seconds
    return log, json.loads((folder / "metrics.json").read_text())["accuracy_matrix"]


@pytest.mark.parametrize("method, stop_in_stage", [
    ({"name": "bic", "memory_size": 30, "bias_epochs": 2}, 1),
    ({"name": "podnet", "memory_size": 30, "proxies": 2, "finetune_epochs": 2}, 1),
    ({"name": "lwf", "warmup_epochs": 2}, 0),
], ids=["bic", "podnet", "lwf"])
def test_runs_stopped_inside_a_declared_stage_resume_exactly(method, stop_in_stage, tmp_path, monkeypatch):
    """BiC's bias stage, PODNet's fine-tuning and LwF's warm-up declare their data and parameters when the
    task's stages are listed: a resumed run lists them again from the restored state, and trains the same."""
    reference = tmp_path / "reference"
    Run(parse_config(_run_config(method)), reference).execute()
    original = Run.save

    def save_then_stop(self, task_index, stage, next_epoch):
        original(self, task_index, stage, next_epoch)
        if (task_index, stage, next_epoch) == (1, stop_in_stage, 1):
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        Run(parse_config(_run_config(method)), tmp_path / "stopped").execute()
    monkeypatch.setattr(Run, "save", original)
    resume_experiment(tmp_path / "stopped")
    assert _results(tmp_path / "stopped") == _results(reference)
