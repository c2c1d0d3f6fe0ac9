"""The method interface: what a Batch carries, which hooks the loop calls and when, replay samplers, training
stages, and methods/datasets/models registered by separately installed packages (entry points)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cilearn.methods.parts.buffers import ClassBalancedBuffer, ReservoirBuffer
from cilearn.config import parse_config
from cilearn.experiment import resume_experiment
from cilearn.methods import Method, Stage, register
from cilearn.methods.base import METHOD_HOOKS
from cilearn.engine.runner import Run
from helpers import digits_config, installed_plugin, make_run

ROOT = Path(__file__).resolve().parents[1]


class Recorder(Method):
    """Fine-tuning that records what the loop hands it."""

    name = "recorder_test"

    def __init__(self, options, model, context):
        super().__init__(options, model, context)
        self.calls: list[str] = []
        self.batches = []
        self.grads_at_step: list[bool] = []

    def begin_epoch(self, epoch):
        self.calls.append(f"begin_epoch {epoch}")

    def end_epoch(self, epoch):
        self.calls.append(f"end_epoch {epoch}")

    def loss(self, out, batch):
        self.batches.append(batch)
        return super().loss(out, batch)

    def before_step(self, optimizer):
        self.grads_at_step.append(all(p.grad is not None for g in optimizer.param_groups for p in g["params"]))
        self.calls.append("before_step")

    def after_step(self, batch, out):
        self.calls.append("after_step")


register(Recorder)


def test_hooks_are_called_in_order_with_the_batch_they_describe(tmp_path):
    run = make_run(tmp_path, {"name": "recorder_test"}, num_tasks=2, epochs=2)
    task = run.scenario[1]
    run.method.grow_head(run.scenario[0])
    run.method.grow_head(task)
    run.method.begin_task(task)
    run.trainer.start(run.method)
    data = task.train
    run.trainer.fit(run.model, run.method, data, task_index=1)
    steps = len(data) // 32 + (1 if len(data) % 32 > 1 else 0)
    per_epoch = ["before_step", "after_step"] * steps
    assert run.method.calls == (["begin_epoch 0"] + per_epoch + ["end_epoch 0", "begin_epoch 1"] + per_epoch
                                + ["end_epoch 1"])
    assert all(run.method.grads_at_step)  # before_step sees the gradients of this step
    owner = run.scenario.task_of_class()
    for batch in run.method.batches:
        index = batch.indices.numpy()
        stored = torch.from_numpy(data.images[index]).permute(0, 3, 1, 2)
        assert torch.equal(batch.images, stored)  # the un-augmented uint8 images of these samples
        assert torch.equal(batch.labels, torch.as_tensor(data.labels[index]))
        assert torch.equal(batch.task_ids, torch.as_tensor(owner[data.labels[index]]))
        assert batch.inputs.dtype == torch.float32 and batch.inputs.shape == batch.images.shape
        assert batch.replay is None
    seen = np.concatenate([b.indices.numpy() for b in run.method.batches[:steps]])
    assert len(np.unique(seen)) == len(seen)  # one epoch = one permutation


def test_method_hooks_are_documented():
    assert set(METHOD_HOOKS) >= {"forward", "loss", "before_step", "after_step", "begin_task", "end_task",
                                 "begin_epoch", "end_epoch", "stages", "parameter_groups", "training_data",
                                 "classifiers", "exemplars", "state_dict", "load_state_dict"}
    for hook in METHOD_HOOKS:
        assert getattr(Method, hook).__doc__, hook


class ReplayRecorder(Recorder):
    name = "replay_recorder_test"
    replay_batch_size = 8

    def begin_task(self, task):
        super().begin_task(task)
        if self.replay is None:
            self.replay = ReservoirBuffer(20, self.context.device)
        else:
            data = self.context.scenario[0].train
            images = torch.from_numpy(data.images[:20]).permute(0, 3, 1, 2)
            self.replay.add(images, torch.as_tensor(data.labels[:20]),
                            {"marker": torch.arange(20, dtype=torch.float32)[:, None]})


register(ReplayRecorder)


def test_replay_sampler_hands_an_augmented_minibatch_every_step(tmp_path):
    run = make_run(tmp_path, {"name": "replay_recorder_test"}, num_tasks=2, epochs=1)
    run.run_task(run.scenario[0])
    assert all(b.replay is None for b in run.method.batches)  # empty buffer: nothing to replay
    run.method.batches.clear()
    run.run_task(run.scenario[1])
    buffer = run.method.replay
    for batch in run.method.batches:
        replay = batch.replay
        assert replay is not None and len(replay) == 8
        assert set(replay.labels.tolist()) <= {0, 1}  # stored samples of the first task
        assert torch.equal(replay.images, buffer.images[replay.indices])
        assert torch.equal(replay.extras["marker"][:, 0], replay.indices.float())  # extras travel with samples
        assert replay.inputs.dtype == torch.float32


def sequential_reservoir(capacity: int, draws: list[float]) -> list[int]:
    """Vitter's algorithm R one sample at a time, with the given uniform draws: the item in each slot."""
    slots = []
    for i, u in enumerate(draws):
        if i < capacity:
            slots.append(i)
        else:
            j = int(u * (i + 1))
            if j < capacity:
                slots[j] = i
    return slots


