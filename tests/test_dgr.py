"""Deep generative replay as van de Ven & Tolias's code computes it: the VAE's loss by hand, the classifier's
(1/t)-weighted objective with hard and distilled replay targets, the generator's own step, and runs through
the CLI (beside fine-tuning; task-incremental with a head per task; refused under torchrun)."""

from __future__ import annotations

import copy as copy_module
import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import digits_config
from test_replay_methods import make_method, start, stream_batch

from cilearn.cli import main
from cilearn.data import load_dataset
from cilearn.errors import ConfigError
from cilearn.models.vae import VAE
from cilearn.rundir import write_yaml
from cilearn.scenarios import class_incremental, create


@pytest.fixture(scope="module")
def scenario():
    return class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=3)


def test_vae_loss_is_their_averaged_bce_plus_kl_per_pixel():
    """Their loss_function with average=True: mean over pixels of BCE(sigmoid(decoder(z)), x), z = μ + ε·σ, plus
    −½·Σ_z(1 + log σ² − μ² − σ²) / pixels, both averaged over the batch; written out with plain tensor algebra."""
    torch.manual_seed(0)
    vae = VAE((1, 2, 3), hidden=[5, 4], z_dim=3)
    images = torch.rand(4, 1, 2, 3)
    got = vae.loss(images, torch.Generator().manual_seed(11))
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(11))
    x = images.reshape(4, 6)
    def linear(layer, v):
        return v @ layer.weight.T + (layer.bias if layer.bias is not None else 0)

    e, d = vae.encoder, vae.decoder  # Flatten, Linear, ReLU, Linear, ReLU / Linear, ReLU, Linear, ReLU, Linear
    h = torch.relu(linear(e[3], torch.relu(linear(e[1], x))))
    mean, logvar = linear(vae.to_mean, h), linear(vae.to_logvar, h)
    z = mean + noise * torch.exp(logvar / 2)
    out = torch.sigmoid(linear(d[4], torch.relu(linear(d[2], torch.relu(linear(d[0], z))))))
    bce = -(x * torch.log(out) + (1 - x) * torch.log(1 - out)).mean(1)
    kl = -0.5 * (1 + logvar - mean ** 2 - logvar.exp()).sum(1)
    assert got.item() == pytest.approx((bce.mean() + kl.mean() / 6).item(), rel=1e-5)
    assert vae.to_logvar.bias is None  # their logvar layer has no bias
    samples = vae.sample(7, torch.Generator().manual_seed(1))
    assert samples.shape == (7, 1, 2, 3) and 0 <= samples.min() and samples.max() <= 1


def second_task(scenario, **options):
    """A DGR method in its second task (t = 2), after a short first task, and a stream batch of it."""
    method = make_method(scenario, "dgr", generator_hidden=[12], z_dim=4, **options)
    method.grow_head(scenario[0])  # as the run does (a domain stream adds no outputs after the first experience)
    method.begin_task(scenario[0])
    first = stream_batch(method, scenario[0], list(range(0, 40)))
    for _ in range(3):
        method.after_step(first, method.forward(first))
    method.grow_head(scenario[1])
    method.begin_task(scenario[1])
    return method, stream_batch(method, scenario[1], list(range(0, 16)))


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_the_classifier_loss_is_their_weighted_sum(scenario, targets):
    """Task 2: ½·CE(stream, 4 seen outputs) + ½·L_replay on 16 images the previous generator decodes, labelled by
    the previous model over the 2 old classes: CE with its argmax (DGR) or T²·KD of its softmax padded with zeros
    (DGR+distill)."""
    method, batch = second_task(scenario, replay_targets=targets, temperature=2.0)
    state = method.rng.get_state()
    out = method.forward(batch)
    loss = method.loss(out, batch)
    replayed = method.previous_generator.sample(16, torch.Generator().set_state(state))
    assert torch.equal(replayed, method._replayed) and out.logits.shape == (32, 4)
    inputs = method.context.augment.normalize(replayed)
    with torch.no_grad():
        teacher = method.teacher.model(inputs)
        logits = method.model(torch.cat([batch.inputs, inputs]))
    assert teacher.shape[1] == 2  # the previous model knows the old classes only
    current = F.cross_entropy(logits[:16], batch.labels)
    student = logits[16:]
    if targets == "hard":
        replay = F.cross_entropy(student, teacher.argmax(1))
    else:
        q = torch.cat([F.softmax(teacher / 2, 1), torch.zeros(16, 2)], 1)
        replay = -(q * F.log_softmax(student / 2, 1)).sum(1).mean() * 4
    assert loss.item() == pytest.approx((0.5 * current + 0.5 * replay).item(), rel=1e-5)


