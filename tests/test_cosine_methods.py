"""LUCIR and PODNet: the cosine head, each method's defining mechanism on a tiny hand-checkable case, the
stage outputs of the backbones, and reports rebuilding a method's head.

Kill/resume, state round trips and option checks of these methods are covered by tests/test_contract.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_run

from cilearn.config import parse_config
from cilearn.engine.runner import Run
from cilearn.errors import ConfigError
from cilearn.methods.lucir import adaptive_lambda, margin_ranking
from cilearn.methods.podnet import nca_loss, pod_spatial, warn_nca_hinge
from cilearn.models import build_model
from cilearn.models.heads import CosineHead


def start_task(run: Run, task) -> list:
    """Grow the head and begin ``task``; its stages."""
    run.method.grow_head(task)
    run.method.begin_task(task)
    return run.method.stages(task)


def changed_parameters(run: Run, before: dict) -> set[str]:
    return {k for k, v in run.model.state_dict().items() if not torch.equal(v, before[k])}


def snapshot(run: Run) -> dict:
    return {k: v.clone() for k, v in run.model.state_dict().items()}


# --- LUCIR -------------------------------------------------------------------------------------------
def test_cosine_head_is_scale_times_cosine():
    head = CosineHead(2, proxies=1, scale=2.5)
    head.grow(2)
    with torch.no_grad():
        head.chunks[0].weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    out = head(torch.tensor([[0.0, 2.0]]))
    # cos([0, 2], [3, 4]) = 8 / (2·5) = 0.8; cos([0, 2], [1, 0]) = 0
    assert out.tolist()[0] == pytest.approx([2.5 * 0.8, 0.0])
    assert head.similarities(torch.tensor([[0.0, 2.0]])).tolist()[0] == pytest.approx([0.8, 0.0])


def test_margin_ranking_loss_by_hand():
    cosines = torch.tensor([[0.9, 0.1, 0.5, 0.2, 0.6],    # old class 0: hardest new cosines 0.6, 0.5
                            [0.0, 0.3, 0.1, 0.9, 0.2],    # a new class: no ranking term
                            [0.2, 0.4, 0.0, -0.3, 0.1]])  # old class 1: hardest new 0.1, 0.0
    labels = torch.tensor([0, 3, 1])
    # sample 0: max(0, .5 - .9 + .6) + max(0, .5 - .9 + .5) = 0.2 + 0.1; sample 2: (.5 - .4 + .1) + (.5 - .4) = 0.3
    got = margin_ranking(cosines, labels, n_old=2, margin=0.5, k=2)
    assert got.item() == pytest.approx((0.3 + 0.3) / 2)
    assert margin_ranking(cosines, torch.tensor([3, 4, 2]), 2, 0.5, 2).item() == 0.0


def test_lucir_lambda_adapts_to_the_ratio_of_old_to_new_classes(tmp_path):
    assert adaptive_lambda(5.0, 8, 2) == pytest.approx(10.0)
    run = make_run(tmp_path, {"name": "lucir", "memory_size": 40, "lambda_base": 5.0}, num_tasks=3)
    run.run_task(run.scenario[0])
    run.run_task(run.scenario[1])
    start_task(run, run.scenario[2])
    assert run.method.less_forget_weight == pytest.approx(5.0 * math.sqrt(4 / 2))


def test_lucir_imprints_new_weights_and_keeps_old_ones_fixed(tmp_path):
    run = make_run(tmp_path, {"name": "lucir", "memory_size": 40}, num_tasks=2, epochs=2)
    run.run_task(run.scenario[0])
    task = run.scenario[1]
    head = run.model.head
    assert isinstance(head, CosineHead)
    old_norm = head.chunks[0].weight.norm(dim=1).mean()
    stages = start_task(run, task)
    data = task.train
    for row, label in zip(head.chunks[1].weight, task.new_classes):
        features = F.normalize(run.inference(data.images[data.labels == label])[0], dim=1)
        direction = F.normalize(features.mean(0), dim=0)
        assert torch.allclose(row, direction * old_norm, atol=1e-5)  # the normalised mean, old norms' size
    before = snapshot(run)
    run.run_stage(task, stages, 0, None)
    changed = changed_parameters(run, before)
    assert "head.chunks.0.weight" not in changed and {"head.chunks.1.weight", "head.scale"} <= changed


# --- PODNet ------------------------------------------------------------------------------------------
def test_pod_spatial_by_hand():
    student = [torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])]  # 1 sample, 1 channel, 2×2
    teacher = [torch.ones(1, 1, 2, 2)]
    # squares [[1, 4], [9, 16]]: summed over the width [5, 25], over the height [10, 20]; teacher: [2, 2, 2, 2]
    a = np.array([5.0, 25.0, 10.0, 20.0])
    a /= np.linalg.norm(a)
    expected = np.linalg.norm(a - 0.5)
    assert pod_spatial(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # several stages: the mean of the stages' values; 1×1 'maps' (an MLP layer) compare normalised squares
    flat_s, flat_t = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 1.0]])
    sq = np.array([1.0, 4.0, 1.0, 4.0]) / np.linalg.norm([1.0, 4.0, 1.0, 4.0])
    both = pod_spatial(student + [flat_s], teacher + [flat_t]).item()
    assert both == pytest.approx((expected + np.linalg.norm(sq - sq[::-1])) / 2, rel=1e-6)


def test_pod_spatial_is_zero_for_identical_outputs_and_positive_otherwise():
    torch.manual_seed(0)
    maps = [torch.randn(4, 3, 5, 5), torch.randn(4, 6, 3, 3)]
    assert pod_spatial(maps, [m.clone() for m in maps]).item() == pytest.approx(0.0, abs=1e-7)
    assert pod_spatial(maps, [m + 0.3 for m in maps]).item() > 0.01


def test_local_similarity_classifier_and_nca_loss_by_hand():
    head = CosineHead(2, proxies=2, scale=1.0)
    head.grow(1)
    with torch.no_grad():
        head.chunks[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # one class, two proxies
    s = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    ones = torch.tensor([[1.0, 1.0]])
    assert head.similarities(ones).item() == pytest.approx(s[0])  # equal cosines: their mean
    x = torch.tensor([[1.0, 0.0]])  # cosines 1 and 0: softmax weights e/(e+1), 1/(e+1)
    assert head.similarities(x).item() == pytest.approx(math.e / (math.e + 1))
    sims = torch.tensor([[0.8, 0.1, -0.2]])
    eta, delta = 2.0, 0.6
    # -log(exp(η(ŷ_y - δ)) / Σ_{c≠y} exp(η ŷ_c)) for y = 0, the paper's NCA (here above 0: hinge or not)
    expected = -eta * (0.8 - delta) + math.log(math.exp(eta * 0.1) + math.exp(-eta * 0.2))
    for form in ("plain", "hinge"):
        assert nca_loss(sims, torch.tensor([0]), torch.tensor(eta), delta, form).item() == pytest.approx(expected)
    # plain: a well-classified sample's loss is negative, -5·0.9 + log(exp(5·(-0.9))) = -9; the paper's [·]_+
    # (hinge) clips it to 0
    easy = torch.tensor([[0.9, -0.9]])
    assert nca_loss(easy, torch.tensor([0]), torch.tensor(5.0), 0.0, "plain").item() == pytest.approx(-9.0)
    assert nca_loss(easy, torch.tensor([0]), torch.tensor(5.0), 0.0, "hinge").item() == 0.0


def official_nca_by_hand(sims: list[list[float]], labels: list[int], eta: float, delta: float,
                         margin_on_every_class: bool = False) -> float:
    """The authors' nca (inclearn/lib/losses/base.py, exclude_pos_denominator true, hinge_proxynca false,
    class_weights None) step by step: scale (with the margin), subtract the row's max, zero the ground truth's
    entry of the denominator, exp, sum, log; the mean of ``-(numerator - log denominator)``.  Their code
    subtracts δ from every class (``margin_on_every_class``); cilearn from the ground truth's only."""
    losses = []
    for row, y in zip(sims, labels):
        z = [eta * (s - delta) if (c == y or margin_on_every_class) else eta * s for c, s in enumerate(row)]
        shifted = [v - max(z) for v in z]
        denominator = [0.0 if c == y else v for c, v in enumerate(shifted)]
        losses.append(-(shifted[y] - math.log(sum(math.exp(v) for v in denominator))))
    return sum(losses) / len(losses)


