"""The defining mechanism of each replay method, on tiny hand-checkable cases: ER (stream + same-size replay
minibatch, reservoir or metric-selected buffer), DER/DER++ (stored logits and the logit-matching term),
ER-ACE (the asymmetric mask), A-GEM (the gradient projection), GDumb (class-balanced memory, a network
re-initialised and trained on the memory only)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import digits_config, make_run

from cilearn.augment import BatchAugment
from cilearn.config import TrainConfig, as_they_ran, load_yaml, parse_config, parse_stored_config
from cilearn.data import load_dataset
from cilearn.engine.evaluate import Inference
from cilearn.engine.optim import make_scheduler
from cilearn.engine.runner import Run
from cilearn.engine.train import stage_config
from cilearn.errors import ConfigError
from cilearn.methods import Batch, MethodContext, method_class, method_options
from cilearn.methods.agem import project
from cilearn.methods.er import experience_shares
from cilearn.methods.er_ace import ERACE, present_class_mask
from cilearn.methods.parts.buffers import EarlierTasks, ReservoirBuffer
from cilearn.methods.replay import metric_values, rank
from cilearn.models import build_model
from cilearn.models.net import IncrementalHead
from cilearn.report.model import load_run_model
from cilearn.rundir import write_yaml
from cilearn.scenarios import class_incremental
from cilearn.schema import to_dict


@pytest.fixture(scope="module")
def scenario():
    return class_incremental(load_dataset("digits"), 2, class_order="sorted", num_tasks=3)


def make_method(scenario, name: str, **options):
    torch.manual_seed(0)
    device = torch.device("cpu")
    augment = BatchAugment(scenario.mean, scenario.std)

    def build():
        return build_model("mlp", 1, 8, hidden=[16])

    model = build()
    context = MethodContext(scenario=scenario, device=device, seed=0, infer=Inference(model, augment, device, 256),
                            augment=augment, build_model=build)
    return method_class(name)(method_options({"name": name, **options}), model, context)


def start(method, task) -> None:
    """Grow the head as the run does (all outputs at once for a full-head method) and begin the task."""
    if method.full_head:
        if method.model.num_classes == 0:
            for t in method.context.scenario:
                method.model.add_classes(len(t.new_classes))
    else:
        method.model.add_classes(len(task.new_classes))
    method.begin_task(task)


def stream_batch(method, task, index) -> Batch:
    data = task.train
    images = torch.from_numpy(data.images[index]).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(data.labels[index])
    return Batch(inputs=method.context.augment(images), images=images, labels=labels,
                 task_ids=torch.full_like(labels, task.index), indices=torch.as_tensor(index))


def constant_logits(model, values) -> None:
    """Make the network output ``values`` for every input: zero weights, the head's biases = values."""
    values = torch.as_tensor(values, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for chunk, part in zip(model.head.chunks, values.split([c.out_features for c in model.head.chunks])):
            chunk.bias.copy_(part)


# --- ER ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("outputs", ["all", "seen"])
def test_er_trains_every_step_on_the_stream_batch_plus_a_same_size_replay_minibatch(tmp_path, outputs):
    run = make_run(tmp_path, {"name": "er", "buffer_size": 50, "classification_outputs": outputs}, num_tasks=2,
                   epochs=1)
    method = run.method

    seen = []
    original_loss = method.loss

    def recording_loss(out, batch):
        seen.append((len(batch), None if batch.replay is None else len(batch.replay), out.logits.shape[0],
                     None if batch.replay is None else batch.replay.labels.clone()))
        value = original_loss(out, batch)
        labels = batch.labels if batch.replay is None else torch.cat([batch.labels, batch.replay.labels])
        covered = out.logits.shape[1] if outputs == "all" else method.num_seen
        assert covered == 10 or outputs == "seen"  # all: the 10 classes of the split (num_tasks cuts tasks only)
        expected = F.cross_entropy(out.logits[:, :covered], labels)  # one CE over the joint batch
        assert value.item() == pytest.approx(expected.item(), rel=1e-6)
        return value

    method.loss = recording_loss
    run.run_task(run.scenario[0])
    # all (Mammoth's ER): every class's output from the first task, the CE over all of them; seen: the growing head
    assert method.model.num_classes == (10 if outputs == "all" else 2)
    first = len(seen)
    assert seen[0][1] is None  # the buffer is empty before the first step
    for n, replayed, rows, _ in seen[1:]:
        assert replayed == n and rows == 2 * n  # the same number of replayed samples, in the same forward
    run.run_task(run.scenario[1])
    assert any(bool((labels < 2).any()) for *_, labels in seen[first:])  # old classes come back in task 2
    buffer = method.replay
    assert buffer.seen == sum(len(t.train) for t in run.scenario[:2])  # every stream batch was offered
    assert len(buffer) == 50


def test_earlier_tasks_view_draws_only_the_samples_stored_in_earlier_tasks():
    torch.manual_seed(0)
    buffer = ReservoirBuffer(6)
    buffer.add(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.arange(6),  # label = slot
               {"task_ids": torch.tensor([0, 0, 1, 1, 2, 2])})
    assert len(EarlierTasks(buffer, 0)) == 0  # the first task: nothing to replay
    view = EarlierTasks(buffer, 2)
    assert len(view) == 4 and len(buffer) == 6  # a view: the buffer keeps its six
    for _ in range(20):  # two distinct samples of tasks 0 and 1, never one of task 2 (slots 4, 5)
        drawn = view.sample(2)["labels"].tolist()
        assert len(set(drawn)) == 2 and set(drawn) <= {0, 1, 2, 3}
    # more than there are: each eligible sample once (AML's sample_random returns them all)
    assert sorted(view.sample(10)["labels"].tolist()) == [0, 1, 2, 3]


def test_er_replay_from_earlier_tasks_replays_nothing_in_the_first_task_and_only_old_classes_after(tmp_path):
    run = make_run(tmp_path, {"name": "er", "buffer_size": 50, "replay_from": "earlier_tasks"}, num_tasks=2)
    method, replays = run.method, []
    original_loss = method.loss
    method.loss = lambda out, batch: replays.append(batch.replay) or original_loss(out, batch)
    run.run_task(run.scenario[0])
    first = len(replays)
    assert first > 1 and all(replay is None for replay in replays)  # the buffer fills, but nothing is drawn
    assert len(method.replay) == 50
    run.run_task(run.scenario[1])
    old = set(run.scenario[0].new_classes)
    later = replays[first:]
    assert all(replay is not None for replay in later)
    assert all(set(replay.labels.tolist()) <= old for replay in later)  # never the current task's samples


def test_er_metric_selection_divides_the_buffer_between_experiences(scenario):
    method = make_method(scenario, "er", buffer_size=11, selection="error_l2")
    assert experience_shares(11, 2).tolist() == [6, 5] and experience_shares(11, 3).tolist() == [4, 4, 3]
    rankings = []
    for task in scenario:
        start(method, task)
        method.end_task(task, task.train)
        values = metric_values(method, task.train, "error_l2")
        rankings.append(rank(values, "error_l2", "hardest"))
        store = method.replay
        experience = store.extras["task_ids"][: store.size].numpy()
        ranks = store.extras["rank"][: store.size].numpy()
        shares = experience_shares(11, task.index + 1)
        assert np.bincount(experience, minlength=task.index + 1).tolist() == shares.tolist()
        for e in range(task.index + 1):  # each experience keeps the front of its own ranking (the hardest)
            mine = np.flatnonzero(experience == e)
            mine = mine[np.argsort(ranks[mine])]
            assert ranks[mine].tolist() == list(range(shares[e]))
            expected = torch.from_numpy(scenario[e].train.images[rankings[e][: shares[e]]]).permute(0, 3, 1, 2)
            assert torch.equal(store.images[torch.as_tensor(mine)], expected)
    hardest = rank(np.array([0.1, 0.9, 0.5]), "error_l2", "hardest")
    assert hardest.tolist() == [1, 2, 0]  # large L2 error first


# --- DER / DER++ ---------------------------------------------------------------------------------------
def test_der_stores_the_logits_the_model_produced(scenario):
    method = make_method(scenario, "der", buffer_size=50)
    task = scenario[0]
    start(method, task)
    assert method.model.num_classes == 6  # every class's output from the first task (the paper's network)
    batch = stream_batch(method, task, np.arange(10))
    out = method.forward(batch)
    method.after_step(batch, out)
    stored = method.replay.extras["logits"][:10]
    assert torch.equal(stored, out.logits.detach())  # exactly what the network output, all 6 outputs
    assert torch.equal(method.replay.labels[:10], batch.labels)
    assert torch.equal(method.replay.images[:10], batch.images)  # un-augmented, as the stream stores them


@pytest.mark.parametrize("outputs", ["all", "seen"])
def test_der_and_derpp_replay_terms_equal_the_hand_formula(scenario, outputs):
    task = scenario[0]
    for name, options in (("der", {"alpha": 0.2}), ("derpp", {"alpha": 0.2, "beta": 0.5})):
        method = make_method(scenario, name, buffer_size=20, classification_outputs=outputs, **options)
        start(method, task)
        constant_logits(method.model, [1, 0, 0, 0, 0, 0])
        stream = stream_batch(method, task, np.arange(4))
        stream.labels = torch.zeros(4, dtype=torch.long)
        memory = stream_batch(method, task, np.arange(10, 13))
        # a buffer holding these three samples with stored logits z = 0 (label 0)
        method.replay.add(memory.images, torch.zeros(3, dtype=torch.long),
                          {"logits": torch.zeros(3, 6), "width": torch.full((3,), 6)})
        memory.labels = torch.zeros(3, dtype=torch.long)
        memory.extras = {"logits": torch.zeros(3, 6), "width": torch.full((3,), 6)}
        stream.replay = memory
        stream.second_replay = memory if name == "derpp" else None  # the loop draws DER++'s second one
        loss = method.loss(method.forward(stream), stream)
        # CE of logits (1, 0, ...) with label 0: over all 6 outputs (the paper's code) or the 2 seen classes
        ce = math.log(math.e + (5 if outputs == "all" else 1)) - 1
        mse = 1 / 6  # mean over 3 samples × 6 outputs of (f − z)², f = (1, 0, 0, 0, 0, 0)
        expected = ce + 0.2 * mse + (0.5 * ce if name == "derpp" else 0.0)  # DER++: CE on a 2nd minibatch
        assert loss.item() == pytest.approx(expected, rel=1e-6), name


def test_der_defaults_are_the_der_papers_seq_mnist_buffer_200_values(scenario):
    """Mammoth's best_args, seq-mnist, buffer 200: der {alpha 0.2, minibatch_size 10 (= batch_size 10)}, derpp
    {alpha 0.2, beta 1.0, minibatch_size 128}; cilearn's DER replays the stream batch's size."""
    der, derpp = make_method(scenario, "der"), make_method(scenario, "derpp")
    assert (der.options.alpha, der.options.replay_batch_size) == (0.2, None)
    assert (derpp.options.alpha, derpp.options.beta, derpp.replay_batch_size) == (0.2, 1.0, 128)


@pytest.mark.parametrize("name", ["der", "derpp"])
def test_the_loop_draws_derpp_a_second_independent_minibatch(scenario, name):
    from cilearn.config import TrainConfig
    from cilearn.engine.train import Trainer

    method = make_method(scenario, name, buffer_size=100, replay_batch_size=8)
    task = scenario[0]
    start(method, task)
    for step in range(10):
        batch = stream_batch(method, task, np.arange(step * 10, step * 10 + 10))
        method.after_step(batch, method.forward(batch))
    drawn = []
    original = method.replay.sample
    method.replay.sample = lambda n: drawn.append(n) or original(n)
    trainer = Trainer(TrainConfig(), torch.device("cpu"), method.context.augment)
    replay, second = trainer._replay_batches(method, 8, task.index)
    if name == "der":
        assert drawn == [8] and second is None
    else:  # the MSE's minibatch, then the CE's, drawn one after the other with the global generator
        assert drawn == [8, 8] and len(second) == 8 and not torch.equal(replay.indices, second.indices)
    handed = []  # and the loop hands both to the loss, beside the stream batch
    loss = method.loss
    method.loss = lambda out, batch: handed.append((batch.replay, batch.second_replay)) or loss(out, batch)
    trainer.start(method)
    trainer.fit(method.model, method, task.train)
    assert handed and all(first is not None for first, _ in handed)
    assert all((second is not None) == (name == "derpp") for _, second in handed)


# --- ER-ACE --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("replay_loss", ["mean", "sum"])
def test_er_replay_loss_averages_the_joint_batch_or_adds_the_two_means_by_hand(scenario, replay_loss):
    """mean (Chaudhry et al., Mammoth): one CE over the 3 stream + 1 replayed rows; sum (pclucas14/AML's ER,
    ``update(inc_loss + re_loss)``): the stream's mean CE plus the replayed one's.  Constant logits, by hand."""
    method = make_method(scenario, "er", buffer_size=20, replay_loss=replay_loss)
    start(method, scenario[0])
    bias = [0.5, 2.0, -1.0, 1.5, 0.3, -0.2]
    constant_logits(method.model, bias)
    stream = stream_batch(method, scenario[0], np.arange(3))
    stream.labels = torch.tensor([0, 1, 1])
    stream.replay = stream_batch(method, scenario[0], np.arange(3, 4))
    stream.replay.labels = torch.tensor([4])
    log_z = math.log(sum(math.exp(v) for v in bias))  # every output: classification_outputs all
    ce = [log_z - bias[c] for c in (0, 1, 1, 4)]
    by_hand = sum(ce) / 4 if replay_loss == "mean" else sum(ce[:3]) / 3 + ce[3]
    loss = method.loss(method.forward(stream), stream)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    stream.replay = None  # nothing replayed (the first step): the stream's mean CE either way
    assert method.loss(method.forward(stream), stream).item() == pytest.approx(sum(ce[:3]) / 3, rel=1e-6)


def test_er_ace_follows_the_authors_code_on_a_full_head(scenario):
    """pclucas14/AML methods/er_ace.py: the stream's softmax keeps the present classes and every output from
    seen_so_far.max() on; the replay's cross-entropy covers every output.  6 outputs (3 tasks of 2 classes)."""
    method = make_method(scenario, "er_ace", buffer_size=20)
    start(method, scenario[0])
    start(method, scenario[1])
    assert method.model.num_classes == 6
    bias = torch.tensor([0.5, 2.0, -1.0, 1.5, 0.3, -0.2])
    constant_logits(method.model, bias)
    first = stream_batch(method, scenario[0], np.arange(2))
    first.labels = torch.tensor([0, 1])
    method.loss(method.forward(first), first)  # the stream has shown labels up to 1
    stream = stream_batch(method, scenario[1], np.arange(2))
    stream.labels = torch.tensor([0, 2])  # present: 0 and 2; largest seen so far: 2 -> outputs 2..5 stay too
    memory = stream_batch(method, scenario[0], np.arange(1))
    memory.labels = torch.tensor([1])
    stream.replay = memory
    loss = method.loss(method.forward(stream), stream)
    b = bias.tolist()
    kept = [0, 2, 3, 4, 5]  # 1 is masked: seen, absent from the batch, below the largest label seen
    log_z = math.log(sum(math.exp(b[c]) for c in kept))
    stream_ce = (2 * log_z - b[0] - b[2]) / 2
    replay_ce = math.log(sum(math.exp(v) for v in b)) - b[1]  # every output
    assert method.largest_seen == 2
    assert loss.item() == pytest.approx(stream_ce + replay_ce, rel=1e-6)


@pytest.mark.parametrize("name", ["er_ace", "er"])
def test_forward_passes_separate_runs_stream_and_replay_alone_as_the_authors(scenario, name):
    """pclucas14/AML: process_inc and process_re each run the network on their own batch (ER-ACE's default, ER's
    forward_passes: separate).  On a BatchNorm MLP (training mode) that gives each half the logits of the network
    run on that half alone, and the running statistics take two updates; joint normalises the two together (one
    update)."""
    outputs = {}
    for passes in ("separate", "joint"):
        method = make_method(scenario, name, buffer_size=20, forward_passes=passes)
        method.model = build_model("mlp", 1, 8, hidden=[16], batchnorm=True)
        start(method, scenario[0])
        method.model.train()
        stream = stream_batch(method, scenario[0], np.arange(4))
        stream.replay = stream_batch(method, scenario[0], np.arange(4, 10))
        reference = copy.deepcopy(method.model)
        out = method.forward(stream)
        assert out.logits.shape == (10, method.model.num_classes)
        outputs[passes] = (out, reference, method.model)
    (out, reference, model), (joint, _, joint_model) = outputs["separate"], outputs["joint"]
    by_hand = torch.cat([reference(stream.inputs), reference(stream.replay.inputs)])
    assert torch.allclose(out.logits, by_hand, atol=1e-6)
    assert not torch.allclose(joint.logits, by_hand, atol=1e-3)  # the two batches' statistics differ
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    joint_bn = next(m for m in joint_model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    assert bn.num_batches_tracked.item() == 2 and joint_bn.num_batches_tracked.item() == 1


def test_er_ace_masks_the_stream_softmax_to_the_classes_in_the_batch(scenario):
    method = make_method(scenario, "er_ace", buffer_size=20, classification_outputs="seen")
    start(method, scenario[0])
    start(method, scenario[1])  # 4 classes seen
    bias = torch.tensor([0.5, 2.0, -1.0, 1.5])
    constant_logits(method.model, bias)
    stream = stream_batch(method, scenario[1], np.arange(2))
    stream.labels = torch.tensor([0, 2])  # classes 0 and 2 present; 1 and 3 absent
    memory = stream_batch(method, scenario[0], np.arange(1))
    memory.labels = torch.tensor([1])
    stream.replay = memory
    assert present_class_mask(stream.labels, 4).tolist() == [[True, False, True, False]] * 2
    loss = method.loss(method.forward(stream), stream)
    b = bias.tolist()
    stream_ce = (math.log(math.exp(b[0]) + math.exp(b[2])) * 2 - b[0] - b[2]) / 2  # softmax over {0, 2} only
    replay_ce = math.log(sum(math.exp(v) for v in b)) - b[1]  # softmax over every seen class
    assert loss.item() == pytest.approx(stream_ce + replay_ce, rel=1e-6)
    # the stream term never pushes the absent classes' outputs: zero gradient on their biases
    stream.replay = None
    method.model.zero_grad()
    method.loss(method.forward(stream), stream).backward()
    grads = torch.cat([c.bias.grad for c in method.model.head.chunks])
    assert grads[1].item() == 0.0 and grads[3].item() == 0.0 and grads[0].item() != 0.0


def test_er_ace_cosine_head_is_the_authors_distlinear_by_hand():
    """pclucas14/AML model.py distLinear: 10 · (x / (‖x‖ + 1e-5)) · (w / (‖w‖ + 1e-5)), no bias, the scale fixed.
    2 samples × 3 classes; the second sample's small norm shows the 1e-5 (F.normalize would give 10 for it)."""
    head = ERACE.make_head(method_options({"name": "er_ace"}), 2)
    head.grow(3)
    with torch.no_grad():
        head.chunks[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]))
    features = torch.tensor([[3.0, 4.0], [1e-4, 0.0]])
    e, r2 = 1e-5, math.sqrt(2)
    want = 10 * torch.tensor([
        [3 / ((5 + e) * (1 + e)), 8 / ((5 + e) * (2 + e)), 1 / ((5 + e) * (r2 + e))],
        [1e-4 / ((1e-4 + e) * (1 + e)), 0.0, -1e-4 / ((1e-4 + e) * (r2 + e))]], dtype=torch.float64)
    assert torch.allclose(head(features).double(), want, rtol=1e-6, atol=0)
    assert head(features)[1, 0].item() == pytest.approx(9.0908, abs=1e-4)
    assert "scale" not in dict(head.named_parameters()) and head.state_dict()["scale"].item() == 10.0
    assert ERACE.make_head(method_options({"name": "er_ace", "head": "linear"}), 2) is None  # the model's own
    # their init: nn.Linear(bias=False)'s, U(±1/√in), the same draws for the same seed
    torch.manual_seed(3)
    theirs = torch.nn.Linear(100, 10, bias=False).weight
    torch.manual_seed(3)
    ours = ERACE.make_head(method_options({"name": "er_ace"}), 100).new_chunk(10).weight
    assert torch.equal(ours, theirs)