def test_the_first_task_trains_on_the_stream_alone(scenario):
    method = make_method(scenario, "dgr", generator_hidden=[12], z_dim=4)
    start(method, scenario[0])
    batch = stream_batch(method, scenario[0], list(range(8)))
    out = method.forward(batch)
    assert out.logits.shape[0] == 8 and method._replayed is None and method.previous_generator is None
    assert method.loss(out, batch).item() == pytest.approx(F.cross_entropy(out.logits, batch.labels).item())


def test_the_generator_step_is_adam_on_the_weighted_vae_loss(scenario):
    """after_step: one Adam step (lr 0.001, betas 0.9/0.999) of the generator on ½·VAE(stream images in [0, 1]) +
    ½·VAE(this step's replayed images) in task 2, with the noise of the method's generator."""
    method, batch = second_task(scenario)
    out = method.forward(batch)
    copy = VAE((1, 8, 8), [12], 4)
    copy.load_state_dict(method.generator.state_dict())
    adam = torch.optim.Adam(copy.parameters(), lr=1e-3, betas=(0.9, 0.999))
    adam.load_state_dict(copy_module.deepcopy(method.generator_optimizer.state_dict()))  # not its moments' tensors
    rng = torch.Generator().set_state(method.rng.get_state())
    expected = 0.5 * copy.loss(batch.images.float() / 255, rng) + 0.5 * copy.loss(method._replayed, rng)
    adam.zero_grad()
    expected.backward()
    adam.step()
    method.after_step(batch, out)
    for mine, theirs in zip(method.generator.parameters(), copy.parameters()):
        assert torch.allclose(mine, theirs, atol=1e-7)
    assert not torch.equal(method.previous_generator.to_mean.weight, method.generator.to_mean.weight)


def test_state_round_trip_keeps_both_generators_and_the_noise(scenario):
    method, batch = second_task(scenario, replay_targets="soft")
    state = method.state_dict()
    other = make_method(scenario, "dgr", generator_hidden=[12], z_dim=4, replay_targets="soft")
    start(other, scenario[0])
    start(other, scenario[1])
    other.load_state_dict(state)
    a, b = method.forward(batch), other.forward(batch)
    assert torch.equal(method._replayed, other._replayed) and torch.equal(a.logits, b.logits)
    assert method.loss(a, batch).item() == other.loss(b, batch).item()


def dgr_config(**method):
    return digits_config(scenario={"num_tasks": 3}, method={"name": "dgr", "generator_hidden": [64], "z_dim": 8,
                                                            **method},
                         train={"epochs": 3, "eval_every": 0}, seed=0)


def test_dgr_runs_from_a_config_and_keeps_more_than_fine_tuning(tmp_path):
    path = tmp_path / "dgr.yaml"
    write_yaml(path, dgr_config(replay_targets="soft"))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads(next((tmp_path / "run").rglob("metrics.json")).read_text())
    assert metrics["complete"] and metrics["tasks_done"] == 3
    fine = tmp_path / "finetune.yaml"
    write_yaml(fine, {**dgr_config(), "method": {"name": "finetune"}})
    assert main(["run", str(fine), "--out", str(tmp_path / "fine")]) == 0
    forgot = json.loads(next((tmp_path / "fine").rglob("metrics.json")).read_text())
    assert forgot["accuracy_matrix"][-1][0] == 0.0  # fine-tuning loses the first task entirely
    assert metrics["accuracy_matrix"][-1][0] > 0.0 and math.isfinite(metrics["last_accuracy"])


