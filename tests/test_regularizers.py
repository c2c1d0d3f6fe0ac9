"""SI, MAS and L2 on a tiny linear network whose importances can be worked out by hand, and the quadratic
penalty they share with EWC (cilearn.methods.parts.importance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_run

from cilearn.augment import BatchAugment
from cilearn.data import ImageData
from cilearn.engine.evaluate import Inference
from cilearn.errors import ConfigError
from cilearn.methods import Batch, MethodContext, Output, method_class, method_options
from cilearn.methods.parts import importance
from cilearn.methods.parts.importance import ImportancePenalty, batch_gradient_mean, per_sample_gradient_mean
from cilearn.models.net import IncrementalNet
from cilearn.scenarios import class_incremental


def tiny_data(n: int = 40) -> ImageData:
    """Three-pixel 'images' (1×1, 3 channels): pixel 0 ∈ {0, 255} decides the class, pixel 1 is noise,
    pixel 2 is always 0 — its weights can never matter."""
    rng = np.random.RandomState(0)
    labels = np.arange(n) % 4
    images = np.zeros((n, 1, 1, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.where(labels % 2, 255, 0)
    images[:, 0, 0, 1] = rng.randint(0, 256, n)
    return ImageData(images, labels, ["a", "b", "c", "d"])


@pytest.fixture(scope="module")
def scenario():
    from cilearn.data import DatasetSplits

    data = tiny_data()
    splits = DatasetSplits(name="tiny", display_name="tiny", train=data, test=data)
    return class_incremental(splits, 2, class_order="sorted")


def linear_net() -> IncrementalNet:
    """A linear classifier on the three pixels: the growing head on the flattened image."""
    return IncrementalNet(torch.nn.Flatten(), 3)


def make(scenario, name: str, **options):
    """The method on :func:`linear_net`, pixels scaled to [0, 1] (mean 0, std 1)."""
    torch.manual_seed(0)
    model = linear_net()
    augment = BatchAugment((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    device = torch.device("cpu")
    context = MethodContext(scenario=scenario, device=device, seed=0, infer=Inference(model, augment, device, 64),
                            augment=augment)
    method = method_class(name)(method_options({"name": name, **options}), model, context)
    return method


def start(method, task) -> None:
    method.model.add_classes(len(task.new_classes))
    method.begin_task(task)


# --- the shared quadratic penalty ------------------------------------------------------------------------
def test_penalty_value_and_closed_form_gradient():
    model = linear_net()
    model.add_classes(2)
    penalty = ImportancePenalty()
    weight = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 3.0]])
    penalty.consolidate(model, {"head.chunks.0.weight": weight})
    assert penalty(model).item() == 0.0  # at the anchor
    with torch.no_grad():
        model.head.chunks[0].weight.add_(torch.tensor([[1.0, -1.0, 5.0], [2.0, 0.0, 1.0]]))
    # Σ Ω Δ² = 1·1 + 2·1 + 0·25 + 0.5·4 + 0 + 3·1 = 8
    assert penalty(model).item() == pytest.approx(8.0)
    value = penalty(model)
    (autograd,) = torch.autograd.grad(value, [model.head.chunks[0].weight])
    assert torch.allclose(penalty.gradient(model)["head.chunks.0.weight"], autograd)
    penalty.consolidate(model, {"head.chunks.0.weight": torch.ones(2, 3)}, decay=0.5)  # Ω ← 0.5·Ω + Ω_task
    assert torch.allclose(penalty.importance["head.chunks.0.weight"], 0.5 * weight + 1)
    assert penalty(model).item() == 0.0  # the anchor moved to the current weights


# --- SI ------------------------------------------------------------------------------------------------
def sgd_step(method, optimizer, grads: dict) -> None:
    """One step as the loop makes it, with the given gradients (before_step → step → after_step)."""
    optimizer.zero_grad()
    for name, param in method.model.named_parameters():
        param.grad = grads.get(name, torch.zeros_like(param)).clone()
    method.before_step(optimizer)
    optimizer.step()
    method.after_step(None, None)


def test_si_importance_is_the_path_integral_by_hand(scenario):
    method = make(scenario, "si", si_c=1.0, xi=0.01)
    start(method, scenario[0])
    params = dict(method.model.named_parameters())
    optimizer = torch.optim.SGD(params.values(), lr=0.1)
    grad = torch.zeros(2, 3)
    grad[0, 0] = 1.0  # only w[0, 0] has a gradient: three steps of −0.1 each
    for _ in range(3):
        sgd_step(method, optimizer, {"head.chunks.0.weight": grad})
    # ω = Σ −g·Δθ = 3 · (1 · 0.1) = 0.3 ; Δ over the task = −0.3 ; Ω = 0.3 / (0.09 + 0.01) = 3
    method.end_task(scenario[0], scenario[0].train)
    omega = method.quadratic.importance["head.chunks.0.weight"]
    assert omega[0, 0].item() == pytest.approx(3.0, rel=1e-5)
    assert omega.flatten()[1:].abs().max().item() == 0.0  # parameters that never moved: no importance
    assert method.quadratic.importance["head.chunks.0.bias"].abs().max().item() == 0.0
    assert torch.equal(method.quadratic.anchor["head.chunks.0.weight"], params["head.chunks.0.weight"].detach())


def test_si_integrates_the_task_gradient_without_the_penalty(scenario):
    method = make(scenario, "si", si_c=2.0, xi=0.01)
    start(method, scenario[0])
    optimizer = torch.optim.SGD(method.model.parameters(), lr=0.1)
    grad = torch.zeros(2, 3)
    grad[0, 0] = 1.0
    for _ in range(3):
        sgd_step(method, optimizer, {"head.chunks.0.weight": grad})
    method.end_task(scenario[0], scenario[0].train)
    start(method, scenario[1])
    weight = dict(method.model.named_parameters())["head.chunks.0.weight"]
    with torch.no_grad():
        weight[0, 0] += 0.5  # away from the anchor: the penalty now has a gradient 2cΩΔ = 2·2·3·0.5 = 6
    penalty_grad = 2.0 * method.quadratic.gradient(method.model)["head.chunks.0.weight"]
    assert penalty_grad[0, 0].item() == pytest.approx(6.0, rel=1e-5)
    task_grad = torch.zeros(2, 3)
    task_grad[0, 0] = 1.0
    sgd_step(method, optimizer, {"head.chunks.0.weight": task_grad + penalty_grad})  # what backward gives
    # the step moved w[0, 0] by −0.1 · 7 = −0.7; ω takes only the task's part: −1 · (−0.7) = 0.7
    assert method.path["head.chunks.0.weight"][0, 0].item() == pytest.approx(0.7, rel=1e-5)


def test_si_path_gradient_total_is_mammoths_lr_times_the_squared_total_gradient(scenario):
    """The DER paper's code (Mammoth 2020, models/si.py): ``small_omega += lr · g²`` with g the gradient of the
    whole objective, penalty included; under plain SGD that is ``−g·Δθ`` with the total gradient."""
    method = make(scenario, "si", si_c=2.0, xi=0.01, path_gradient="total")
    start(method, scenario[0])
    optimizer = torch.optim.SGD(method.model.parameters(), lr=0.1)
    grad = torch.zeros(2, 3)
    grad[0, 0] = 1.0
    for _ in range(3):
        sgd_step(method, optimizer, {"head.chunks.0.weight": grad})
    method.end_task(scenario[0], scenario[0].train)  # no penalty yet: Ω[0, 0] = 0.3 / (0.09 + 0.01) = 3 as above
    start(method, scenario[1])
    weight = dict(method.model.named_parameters())["head.chunks.0.weight"]
    with torch.no_grad():
        weight[0, 0] += 0.5
    total = torch.zeros(2, 3)
    total[0, 0] = 1.0 + 6.0  # the task's 1 + the penalty's 2cΩΔ = 6
    sgd_step(method, optimizer, {"head.chunks.0.weight": total})
    assert method.path["head.chunks.0.weight"][0, 0].item() == pytest.approx(0.1 * 7.0 ** 2, rel=1e-5)


def test_si_classification_outputs_all_covers_the_classes_not_seen_yet(scenario):
    method = make(scenario, "si", classification_outputs="all")
    method.grow_head(scenario[0])
    assert method.model.num_classes == 4  # every class's output from the first task
    method.begin_task(scenario[0])
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    labels = torch.tensor([0])
    zeros = torch.zeros(1, dtype=torch.long)
    batch = Batch(torch.zeros(1, 3), torch.zeros(1, 3, 1, 1, dtype=torch.uint8), labels, zeros, zeros)
    loss = method.loss(Output(torch.zeros(1, 3), logits), batch)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    seen = make(scenario, "si")
    seen.grow_head(scenario[0])
    seen.begin_task(scenario[0])
    assert seen.model.num_classes == 2
    loss = seen.loss(Output(torch.zeros(1, 3), logits[:, :2]), batch)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:, :2], labels).item())


def test_si_on_a_real_run_gives_no_importance_to_a_pixel_that_is_always_zero(scenario):
    method = make(scenario, "si", si_c=0.1)
    start(method, scenario[0])
    from cilearn.augment import to_tensor_images

    data = scenario[0].train
    images = to_tensor_images(data.images)
    labels = torch.as_tensor(data.labels)
    optimizer = torch.optim.SGD(method.model.parameters(), lr=0.5)
    for _ in range(20):
        inputs = method.context.augment(images)
        batch = Batch(inputs, images, labels, torch.zeros_like(labels), torch.arange(len(labels)))
        out = method.forward(batch)
        optimizer.zero_grad()
        method.loss(out, batch).backward()
        method.before_step(optimizer)
        optimizer.step()
        method.after_step(batch, out)
    method.end_task(scenario[0], data)
    omega = method.quadratic.importance["head.chunks.0.weight"]
    assert omega[:, 2].abs().max().item() == 0.0  # the always-zero pixel's weights never moved
    assert omega[:, 0].min().item() > 0  # the pixel that decides the class matters


# --- MAS ------------------------------------------------------------------------------------------------
def test_mas_importance_by_hand(scenario):
    method = make(scenario, "mas")
    start(method, scenario[0])
    with torch.no_grad():
        chunk = method.model.head.chunks[0]
        chunk.weight.copy_(torch.tensor([[1.0, 0.0, 7.0], [0.0, 2.0, -3.0]]))
        chunk.bias.copy_(torch.tensor([0.0, 1.0]))
    images = np.zeros((2, 1, 1, 3), dtype=np.uint8)
    images[0, 0, 0] = [255, 0, 0]    # x₁ = (1, 0, 0): f(x₁) = (1, 1)
    images[1, 0, 0] = [255, 255, 0]  # x₂ = (1, 1, 0): f(x₂) = (1, 3)
    data = ImageData(images, np.array([0, 1]), ["a", "b", "c", "d"])
    importance = method.estimate_importance(data)
    # ∂‖f‖²/∂W = 2 f xᵀ, ∂‖f‖²/∂b = 2 f:  x₁ → [[2, 0, 0], [2, 0, 0]], [2, 2];  x₂ → [[2, 2, 0], [6, 6, 0]], [2, 6]
    assert importance["head.chunks.0.weight"].tolist() == [[2.0, 1.0, 0.0], [4.0, 3.0, 0.0]]
    assert importance["head.chunks.0.bias"].tolist() == [2.0, 4.0]
    # the third pixel is 0 in every sample: its weights never affect the outputs, whatever their value


def test_mas_accumulates_over_tasks_and_penalises_with_lambda(scenario):
    method = make(scenario, "mas", mas_lambda=0.5)
    start(method, scenario[0])
    first = method.estimate_importance(scenario[0].train)
    method.end_task(scenario[0], scenario[0].train)
    assert torch.equal(method.quadratic.importance["head.chunks.0.weight"], first["head.chunks.0.weight"])
    start(method, scenario[1])
    second = method.estimate_importance(scenario[1].train)
    method.end_task(scenario[1], scenario[1].train)
    assert torch.allclose(method.quadratic.importance["head.chunks.0.weight"],
                          first["head.chunks.0.weight"] + second["head.chunks.0.weight"])  # Ω ← Ω + Ω_task
    assert "head.chunks.1.weight" in method.quadratic.importance
    with torch.no_grad():
        method.model.head.chunks[0].bias.add_(1.0)
    expected = 0.5 * method.quadratic.importance["head.chunks.0.bias"].sum().item()
    logits = method.model(torch.zeros(1, 3, 1, 1))
    batch = Batch(torch.zeros(1, 3, 1, 1), torch.zeros(1, 3, 1, 1), torch.tensor([0]), torch.tensor([0]),
                  torch.arange(1))
    ce = method.classification_loss(logits, torch.tensor([0])).item()
    assert method.loss(Output(torch.zeros(1, 3), logits), batch).item() == pytest.approx(ce + expected, rel=1e-5)


def test_si_mas_and_l2_runs_on_digits(tmp_path):
    for number, (name, options) in enumerate((
            ("si", {"si_c": 0.1, "xi": 0.1}), ("mas", {"mas_lambda": 0.01, "importance_samples": 50}),
            ("mas", {"importance_gradients": "batch", "importance_batch_size": 32}), ("l2", {"l2_lambda": 0.01}))):
        run = make_run(tmp_path / f"{number}", {"name": name, **options}, num_tasks=2, epochs=2)
        result = run.execute()
        assert result["complete"] and result["accuracy_matrix"][0][0] > 0.9, name


def test_mas_batch_importance_by_hand(scenario):
    """Hsu et al.'s estimate: |∂ mean(F²)/∂θ| of the whole minibatch (the mean over its samples and the seen
    outputs), so opposite per-sample gradients cancel before the absolute value is taken."""
    images = np.zeros((2, 1, 1, 3), dtype=np.uint8)
    images[0, 0, 0] = [255, 0, 0]    # x₁ = (1, 0, 0): f(x₁) = (1, −1)
    images[1, 0, 0] = [255, 255, 0]  # x₂ = (1, 1, 0): f(x₂) = (1, 1)
    data = ImageData(images, np.array([0, 1]), ["a", "b", "c", "d"])
    got = {}
    for batch_size in (2, 1):
        method = make(scenario, "mas", importance_gradients="batch", importance_batch_size=batch_size)
        start(method, scenario[0])
        with torch.no_grad():
            chunk = method.model.head.chunks[0]
            chunk.weight.copy_(torch.tensor([[1.0, 0.0, 7.0], [0.0, 2.0, -3.0]]))
            chunk.bias.copy_(torch.tensor([0.0, -1.0]))
        got[batch_size] = method.estimate_importance(data)
    # one minibatch of both: ∂/∂W_c = ¼ Σ_k 2 f_c(x_k) x_kᵀ → row 0: ½(x₁ + x₂) = (1, ½, 0), row 1: ½(x₂ − x₁)
    assert got[2]["head.chunks.0.weight"].tolist() == [[1.0, 0.5, 0.0], [0.0, 0.5, 0.0]]
    assert got[2]["head.chunks.0.bias"].tolist() == [1.0, 0.0]
    # minibatches of one: the mean of |f_c(x_k) x_kᵀ| (half the per-sample estimate: the mean over 2 outputs)
    assert got[1]["head.chunks.0.weight"].tolist() == [[1.0, 0.5, 0.0], [1.0, 0.5, 0.0]]
    assert got[1]["head.chunks.0.bias"].tolist() == [1.0, 1.0]


def test_batch_gradient_mean_is_hsu_et_als_loop():
    """batch_gradient_mean against the loop of Hsu et al.'s MAS.calculate_importance, written as their code:
    per minibatch ``pred.pow_(2); loss = pred.mean(); loss.backward(); Ω += |grad| / len(dataloader)``."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    images = np.random.RandomState(1).randint(0, 256, (7, 2, 2, 3), dtype=np.uint8)
    inputs = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    seen, batch_size = 3, 3
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    batches = [inputs[i:i + batch_size] for i in range(0, len(inputs), batch_size)]  # 3, 3 and 1 samples
    for x in batches:
        pred = model(x)[:, :seen]
        pred.pow_(2)
        loss = pred.mean()
        model.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad.abs() / len(batches)
    got = batch_gradient_mean(model, images, lambda logits: logits[:, :seen].square().mean(), lambda x: x.float() / 255,
                              batch_size, torch.device("cpu"))
    for n in expected:
        torch.testing.assert_close(got[n], expected[n])