def test_reservoir_buffer_is_algorithm_r():
    torch.manual_seed(0)
    buffer = ReservoirBuffer(10)
    draws = []
    for start in range(0, 95, 19):  # batches of 19 stream items; item i has label i
        state = torch.get_rng_state()
        draws += torch.rand(19).double().tolist()
        torch.set_rng_state(state)
        labels = torch.arange(start, start + 19)
        buffer.add(torch.zeros(19, 1, 2, 2, dtype=torch.uint8), labels)
    assert len(buffer) == 10 and buffer.seen == 95
    assert buffer.labels.tolist() == sequential_reservoir(10, draws)


def batchwise_reservoir(capacity: int, batches: list[list[float]]) -> list[int]:
    """Caccia et al.'s ``Buffer.add_reservoir`` (pclucas14/AML buffer.py) written out batch by batch with the given
    uniform draws: every item's slot is floor(u * seen), seen counted before its batch; free slots first."""
    slots: list[int] = []
    seen = 0
    for draws in batches:
        n = len(draws)
        indices = [int(u * seen) for u in draws]
        place_left = max(0, capacity - len(slots))
        for k in range(min(place_left, n)):
            indices[k] = len(slots) + k
        for k, index in enumerate(indices):  # in batch order, so a repeated slot keeps the later item
            if index < capacity:
                if index == len(slots):
                    slots.append(seen + k)
                else:
                    slots[index] = seen + k
        seen += n
    return slots


def test_per_batch_reservoir_is_caccia_et_al_buffer():
    torch.manual_seed(3)
    buffer = ReservoirBuffer(25, draws="per_batch")
    batches = []
    for start in range(0, 200, 10):  # batches of 10 (the ER-ACE paper's); the third straddles the capacity
        state = torch.get_rng_state()
        batches.append(torch.rand(10).double().tolist())
        torch.set_rng_state(state)
        buffer.add(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(start, start + 10))
    assert len(buffer) == 25 and buffer.seen == 200
    assert buffer.labels.tolist() == batchwise_reservoir(25, batches)
    # and it is not algorithm R on the same draws
    assert buffer.labels.tolist() != sequential_reservoir(25, [u for draws in batches for u in draws])


def test_per_batch_reservoir_keeps_a_batch_with_capacity_over_seen_before_it():
    torch.manual_seed(2)
    kept = torch.zeros(100)
    for _ in range(600):
        buffer = ReservoirBuffer(10, draws="per_batch")
        for start in range(0, 100, 50):
            buffer.add(torch.zeros(50, 1, 1, 1, dtype=torch.uint8), torch.arange(start, start + 50))
        kept[buffer.labels] += 1
    # The second batch's 50 items each draw a slot in [0, 50): kept with probability 10/50, repeated slots keep one
    # item, so 10 * (1 - (1 - 1/50)^50) = 6.36 of them are in the buffer on average (algorithm R: 10 * 50/100 = 5).
    second = kept[50:].sum() / 600
    assert abs(second - 10 * (1 - (1 - 1 / 50) ** 50)) < 0.15