def test_official_nca_is_the_authors_loss_by_hand():
    sims = [[0.8, 0.1, -0.2], [0.3, 0.5, -0.4], [-0.6, 0.2, 0.1]]  # sample 0 right, 1 and 2 wrong
    labels = [0, 0, 2]
    eta, delta = 3.0, 0.6
    # sample 0 (δ = 0): z = (2.4, 0.3, -0.6), max 2.4: shifted (0, -2.1, -3.0), denominator exp(0) (the zeroed
    # ground truth) + e^-2.1 + e^-3: the softmax cross-entropy, as the ground truth wins
    first = -0.0 + math.log(1 + math.exp(-2.1) + math.exp(-3.0))
    assert official_nca_by_hand(sims[:1], labels[:1], eta, 0.0) == pytest.approx(first)
    loss = nca_loss(torch.tensor(sims[:1]), torch.tensor(labels[:1]), torch.tensor(eta), 0.0, "official")
    assert loss.item() == pytest.approx(first, rel=1e-6)
    # sample 1: z = (0.9, 1.5, -1.2), max 1.5 (a wrong class): shifted (-0.6, 0, -2.7), denominator
    # exp(0) + exp(0) + e^-2.7: the largest wrong class counts twice
    second = 0.6 + math.log(2 + math.exp(-2.7))
    assert official_nca_by_hand(sims[1:2], labels[1:2], eta, 0.0) == pytest.approx(second)
    three = nca_loss(torch.tensor(sims), torch.tensor(labels), torch.tensor(eta), 0.0)  # official: the default
    assert three.item() == pytest.approx(official_nca_by_hand(sims, labels, eta, 0.0), rel=1e-6)
    # the authors subtract δ from every class, where it cancels: their loss at any δ is cilearn's at δ = 0
    assert three.item() == pytest.approx(official_nca_by_hand(sims, labels, eta, delta, True), rel=1e-6)
    # cilearn's δ on the ground truth only (the paper's placement), in the same recipe
    with_margin = nca_loss(torch.tensor(sims), torch.tensor(labels), torch.tensor(eta), delta, "official")
    assert with_margin.item() == pytest.approx(official_nca_by_hand(sims, labels, eta, delta), rel=1e-6)
    assert with_margin.item() > three.item()