class TwoHeads(torch.nn.Module):
    """An MLP with two task heads and an in-place ReLU after a Linear (the case the closed form must survive)."""

    def __init__(self, norm_layer: bool = False, reuse: bool = False) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6),
                                        torch.nn.BatchNorm1d(6) if norm_layer else torch.nn.Identity(),
                                        torch.nn.ReLU(inplace=True))
        self.heads = torch.nn.ModuleList([torch.nn.Linear(6, 2), torch.nn.Linear(6, 3)])
        self.reuse = reuse

    def forward(self, x):
        features = self.body(x)
        if self.reuse:  # one layer applied twice: a sample's gradient is no longer one outer product
            features = features + self.heads[0](features).sum(1, keepdim=True)
        return torch.cat([head(features) for head in self.heads], dim=1)


def per_sample_loop(model, images, targets, objective, reduce):
    """The definition: one backward pass per sample, the squared (or absolute) gradient averaged."""
    model.eval()
    inputs = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    for x, y in zip(inputs, targets):
        model.zero_grad()
        objective(model(x[None]), y[None]).backward()
        for n in expected:
            g = model.get_parameter(n).grad
            expected[n] += (g.square() if reduce == "square" else g.abs()) / len(images)
    return expected


@pytest.mark.parametrize("reduce", ["square", "abs"])
@pytest.mark.parametrize("variant", ["linear", "norm_layer", "reuse", "frozen_body"])
def test_per_sample_gradient_mean_is_the_per_sample_loop(variant, reduce, monkeypatch):
    """Both estimators (the Linear closed form and the vmap one, which a BatchNorm or a layer used twice selects)
    equal the per-sample definition; the closed form is taken exactly when every trained parameter is a Linear's."""
    torch.manual_seed(5)
    model = TwoHeads(norm_layer=variant == "norm_layer", reuse=variant == "reuse")
    if variant == "frozen_body":  # a frozen BatchNorm-free body: only the heads are trained
        model.body.requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    images = np.random.RandomState(2).randint(0, 256, (9, 2, 2, 3), dtype=np.uint8)
    targets = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])

    def objective(logits, target):
        return -torch.nn.functional.cross_entropy(logits, target) + logits[:, :2].square().sum()

    closed_form = []
    original = importance._linear_gradient_sums
    monkeypatch.setattr(importance, "_linear_gradient_sums",
                        lambda *a, **k: closed_form.append(result := original(*a, **k)) or result)
    got = per_sample_gradient_mean(model, images, targets, objective, lambda x: x.float() / 255, reduce, 4,
                                   torch.device("cpu"))
    expected = per_sample_loop(model, images, targets, objective, reduce)
    assert set(got) == set(expected)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-5, atol=1e-7)
    # norm_layer: BatchNorm's parameters are trained, not a Linear's; reuse: the closed form declines the double use
    assert [r is not None for r in closed_form] == {"linear": [True], "frozen_body": [True], "norm_layer": [],
                                                    "reuse": [False]}[variant]