def test_er_ace_run_folders_written_before_the_head_option_keep_the_linear_head(tmp_path):
    """A config.yaml without ``head`` was written when ER-ACE had the linear head: resumed and reported with it.
    A config without it (written by a user) gets the cosine head."""
    raw = digits_config(scenario={"num_tasks": 2}, model={"options": {"hidden": [16]}},
                        method={"name": "er_ace", "buffer_size": 20, "head": "linear"},
                        train={"epochs": 1, "eval_every": 0}, output={"save_features": False}, seed=0)
    run = Run(parse_config(raw), tmp_path / "old")
    run.execute()
    stored = load_yaml(tmp_path / "old" / "config.yaml")
    del stored["method"]["head"], stored["method"]["forward_passes"]  # as 0.2 wrote it
    write_yaml(tmp_path / "old" / "config.yaml", stored)
    assert parse_config(stored).method.head == "cosine"
    assert parse_stored_config(stored).method.head == "linear"
    assert parse_stored_config(stored).method.forward_passes == "joint"  # 0.2's one forward pass
    model, _, _ = load_run_model(tmp_path / "old", 1)  # the linear checkpoint loads into the rebuilt head
    x = torch.rand(3, 1, 8, 8)
    run.model.eval()
    assert type(model.head) is IncrementalHead and torch.allclose(model(x), run.model(x))
    # an experiment: experiment.yaml as the user wrote it, the started runs' config.yaml without head
    user = {**raw, "method": {"name": "er_ace"}}
    ran = as_they_ran([user, user], [stored, None])
    assert [parse_config(r).method.head for r in ran] == ["linear", "linear"]
    assert [parse_config(r).method.head for r in as_they_ran([user], [parse_config(user).to_dict()])] == ["cosine"]