def test_official_nca_stays_above_zero_and_stops_pulling_eta_up():
    torch.manual_seed(0)
    sims, labels = torch.rand(64, 5) * 4 - 2, torch.randint(0, 5, (64,))
    for eta in (0.1, 1.0, 10.0, 100.0, 1000.0):
        for delta in (0.0, 0.6):
            per_sample = [nca_loss(sims[i:i + 1], labels[i:i + 1], torch.tensor(eta), delta) for i in range(64)]
            assert min(v.item() for v in per_sample) >= 0.0
    # one correctly classified sample, ŷ = (0.5, 0, -0.5), y = 0.  Official: the cross-entropy over ηŷ,
    # ∂L/∂η = Σ_c p_c ŷ_c - ŷ_y → 0 as η grows; plain: ∂L/∂η = E_{c≠y}[ŷ_c] - ŷ_y, which stays ≤ -0.5
    right = [0.5, 0.0, -0.5]
    for eta in (1.0, 10.0, 100.0):
        weights = [math.exp(eta * s) for s in right]
        expected = sum(w * s for w, s in zip(weights, right)) / sum(weights) - right[0]
        grads = {}
        for form in ("official", "plain"):
            scale = torch.tensor(eta, requires_grad=True)
            nca_loss(torch.tensor([right]), torch.tensor([0]), scale, 0.0, form).backward()
            grads[form] = scale.grad.item()
        assert grads["official"] == pytest.approx(expected, rel=1e-5, abs=1e-12)
        assert grads["plain"] <= -0.5
    assert abs(grads["official"]) < 1e-20  # at η = 100