def test_reservoir_keeps_every_item_with_the_same_probability():
    torch.manual_seed(1)
    kept = torch.zeros(100)
    for _ in range(400):
        buffer = ReservoirBuffer(10)
        for start in range(0, 100, 25):
            buffer.add(torch.zeros(25, 1, 1, 1, dtype=torch.uint8), torch.arange(start, start + 25))
        kept[buffer.labels] += 1
    share = kept / 400  # expected 10 / 100 for every item
    assert abs(share[:50].mean() - 0.1) < 0.015 and abs(share[50:].mean() - 0.1) < 0.015


def test_class_balanced_buffer_stays_balanced():
    torch.manual_seed(0)
    buffer = ClassBalancedBuffer(12)
    labels = torch.tensor([0] * 30 + [1] * 5 + [2] * 30)
    buffer.add(torch.zeros(len(labels), 1, 1, 1, dtype=torch.uint8), labels)
    # 12 zeros fill it; the ones then take slots of the largest class (share 6), the twos too until every
    # class holds its share 12 // 3 = 4; later twos are refused
    assert buffer.class_counts() == {0: 4, 1: 4, 2: 4} and len(buffer) == 12


class TwoStages(Method):
    """Fine-tuning, then a second stage that trains only the head's biases at a lower learning rate."""

    name = "two_stages_test"

    def stages(self, task):
        return [Stage(), Stage("bias", {"epochs": 2, "lr": 0.01, "milestones": []})]

    def parameter_groups(self):
        if self.stage.name == "bias":
            return [{"params": [chunk.bias for chunk in self.model.head.chunks]}]
        return super().parameter_groups()


register(TwoStages)


def _two_stage_config() -> dict:
    return digits_config(scenario={"num_tasks": 2}, model={"options": {"hidden": [16]}},
                         method={"name": "two_stages_test"}, train={"epochs": 2, "checkpoint_every": 1},
                         output={"save_features": False}, seed=0)


def test_stages_run_in_order_train_their_own_parameters_and_resume(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    Run(parse_config(_two_stage_config()), reference).execute()
    rows = [line.split(",") for line in (reference / "log.csv").read_text().splitlines()[1:]]
    assert [(r[0], r[1], r[2], r[7]) for r in rows] == [
        (t, e, lr, s) for t in "01" for e, lr, s in (("1", "0.05", "train"), ("2", "0.05", "train"),
                                                     ("1", "0.01", "bias"), ("2", "0.01", "bias"))]
    # the bias stage moves only the biases
    run = Run(parse_config(_two_stage_config()), tmp_path / "parts")
    run.setup()
    task = run.scenario[0]
    run.method.grow_head(task)
    run.method.begin_task(task)
    stages = run.method.stages(task)
    run.run_stage(task, stages, 0, None)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.run_stage(task, stages, 1, None)
    changed = {k for k, v in run.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("head.") and k.endswith(".bias") for k in changed)
    # stopped between the stages of task 2 (checkpoint at stage 2, epoch 0) and resumed: the same run
    original = Run.save

    def stop(self, task_index, stage, next_epoch):
        original(self, task_index, stage, next_epoch)
        if (task_index, stage, next_epoch) == (1, 1, 0):
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "save", stop)
    with pytest.raises(KeyboardInterrupt):
        Run(parse_config(_two_stage_config()), tmp_path / "stopped").execute()
    monkeypatch.setattr(Run, "save", original)
    resume_experiment(tmp_path / "stopped")
    strip = lambda p: [line.rsplit(",", 1)[0] for line in (p / "log.csv").read_text().splitlines()]  # noqa: E731
    assert strip(tmp_path / "stopped") == strip(reference)
    assert json.loads((tmp_path / "stopped" / "metrics.json").read_text())["accuracy_matrix"] == \
        json.loads((reference / "metrics.json").read_text())["accuracy_matrix"]