# --- replay minibatches ------------------------------------------------------------------------------------
def filled_buffer(size: int, replacement: bool = False) -> ReservoirBuffer:
    buffer = ReservoirBuffer(size, replacement=replacement)
    buffer.add(torch.zeros(size, 1, 2, 2, dtype=torch.uint8), torch.arange(size))  # label = slot: samples tell apart
    return buffer


def test_replay_minibatches_are_distinct_samples_by_default():
    torch.manual_seed(0)
    buffer = filled_buffer(200)
    drawn = buffer.sample(128)["labels"]
    assert len(drawn) == 128 and len(set(drawn.tolist())) == 128
    # Mammoth's rule (utils/buffer.py get_data): a request above what is stored gets every stored sample once
    assert sorted(buffer.sample(300)["labels"].tolist()) == list(range(200))
    # with replacement (cilearn 0.1): 128 independent draws from 200 repeat samples (about 95 distinct)
    again = filled_buffer(200, replacement=True).sample(128)["labels"]
    assert len(again) == 128 and len(set(again.tolist())) < 115


def test_each_per_step_replay_method_takes_the_replay_sampling_option(scenario):
    for name in ("er", "der", "derpp", "er_ace", "agem"):
        assert make_method(scenario, name).replay.replacement is False
        assert make_method(scenario, name, replay_sampling="with_replacement").replay.replacement is True
    metric = make_method(scenario, "er", selection="random", replay_sampling="with_replacement")
    assert metric.replay.replacement is True