def test_neg_squared_distance_classifier_is_the_official_neg_stable_cosine_distance():
    """PODNet's official classifier (distance: neg_stable_cosine_distance, merging: softmax): the similarity of a
    proxy is -‖f̂ - ŵ‖² = 2·cos - 2, and the class's is the softmax-over-proxies weighted sum of those."""
    head = CosineHead(2, proxies=2, scale=3.0, distance="neg_squared")
    head.grow(1)
    with torch.no_grad():
        head.chunks[0].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 5.0]]))  # norms do not matter
    x = torch.tensor([[3.0, 0.0]])  # cosines 1 and 0: s = 0 and -2; weights 1/(1+e^-2), e^-2/(1+e^-2)
    expected = (0.0 * 1 + (-2.0) * math.exp(-2)) / (1 + math.exp(-2))
    assert head.similarities(x).item() == pytest.approx(expected)
    assert head(x).item() == pytest.approx(3.0 * expected)
    # the same number by the authors' recipe: squared distances of the normalised vectors, negated
    raw = -torch.cdist(F.normalize(x), F.normalize(head.chunks[0].weight)) ** 2
    assert head.similarities(x).item() == pytest.approx((F.softmax(raw, 1) * raw).sum().item(), abs=1e-6)
    torch.manual_seed(0)
    f = torch.randn(5, 2)
    cosine = CosineHead(2, proxies=1, distance="cosine")
    cosine.grow(3)
    squared = CosineHead(2, proxies=1, distance="neg_squared")
    squared.grow(3)
    squared.load_state_dict(cosine.state_dict())
    assert torch.allclose(squared.similarities(f), 2 * cosine.similarities(f) - 2, atol=1e-6)


@pytest.mark.parametrize("name, options", [("resnet20", {}), ("mlp", {"hidden": [16, 8]})])
def test_stage_outputs_come_with_the_same_features(name, options):
    torch.manual_seed(0)
    channels = 3 if name.startswith("resnet") else 1
    net = build_model(name, channels, 16, **options).eval()
    x = torch.randn(2, channels, 16, 16)
    features, stages = net.features(x, return_stages=True)
    assert torch.equal(features, net.features(x))
    if name == "resnet20":
        assert [tuple(s.shape[1:]) for s in stages] == [(16, 16, 16), (32, 8, 8), (64, 4, 4)]
    else:
        assert [tuple(s.shape) for s in stages] == [(2, 16), (2, 8)]


def test_podnet_finetunes_only_the_classifier_on_the_balanced_memory(tmp_path):
    run = make_run(tmp_path, {"name": "podnet", "memory_size": 40, "proxies": 2, "finetune_epochs": 2}, num_tasks=2)
    run.run_task(run.scenario[0])
    task = run.scenario[1]
    stages = start_task(run, task)
    assert [s.name for s in stages] == ["train", "finetune"]
    run.run_stage(task, stages, 0, None)
    before = snapshot(run)
    data = run.run_stage(task, stages, 1, None)
    assert np.bincount(data.labels).tolist() == [10, 10, 10, 10]  # the memory after the update: 40 // 4 each
    changed = changed_parameters(run, before)
    # the official tuning: classifier trains the proxies, not the scale η (finetune_scale: true trains it too)
    assert changed and all(k.startswith("head.chunks.") for k in changed)
    assert run.model.head.chunks[0].distance == "neg_squared"