@pytest.mark.parametrize("head", ["growing", "full"])
@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_task_incremental_replay_is_their_mean_over_earlier_tasks_heads(targets, head):
    """Task-IL, task 3 (their scenario "task"): ⅓·CE(stream, its own task's 2 outputs) + ⅔·mean over tasks 1 and 2
    of the replay loss on that task's 2 outputs, the targets the previous model's argmax (or softmax at T 2)
    over the same 2 outputs; with a head per task or their one layer of every output (``head: full``)."""
    scenario = class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=4, task_incremental=True)
    method, _ = second_task(scenario, replay_targets=targets, temperature=2.0, head=head)
    method.check(scenario)  # a full head is accepted in Task-IL
    second = stream_batch(method, scenario[1], list(range(0, 40)))
    method.after_step(second, method.forward(second))
    method.grow_head(scenario[2])
    method.begin_task(scenario[2])
    batch = stream_batch(method, scenario[2], list(range(0, 16)))
    state = method.rng.get_state()
    out = method.forward(batch)
    loss = method.loss(out, batch)
    replayed = method.previous_generator.sample(16, torch.Generator().set_state(state))
    inputs = method.context.augment.normalize(replayed)
    with torch.no_grad():
        teacher = method.teacher.model(inputs)
        logits = method.model(torch.cat([batch.inputs, inputs]))
    # a full head has all 10 outputs of the split (num_tasks=4 keeps the left-out task's); the seen ones score
    full = head == "full"
    assert method.model.num_classes == (10 if full else 6) and teacher.shape[1] == (10 if full else 4)
    teacher, logits = teacher[:, :4], logits[:, :6]
    current = F.cross_entropy(logits[:16, 4:6], batch.labels - 4)  # the stream's own head
    per_task = []
    for outputs in (slice(0, 2), slice(2, 4)):
        student, old = logits[16:, outputs], teacher[:, outputs]
        if targets == "hard":
            per_task.append(F.cross_entropy(student, old.argmax(1)))
        else:
            per_task.append(-(F.softmax(old / 2, 1) * F.log_softmax(student / 2, 1)).sum(1).mean() * 4)
    expected = current / 3 + (2 / 3) * (per_task[0] + per_task[1]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("head", ["growing", "full"])
def test_dgr_runs_a_task_incremental_config(tmp_path, head):
    """Task-IL from a config, with a head per task or every output from the start (their one 10-unit layer; the
    task-aware evaluation then scores each task with its own outputs among those of the tasks seen)."""
    config = dgr_config(head=head)
    config["scenario"]["type"] = "task_incremental"
    path = tmp_path / "til.yaml"
    write_yaml(path, config)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads(next((tmp_path / "run").rglob("metrics.json")).read_text())
    assert metrics["complete"] and metrics["tasks_done"] == 3
    assert metrics["accuracy_matrix"][-1][0] > 0.5  # task 1 scored on its own two outputs is kept


def test_dgr_refuses_torchrun():
    scenario = class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=3)
    method = make_method(scenario, "dgr", generator_hidden=[12], z_dim=4)
    method.context.distributed = object()
    with pytest.raises(ConfigError, match="without torchrun"):
        method.check(scenario)


def test_dgr_in_a_domain_stream_replays_over_the_shared_outputs(tmp_path):
    """Domain-IL (their split stream: two outputs shared by every task): the previous model labels replayed images
    over both outputs, and the run completes with every experience scored."""
    config = digits_config(scenario={"type": "domain_incremental",
                                     "options": {"stream": "split", "classes_per_task": 2, "class_order": "sorted"}},
                           method={"name": "dgr", "generator_hidden": [32], "z_dim": 4},
                           train={"epochs": 1, "eval_every": 0}, seed=0)
    for key in ("classes_per_task", "class_order", "num_tasks"):
        config["scenario"].pop(key, None)
    path = tmp_path / "domain.yaml"
    write_yaml(path, config)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads(next((tmp_path / "run").rglob("metrics.json")).read_text())
    assert metrics["complete"] and len(metrics["accuracy_matrix"]) == 5


def test_the_domain_streams_teacher_scores_both_shared_outputs():
    scenario = create("digits", type="domain_incremental",
                      options={"stream": "split", "classes_per_task": 2, "class_order": "sorted"})
    method, batch = second_task(scenario)
    out = method.forward(batch)
    assert method.teacher.num_classes == 2 and method._teacher_logits.shape == (16, 2)
    assert out.logits.shape == (32, 2) and torch.isfinite(method.loss(out, batch))