def test_each_reservoir_method_takes_the_reservoir_draws_option(scenario):
    for name in ("er", "der", "derpp", "er_ace"):
        assert make_method(scenario, name).replay.draws == "per_sample"
        assert make_method(scenario, name, reservoir_draws="per_batch").replay.draws == "per_batch"
    with pytest.raises(ConfigError, match="reservoir_draws: per_batch .* selection: entropy"):
        make_method(scenario, "er", selection="entropy", reservoir_draws="per_batch")


# --- A-GEM ---------------------------------------------------------------------------------------------
def test_agem_reference_uses_all_memory_samples_while_the_memory_holds_fewer_than_the_reference_size(scenario):
    """Issue 23: after task 1 the memory holds buffer_size // tasks = 30 // 3 = 10 samples; Mammoth's A-GEM draws
    min(minibatch_size, stored) samples without replacement, i.e. all 10 once (cilearn 0.1: 16 draws with
    replacement, about 8 distinct)."""
    torch.manual_seed(0)
    method = make_method(scenario, "agem", buffer_size=30, replay_batch_size=16)
    start(method, scenario[0])
    method.end_task(scenario[0], scenario[0].train)
    stored = method.replay.take(torch.arange(len(method.replay)))["images"]
    reference = method.replay.sample(method.replay_batch_size)["indices"]
    assert sorted(reference.tolist()) == list(range(10))
    assert torch.equal(method.replay.take(reference.sort().values)["images"], stored)