def test_lwf_warmup_trains_only_the_new_outputs(tmp_path):
    run = make_run(tmp_path, {"name": "lwf", "warmup_epochs": 2}, num_tasks=2, epochs=1)
    run.run_task(run.scenario[0])
    task = run.scenario[1]
    run.method.grow_head(task)
    run.method.begin_task(task)
    stages = run.method.stages(task)
    assert [s.name for s in stages] == ["warmup", "train"]
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.run_stage(task, stages, 0, None)
    changed = {k for k, v in run.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.chunks.1.weight", "head.chunks.1.bias"}  # backbone, its BatchNorm and old outputs fixed


# --- plugins: a separately installed package ------------------------------------------------------------
PLUGIN = '''
import numpy as np
import torch
from cilearn.data import DatasetSplits, ImageData
from cilearn.methods import Method


class HalfLoss(Method):
    """plugin method: fine-tuning at half the loss"""
    name = "half_loss"
    description = "plugin method: fine-tuning at half the loss"

    def loss(self, out, batch):
        return 0.5 * super().loss(out, batch)


def load(root, download, size=8, **options):
    """plugin dataset: two noisy classes"""
    rng = np.random.RandomState(0)
    def split(n):
        labels = np.arange(n) % 4
        images = (rng.rand(n, size, size, 1) * 60 + labels[:, None, None, None] * 40).astype(np.uint8)
        return ImageData(images, labels.astype(np.int64), ["a", "b", "c", "d"])
    return DatasetSplits(name="plugin_noise", display_name="plugin noise", train=split(80), test=split(40))


def make(in_channels, image_size, width=8):
    """plugin model: a linear layer on the flattened image"""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size ** 2, width), torch.nn.ReLU())
    net.feature_dim = width
    return net
'''


def test_a_separately_installed_package_registers_a_method_a_dataset_and_a_model(tmp_path):
    env = installed_plugin(tmp_path, "cilearn_plugin_demo", PLUGIN, """\
        [cilearn.methods]
        half_loss = cilearn_plugin_demo:HalfLoss
        [cilearn.datasets]
        plugin_noise = cilearn_plugin_demo:load
        [cilearn.models]
        plugin_linear = cilearn_plugin_demo:make
        """)
    listing = subprocess.run([sys.executable, "-m", "cilearn", "list"], capture_output=True, text=True, env=env,
                             timeout=120)
    assert listing.returncode == 0, listing.stderr
    for line in ("half_loss  plugin method: fine-tuning at half the loss", "plugin_noise", "plugin_linear"):
        assert line in listing.stdout
    config = tmp_path / "plugin.yaml"
    config.write_text(json.dumps({
        "data": {"name": "plugin_noise", "options": {"size": 6}}, "scenario": {"classes_per_task": 2},
        "model": {"name": "plugin_linear", "options": {"width": 12}}, "method": {"name": "half_loss"},
        "train": {"epochs": 1, "batch_size": 16, "progress": False}}))
    run = subprocess.run([sys.executable, "-m", "cilearn", "run", str(config), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["complete"] and metrics["method"] == "half_loss" and metrics["dataset"] == "plugin noise"


# --- the method author's guide -------------------------------------------------------------------------
def test_the_guide_method_runs_and_resumes(tmp_path, monkeypatch):
    """The 30-line method of docs/method_guide.md, executed as written: it trains with a replay minibatch
    every step, and a run stopped inside a task resumes to exactly the uninterrupted results."""
    import re
    import types

    text = (ROOT / "docs" / "method_guide.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 45
    module = types.ModuleType("guide_method")
    monkeypatch.setitem(sys.modules, "guide_method", module)  # dataclasses look their module up
    exec(compile(code, "docs/method_guide.md", "exec"), module.__dict__)  # registers tiny_replay
    raw = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": 3},
           "model": {"name": "mlp", "options": {"hidden": [16]}}, "method": {"name": "tiny_replay", "buffer_size": 50},
           "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "progress": False, "checkpoint_every": 1},
           "output": {"save_features": False}, "seed": 0}
    reference = Run(parse_config(raw), tmp_path / "reference")
    reference.execute()
    assert len(reference.method.replay) == 50 and reference.method.replay.seen > 50
    original = Run.save

    def stop(self, task_index, stage, next_epoch):
        original(self, task_index, stage, next_epoch)
        if (task_index, next_epoch) == (1, 1):
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "save", stop)
    with pytest.raises(KeyboardInterrupt):
        Run(parse_config(raw), tmp_path / "stopped").execute()
    monkeypatch.setattr(Run, "save", original)
    resume_experiment(tmp_path / "stopped")
    got = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    want = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    assert got["accuracy_matrix"] == want["accuracy_matrix"] and got["complete"]