# --- L2 -------------------------------------------------------------------------------------------------
def test_l2_penalty_is_hsu_et_als_formula_with_a_full_head(scenario):
    """reg_coef·Σ(θ − θ*)² over every parameter (no ½), θ* the weights after the last task; the full head makes
    the outputs of the classes still to come part of it, held to the values they had."""
    method = make(scenario, "l2", l2_lambda=0.5)
    assert method.full_head  # head: auto in a class-incremental scenario
    method.grow_head(scenario[0])
    method.begin_task(scenario[0])
    assert len(method.model.head.chunks) == 2  # both tasks' outputs exist from the first task
    logits = method.model(torch.zeros(1, 3, 1, 1))
    batch = Batch(torch.zeros(1, 3, 1, 1), torch.zeros(1, 3, 1, 1), torch.tensor([0]), torch.tensor([0]),
                  torch.arange(1))
    out = Output(torch.zeros(1, 3), logits)
    assert method.loss(out, batch).item() == method.classification_loss(logits[:, :2], torch.tensor([0])).item()

    method.end_task(scenario[0], scenario[0].train)
    anchor = {n: p.detach().clone() for n, p in method.model.named_parameters()}
    method.grow_head(scenario[1])  # a full head adds nothing
    method.begin_task(scenario[1])
    params = dict(method.model.named_parameters())
    with torch.no_grad():
        params["head.chunks.0.weight"][1, 2] += 2.0
        params["head.chunks.1.bias"][0] -= 3.0  # an output of task 2, never trained: still penalised
    reg = sum(((p - anchor[n]) ** 2).sum() for n, p in params.items()).item()  # their task_reg_loss, Ω = 1
    assert reg == pytest.approx(4.0 + 9.0)
    logits = method.model(torch.zeros(1, 3, 1, 1))
    ce = method.classification_loss(logits[:, :4], torch.tensor([0])).item()
    assert method.loss(Output(torch.zeros(1, 3), logits), batch).item() == pytest.approx(ce + 0.5 * reg, rel=1e-6)

    method.end_task(scenario[1], scenario[1].train)  # one anchor, the latest; the importance stays 1
    assert all(torch.equal(w, torch.ones_like(w)) for w in method.quadratic.importance.values())
    assert all(torch.equal(method.quadratic.anchor[n], p.detach()) for n, p in params.items())
    assert method.quadratic(method.model).item() == 0.0


def test_l2_with_a_growing_head_leaves_new_outputs_free(scenario):
    method = make(scenario, "l2", head="growing")
    start(method, scenario[0])
    method.end_task(scenario[0], scenario[0].train)
    start(method, scenario[1])
    with torch.no_grad():
        method.model.head.chunks[1].bias.add_(5.0)
    assert method.quadratic(method.model).item() == 0.0
    with torch.no_grad():
        method.model.head.chunks[0].bias.add_(1.0)
    assert method.quadratic(method.model).item() == pytest.approx(2.0)


def test_l2_refuses_a_full_head_in_task_incremental_scenarios(tmp_path):
    with pytest.raises(ConfigError, match="method.head: full"):
        make_run(tmp_path, {"name": "l2", "head": "full"}, num_tasks=2, scenario={"type": "task_incremental"})