def test_agem_projection_rule_by_hand():
    g, ref = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    projected = project(g, ref)  # g·ref = −1 < 0: g − (−1 / 2)·ref
    assert projected.tolist() == [0.5, 0.5]
    assert torch.dot(projected, ref).item() == pytest.approx(0.0, abs=1e-7)
    agreeing = torch.tensor([1.0, 1.0])
    assert project(agreeing, torch.tensor([1.0, 0.0])) is agreeing  # g·ref ≥ 0: unchanged


@pytest.mark.parametrize("outputs", ["all", "seen"])
def test_agem_before_step_projects_the_models_gradient(scenario, outputs):
    method = make_method(scenario, "agem", buffer_size=30, replay_batch_size=8, classification_outputs=outputs)
    start(method, scenario[0])
    method.end_task(scenario[0], scenario[0].train)
    assert len(method.replay) == 30 // 3 and set(method.replay.labels[:10].tolist()) <= {0, 1}
    start(method, scenario[1])
    stream = stream_batch(method, scenario[1], np.arange(16))
    memory = stream_batch(method, scenario[0], np.arange(8))
    stream.replay = memory
    params = [p for p in method.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    # the reference gradient, computed independently
    # Mammoth's A-GEM: the loss over every output of its fixed head (6 here); seen: the 4 classes seen so far
    covered = 6 if outputs == "all" else 4
    assert method.model.num_classes == covered
    ref_loss = F.cross_entropy(method.model(memory.inputs)[:, :covered], memory.labels)
    ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ref_loss, params)])
    optimizer.zero_grad()
    method.loss(method.forward(stream), stream).backward()
    g = torch.cat([p.grad.reshape(-1) for p in params]).clone()
    assert torch.dot(g, ref).item() < 0  # learning task 2 would raise task 1's loss: the case A-GEM handles
    method.before_step(optimizer)
    new = torch.cat([p.grad.reshape(-1) for p in params])
    expected = g - (torch.dot(g, ref) / torch.dot(ref, ref)) * ref
    assert torch.allclose(new, expected, atol=1e-6)
    assert torch.dot(new, ref).item() >= -1e-5 and method.projected == 1
    # a stream batch of the memory's own classes agrees with the memory: the gradient is left alone
    optimizer.zero_grad()
    same = stream_batch(method, scenario[0], np.arange(8, 24))
    same.replay = memory
    method.loss(method.forward(same), same).backward()
    before = [p.grad.clone() for p in params]
    method.before_step(optimizer)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, params)) and method.projected == 1