def test_podnet_finetune_scale_trains_eta_on_request(tmp_path):
    run = make_run(tmp_path, {"name": "podnet", "memory_size": 40, "proxies": 2, "finetune_epochs": 1,
                               "finetune_scale": True}, num_tasks=2)
    run.run_task(run.scenario[0])
    task = run.scenario[1]
    stages = start_task(run, task)
    run.run_stage(task, stages, 0, None)
    before = snapshot(run)
    run.run_stage(task, stages, 1, None)
    assert "head.scale" in changed_parameters(run, before)


def test_podnet_imprints_proxies_from_kmeans_of_the_new_classes(tmp_path):
    run = make_run(tmp_path, {"name": "podnet", "memory_size": 40, "proxies": 3, "finetune_epochs": 0}, num_tasks=2)
    run.run_task(run.scenario[0])
    task = run.scenario[1]
    old_norm = run.model.head.chunks[0].weight.norm(dim=1).mean()
    start_task(run, task)
    weight = run.model.head.chunks[1].weight
    assert weight.shape == (2 * 3, 32)
    assert torch.allclose(weight.norm(dim=1), old_norm.expand(6), atol=1e-5)
    data = task.train
    for c, label in enumerate(task.new_classes):  # each proxy is near its own class's features
        features = F.normalize(run.inference(data.images[data.labels == label])[0], dim=1)
        other = F.normalize(run.inference(data.images[data.labels == task.new_classes[1 - c]])[0], dim=1)
        proxies = F.normalize(weight[3 * c: 3 * c + 3], dim=1)
        assert (features @ proxies.t()).mean() > (other @ proxies.t()).mean()


def test_podnet_needs_the_backbones_stage_outputs(tmp_path, monkeypatch):
    from cilearn.models.mlp import MLP
    monkeypatch.delattr(MLP, "forward_stages")
    with pytest.raises(ConfigError, match="forward_stages"):
        make_run(tmp_path, {"name": "podnet", "memory_size": 40}, num_tasks=2)


# --- reports rebuild the method's head -------------------------------------------------------------------
def test_reports_rebuild_a_cosine_head_from_the_checkpoint(tmp_path):
    from cilearn.report.model import load_run_model

    raw = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": 2},
           "model": {"name": "mlp", "options": {"hidden": [16]}}, "method": {"name": "podnet", "memory_size": 20,
                                                                              "proxies": 2, "finetune_epochs": 1},
           "train": {"epochs": 1, "batch_size": 32, "progress": False, "eval_every": 0}, "seed": 0}
    run = Run(parse_config(raw), tmp_path / "run")
    run.execute()
    model, _, _ = load_run_model(tmp_path / "run", 1)
    assert isinstance(model.head, CosineHead) and model.head.proxies == 2
    x = torch.rand(3, 1, 8, 8)
    run.model.eval()
    assert torch.allclose(model(x), run.model(x.to(run.device)))


def test_nca_hinge_is_read_as_nca_form(caplog):
    """nca_hinge (before nca_form) still parses, as what it meant then: an old run folder's config.yaml has
    nca_hinge: false (the plain NCA, the default then) and no nca_form."""
    def method(**options):
        raw = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2}, "model": {"name": "mlp"},
               "method": {"name": "podnet", **options}}
        return parse_config(raw).method

    assert (method().nca_form, method().nca_hinge) == ("official", None)
    warn_nca_hinge.cache_clear()  # the warning comes once per process
    for hinge, form in ((True, "hinge"), (False, "plain")):
        with caplog.at_level("WARNING", logger="cilearn"):
            caplog.clear()
            options = method(nca_hinge=hinge)
        assert (options.nca_form, options.nca_hinge) == (form, None)  # config.yaml then says nca_form
        assert f"read as nca_form: {form}" in caplog.text
        assert method(nca_hinge=hinge, nca_form=form).nca_form == form
    with pytest.raises(ConfigError, match="nca_hinge: false .* means nca_form: plain, but nca_form is hinge"):
        method(nca_hinge=False, nca_form="hinge")