# --- GDumb ---------------------------------------------------------------------------------------------
def test_gdumb_memory_is_class_balanced_and_the_network_restarts_from_scratch(scenario):
    method = make_method(scenario, "gdumb", buffer_size=40)
    start(method, scenario[0])
    assert method.memory.class_counts() == {0: 20, 1: 20}
    trained = {k: v.clone() for k, v in method.model.state_dict().items()}
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(1.0)  # as if trained
    task = scenario[1]
    method.model.add_classes(2)
    method.begin_task(task)
    assert method.memory.class_counts() == {0: 10, 1: 10, 2: 10, 3: 10}
    for name, value in method.model.state_dict().items():  # fresh nn.Linear weights: |w| ≤ 1/√fan_in, not trained+1
        assert not torch.equal(value, trained.get(name, value) + 1.0), name
        fan_in = method.model.state_dict()[name.replace("bias", "weight")].shape[1]
        assert value.abs().max().item() <= 1 / math.sqrt(fan_in), name
    # re-initialising is exactly building the run's network afresh (with the same head sizes)
    state = torch.get_rng_state()
    method.reinitialise()
    torch.set_rng_state(state)
    fresh = method.context.build_model()
    fresh.add_classes(2)
    fresh.add_classes(2)
    for key, value in fresh.state_dict().items():
        assert torch.equal(method.model.state_dict()[key], value), key
    # the only stage trains on the memory alone, with the paper's recipe
    (stage,) = method.stages(task)
    assert len(stage.data) == 40 and np.bincount(stage.data.labels).tolist() == [10, 10, 10, 10]
    assert stage.overrides["scheduler"] == "warm_restarts" and stage.overrides["batch_size"] == 16


def _authors_gdumb_lrs(epochs: int, maxlr: float, minlr: float) -> list[float]:
    """drimpossible/GDumb src/main.py experiment(): epoch 0 at maxlr * 0.1 (the warm start), epoch 1 at maxlr, then
    CosineAnnealingWarmRestarts(T_0=1, T_mult=2, eta_min=minlr) stepped once per later epoch."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=maxlr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=1, T_mult=2, eta_min=minlr)
    lrs = []
    for epoch in range(epochs):
        if epoch <= 0:
            optimizer.param_groups[0]["lr"] = maxlr * 0.1
        elif epoch == 1:
            optimizer.param_groups[0]["lr"] = maxlr
        else:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
    return lrs


def _stage_lrs(stage, epochs: int) -> list[float]:
    """The learning rate of each epoch of a stage, with the run's scheduler stepped once per epoch."""
    cfg = stage_config(TrainConfig(), stage.train_overrides())
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr, momentum=cfg.momentum)
    scheduler, lrs = make_scheduler(optimizer, cfg), []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_gdumb_learning_rates_are_the_authors_warm_start_then_sgdr(scenario):
    method = make_method(scenario, "gdumb")  # the defaults: 128 epochs, lr 0.05 down to 0.0005, warm start 0.1
    start(method, scenario[0])
    (stage,) = method.stages(scenario[0])
    ours = _stage_lrs(stage, 128)
    assert ours == pytest.approx(_authors_gdumb_lrs(128, 0.05, 0.0005))
    assert ours[0] == pytest.approx(0.005) and ours[-1] < 0.0006  # the last epoch ends the 64-epoch cycle
    # without the warm start (cilearn's version 0.1) the 128th epoch restarts a cycle at the largest lr
    (plain,) = make_method(scenario, "gdumb", warm_start=None).stages(scenario[0])
    assert _stage_lrs(plain, 128)[-1] == pytest.approx(0.05)


def test_gdumb_run_folders_written_before_the_warm_start_resume_without_it():
    """0.2's resolved config.yaml lists every GDumb option but ``warm_start``: such a run resumes with the
    schedule it started with; a user's config without it gets the authors' warm start."""
    stored = parse_config(digits_config(method={"name": "gdumb", "buffer_size": 20})).to_dict()
    assert stored["method"].pop("warm_start") == 0.1
    assert parse_stored_config(stored).method.warm_start is None
    assert parse_config(stored).method.warm_start == 0.1


def test_gdumb_clips_the_gradient_norm(scenario):
    method = make_method(scenario, "gdumb", clip=10.0)
    start(method, scenario[0])
    params = list(method.model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 100.0)
    method.before_step(torch.optim.SGD(params, lr=0.1))
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    assert norm.item() == pytest.approx(10.0, rel=1e-4)


def test_gdumb_run_trains_only_on_the_memory(tmp_path):
    run = make_run(tmp_path, {"name": "gdumb", "buffer_size": 30, "epochs": 2}, num_tasks=2, epochs=1)
    run.execute()
    rows = run.recorder.rows
    assert [(r.task, r.epoch, r.stage) for r in rows] == [(0, 1, "memory"), (0, 2, "memory"), (1, 1, "memory"),
                                                          (1, 2, "memory")]
    assert run.recorder.history[-1]["train_samples"] == 2 * 30  # two epochs over the 30 stored samples, no stream


def test_gdumbs_mlp_is_linear_without_bias_batchnorm_relu_blocks():
    """drimpossible/GDumb src/models/layers.py FCBlock: Linear(bias=False), BatchNorm1d(eps=1e-6, affine), ReLU."""
    net = build_model("mlp", 1, 28, hidden=[100, 100], batchnorm=True)
    layers = list(net.backbone.layers)
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU"]
    assert layers[1].bias is None and layers[1].in_features == 784 and layers[4].bias is None
    assert layers[2].eps == 1e-6 and layers[2].affine and net.feature_dim == 100
    x = torch.rand(6, 1, 28, 28)
    net.train()
    h = net.features(x)  # by hand: batch statistics (biased variance), γ = 1, β = 0 at initialisation
    z = x.flatten(1) @ layers[1].weight.t()
    z = ((z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-6)).relu()
    z = z @ layers[4].weight.t()
    z = ((z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-6)).relu()
    assert torch.allclose(h, z, atol=1e-4)
    plain = [type(m).__name__ for m in build_model("mlp", 1, 28, hidden=[100]).backbone.layers]
    assert plain == ["Flatten", "Linear", "ReLU"]  # the default is unchanged


def test_gdumb_mnist_config_uses_the_official_mlp_and_random_crop():
    from cilearn.config import load_runs

    _, runs = load_runs(Path(__file__).resolve().parents[1] / "configs" / "methods_mnist" / "gdumb.yaml")
    cfg = runs[0][1]
    assert to_dict(cfg.model.options) == {"hidden": [100, 100], "batchnorm": True, "init": "default"}  # PyTorch init
    augment = BatchAugment.from_mode(cfg.train.augment, (0.1307,), (0.3081,), channels=1)
    assert (augment.crop_padding, augment.flip, augment.mixes) == (4, False, False)  # RandomCrop(28, padding=4)
