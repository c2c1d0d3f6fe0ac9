"""Optimizers, weight-decay groups and learning-rate schedules (cilearn.engine.optim) and their config checks."""

from __future__ import annotations

import csv
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cilearn.augment import BatchAugment
from cilearn.config import TrainConfig, expand_runs, parse_config
from cilearn.data import ImageData
from cilearn.engine.optim import make_optimizer, make_schedule, make_scheduler, parameter_kinds
from cilearn.engine.train import Trainer
from cilearn.errors import ConfigError
from cilearn.methods import Method, MethodContext, MethodOptions
from cilearn.models import build_model
from cilearn.runtime import eager_optimizer


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))


def _train(**changes) -> TrainConfig:
    return TrainConfig(**changes)


def _lrs(cfg: TrainConfig, steps: int, steps_per_epoch: int = 1, base: float = 1.0) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# ----------------------------------------------------------------------------- optimizers


def test_parameter_kinds_tell_weights_biases_and_norm_scales():
    net = _net()
    conv, bn, linear = net[0], net[1], net[3]
    kinds = parameter_kinds(net)
    assert kinds[id(conv.weight)] == kinds[id(linear.weight)] == "weight"
    assert kinds[id(conv.bias)] == kinds[id(linear.bias)] == kinds[id(bn.bias)] == "bias"
    assert kinds[id(bn.weight)] == "norm"


@pytest.mark.parametrize("exempt, decayed", [
    ([], {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "linear.weight", "linear.bias"}),
    (["bias"], {"conv.weight", "bn.weight", "linear.weight"}),  # iCaRL's Theano code: weights and BN scales
    (["bias", "norm"], {"conv.weight", "linear.weight"}),
])
def test_no_weight_decay_groups(exempt, decayed):
    net = _net()
    names = {id(p): f"{['conv', 'bn', 'flat', 'linear'][int(n.split('.')[0])]}.{n.split('.')[1]}"
             for n, p in net.named_parameters()}
    optimizer = make_optimizer(net.parameters(), _train(weight_decay=0.5, no_weight_decay=exempt), model=net)
    got = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.5 for p in g["params"]}
    assert got == decayed
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 6


def test_exempt_parameters_take_a_plain_gradient_step():
    """One SGD step (no momentum): decayed p ← p − lr·(g + wd·p); exempt p ← p − lr·g."""
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0]]))
        net.bias.fill_(3.0)
    optimizer = make_optimizer(net.parameters(), _train(lr=0.1, momentum=0.0, weight_decay=0.5,
                                                        no_weight_decay=["bias"]), model=net)
    net(torch.tensor([[1.0, 1.0]])).sum().backward()  # dL/dw = x = (1, 1), dL/db = 1
    optimizer.step()
    torch.testing.assert_close(net.weight, torch.tensor([[1.0 - 0.1 * (1 + 0.5 * 1.0), -2.0 - 0.1 * (1 + 0.5 * -2.0)]]))
    torch.testing.assert_close(net.bias, torch.tensor([3.0 - 0.1 * 1.0]))


def test_groups_given_by_a_method_are_kept_and_split():
    net = _net()
    head = list(net[3].parameters())
    rest = [p for p in net.parameters() if all(p is not q for q in head)]
    groups = [{"params": rest}, {"params": head, "lr": 0.01}]
    optimizer = make_optimizer(groups, _train(no_weight_decay=["bias", "norm"]), model=net)
    head_groups = [g for g in optimizer.param_groups if g["lr"] == 0.01]
    assert len(head_groups) == 2 and {g["weight_decay"] for g in head_groups} == {0.0, 5e-4}
    with pytest.raises(ValueError, match="needs the model"):
        make_optimizer(net.parameters(), _train(no_weight_decay=["bias"]))


def test_optimizer_kinds_and_their_knobs():
    params = list(_net().parameters())
    sgd = make_optimizer(params, _train(nesterov=True, momentum=0.8))
    assert type(sgd) is eager_optimizer(torch.optim.SGD)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adam = make_optimizer(params, _train(optimizer="adam", lr=1e-3, betas=[0.8, 0.99], weight_decay=0.0))
    assert type(adam) is eager_optimizer(torch.optim.Adam)
    assert adam.defaults["betas"] == (0.8, 0.99) and adam.defaults["lr"] == 1e-3
    adamw = make_optimizer(params, _train(optimizer="adamw", weight_decay=0.01))
    assert type(adamw) is eager_optimizer(torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01
    adagrad = make_optimizer(params, _train(optimizer="adagrad", lr=0.01, weight_decay=0.0))
    assert type(adagrad) is eager_optimizer(torch.optim.Adagrad) and adagrad.defaults["lr"] == 0.01
    for optimizer, stock in ((sgd, torch.optim.SGD), (adam, torch.optim.Adam), (adamw, torch.optim.AdamW),
                             (adagrad, torch.optim.Adagrad)):
        assert isinstance(optimizer, stock)
        again = pickle.loads(pickle.dumps(optimizer))  # found by name (cilearn.runtime.EagerSGD, ...)
        assert type(again) is type(optimizer) and repr(again) == repr(optimizer)
        assert repr(optimizer).startswith(f"Eager{stock.__name__} (")
    # train.compile keeps PyTorch's classes as they are (their wrappers tell the compiler not to trace them)
    assert type(make_optimizer(params, _train(compile=True))) is torch.optim.SGD


@pytest.mark.parametrize("stock, options", [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)),
    (torch.optim.SGD, dict(lr=0.1)),
    (torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-3)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
    (torch.optim.Adagrad, dict(lr=0.05, weight_decay=1e-3)),
])
def test_eager_optimizers_update_and_save_as_pytorchs_own(stock, options):
    """The optimizers without PyTorch's compiler wrappers: the same parameters, states and state dicts as the
    stock class to the bit, over steps, zero_grad, a state dict saved by one and loaded into the other (a
    checkpoint of an earlier version), and a parameter group added on the way."""
    torch.manual_seed(0)
    start = [torch.randn(3, 4), torch.randn(4), torch.randn(2)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(6)]

    def build(cls):
        params = [nn.Parameter(t.clone()) for t in start]
        optimizer = cls(params[:2], **options)
        return params, optimizer

    (p_eager, eager), (p_stock, stock_optimizer) = build(eager_optimizer(stock)), build(stock)
    for step, g in enumerate(grads):
        if step == 2:  # a new group mid-way, as a growing head's parameters would be
            eager.add_param_group({"params": [p_eager[2]]})
            stock_optimizer.add_param_group({"params": [p_stock[2]]})
        if step == 4:  # resume each from the other's state dict
            eager_state, stock_state = eager.state_dict(), stock_optimizer.state_dict()
            eager.load_state_dict(stock_state)
            stock_optimizer.load_state_dict(eager_state)
        for params in (p_eager, p_stock):
            for p, grad in zip(params, g):
                p.grad = grad.clone()
        eager.step()
        stock_optimizer.step()
        eager.zero_grad()
        stock_optimizer.zero_grad()
        assert all(torch.equal(a, b) for a, b in zip(p_eager, p_stock)), step
        assert all(p.grad is None and p.grad_fn is None for group in eager.param_groups for p in group["params"])
    eager_state, stock_state = eager.state_dict(), stock_optimizer.state_dict()
    assert eager_state["param_groups"] == stock_state["param_groups"]
    assert eager_state["state"].keys() == stock_state["state"].keys()
    for index, state in eager_state["state"].items():
        assert state.keys() == stock_state["state"][index].keys()
        for key, value in state.items():
            other = stock_state["state"][index][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


def test_eager_optimizer_leaves_the_wrappers_out_after_a_stock_optimizer_was_made():
    """A stock optimizer, once made, wraps its class's ``step`` in PyTorch's step hooks: the eager class is still
    made without the compiler wrapper, and still runs step hooks (which Optimizer.__init__ adds to it)."""
    param = nn.Parameter(torch.ones(2))
    torch.optim.SGD([param], lr=0.1)
    assert getattr(torch.optim.SGD.step, "hooked", False)
    eager = eager_optimizer.__wrapped__(torch.optim.SGD)  # a fresh class, not the cached one
    code = vars(eager)["step"].__wrapped__.__code__
    assert code is torch.optim.SGD.step.__wrapped__.__wrapped__.__code__  # sgd.py's step itself
    optimizer, calls = eager([param], lr=0.5), []
    optimizer.register_step_post_hook(lambda *_: calls.append(1))
    param.grad = torch.ones(2)
    optimizer.step()
    assert calls == [1] and torch.equal(param.detach(), torch.full((2,), 0.5))


def test_eager_optimizer_keeps_a_wrapper_it_does_not_know():
    """Another PyTorch version may wrap a method differently: what is not one of the two known compiler
    wrappers stays as the stock class has it."""
    import functools

    def logged(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            wrapper.calls += 1
            return fn(*args, **kwargs)
        wrapper.calls = 0
        return wrapper

    class Custom(torch.optim.SGD):
        step = logged(torch.optim.SGD.step)

    eager = eager_optimizer(Custom)
    assert eager.step is Custom.step and "step" not in vars(eager)
    assert "zero_grad" in vars(eager)  # the inherited compiler wrapper is still left out
    param = nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)
    eager([param], lr=0.5).step()
    assert Custom.step.calls == 1 and torch.equal(param.detach(), torch.full((2,), 0.5))


def test_a_run_does_not_import_pytorchs_compiler_stack(tmp_path):
    """``cilearn run`` (iCaRL: herding, class means, the folded inference copy, checkpoints) trains without
    importing torch._dynamo: 71 MiB resident that an eager loop does not use."""
    import subprocess
    import sys
    code = ("import sys; from cilearn.cli import main; "
            "main(['run', 'configs/icarl_digits.yaml', '--out', sys.argv[1], '--set', 'train.epochs=1', "
            "'--set', 'scenario.classes_per_task=5', '--set', 'train.progress=false']); "
            "print('compiler imported:', 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "compiler imported: False" in out.stdout
    assert (tmp_path / "run" / "metrics.json").exists()


def test_adagrad_steps_follow_its_rule_by_hand():
    """Adagrad (Duchi et al. 2011, PyTorch's defaults): s ← s + g², θ ← θ − lr·g / (√s + 1e-10), per element;
    with weight decay g ← g + wd·θ first."""
    weight = nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = make_optimizer([weight], _train(optimizer="adagrad", lr=0.1, weight_decay=0.5))
    theta, total = torch.tensor([1.0, -2.0]), torch.zeros(2)
    for grad in (torch.tensor([3.0, 0.0]), torch.tensor([-1.0, 4.0])):
        weight.grad = grad.clone()
        optimizer.step()
        decayed = grad + 0.5 * theta
        total = total + decayed.square()
        theta = theta - 0.1 * decayed / (total.sqrt() + 1e-10)
        torch.testing.assert_close(weight.detach(), theta)
    torch.testing.assert_close(optimizer.state[weight]["sum"], total)


# ----------------------------------------------------------------------------- schedules


def test_per_epoch_schedules_equal_torch_schedulers():
    cfg = _train(epochs=10, milestones=[3, 7], gamma=0.2)
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    multistep = torch.optim.lr_scheduler.MultiStepLR(reference, milestones=[3, 7], gamma=0.2)
    expected = []
    for _ in range(10):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        multistep.step()
    assert _lrs(cfg, 10) == pytest.approx(expected)
    cosine = [0.5 * (1 + math.cos(math.pi * e / 10)) for e in range(10)]  # CosineAnnealingLR(T_max=10)
    assert _lrs(_train(epochs=10, scheduler="cosine"), 10) == pytest.approx(cosine)
    assert _lrs(_train(epochs=4, scheduler="constant"), 4) == [1.0] * 4


def _torch_lrs(make, steps: int, base: float) -> list[float]:
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    scheduler, lrs = make(reference), []
    for _ in range(steps):
        lrs.append(reference.param_groups[0]["lr"])
        reference.step()
        scheduler.step()
    return lrs


def test_cosine_floor_and_warm_restarts_equal_torch_schedulers():
    """min_lr is CosineAnnealingLR's eta_min; warm_restarts is SGDR with T_0 = 1, T_mult = 2 (GDumb's schedule)."""
    base, floor = 0.05, 0.0005
    cosine = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=floor), 10, base)
    assert _lrs(_train(epochs=10, lr=base, min_lr=floor, scheduler="cosine"), 10, base=base) == pytest.approx(cosine)
    sgdr = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=1, T_mult=2,
                                                                                      eta_min=floor), 31, base)
    ours = _lrs(_train(epochs=31, lr=base, min_lr=floor, scheduler="warm_restarts"), 31, base=base)
    assert ours == pytest.approx(sgdr)
    assert [i for i, lr in enumerate(ours) if lr == pytest.approx(base)] == [0, 1, 3, 7, 15]  # cycles 1, 2, 4, 8, 16


def test_warmup_then_schedule_by_hand():
    # per epoch: 2 warm-up epochs (1/2, 2/2), then constant
    assert _lrs(_train(epochs=5, scheduler="constant", warmup=2), 5, base=0.1) == pytest.approx(
        [0.05, 0.1, 0.1, 0.1, 0.1])
    # per iteration, 4 steps per epoch: one warm-up epoch (1/4 .. 4/4), then ×0.1 from epoch 2 on
    cfg = _train(epochs=3, milestones=[2], gamma=0.1, warmup=1)
    assert _lrs(cfg, 12, steps_per_epoch=4) == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1])
    # cosine after a warm-up decays over the remaining positions only
    factor = make_schedule(_train(epochs=6, scheduler="cosine", warmup=2))
    assert [factor(s) for s in range(6)] == pytest.approx(
        [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_warmup_factor_holds_a_constant_warm_start():
    # per epoch: one epoch at lr × 0.1, then the SGDR cycles start (GDumb's warm start)
    assert _lrs(_train(epochs=5, scheduler="warm_restarts", warmup=1, warmup_factor=0.1), 5) == pytest.approx(
        [0.1, 1.0, 1.0, 0.5, 1.0])
    # per iteration, 4 steps per epoch: the factor holds for the whole warm-up epoch
    cfg = _train(epochs=2, scheduler="constant", warmup=1, warmup_factor=0.25)
    assert _lrs(cfg, 8, steps_per_epoch=4) == pytest.approx([0.25] * 4 + [1.0] * 4)


def test_schedule_resumes_from_an_earlier_multisteplr_state():
    """Mid-task checkpoints of earlier versions hold a MultiStepLR state: its step count carries over."""
    old_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    old = torch.optim.lr_scheduler.MultiStepLR(old_opt, milestones=[2], gamma=0.5)
    for _ in range(3):
        old_opt.step()
        old.step()
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, _train(epochs=5, milestones=[2], gamma=0.5))
    optimizer.load_state_dict(old_opt.state_dict())
    scheduler.load_state_dict(old.state_dict())
    assert scheduler.last_epoch == 3 and optimizer.param_groups[0]["lr"] == 0.5
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.5
    # its own state round-trips too, and holds no callable (checkpoints load with weights_only)
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [None]


# ----------------------------------------------------------------------------- config


BASE = {"data": {"name": "digits"}, "model": {"name": "mlp"}, "method": {"name": "finetune"},
        "scenario": {"classes_per_task": 2}}


def _error(train: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(expand_runs({**BASE, "train": train})[0])
    return str(info.value)


@pytest.mark.parametrize("train, message", [
    ({"lr": 0}, "train.lr: 0 trains nothing; give a learning rate above 0"),
    ({"lr": -0.1}, "train.lr: -0.1 is below the minimum"),
    ({"optimizer": "adam", "nesterov": True}, "train.nesterov: needs optimizer sgd with momentum > 0"),
    ({"momentum": 0, "nesterov": True}, "train.nesterov: needs optimizer sgd with momentum > 0"),
    ({"betas": [0.9]}, "train.betas: expected two numbers in [0, 1)"),
    ({"betas": [0.9, 1.0]}, "train.betas: expected two numbers in [0, 1)"),
    ({"optimizer": "rmsprop"}, "Choose one of: adagrad, adam, adamw, sgd"),
    ({"no_weight_decay": ["biases"]}, "train.no_weight_decay[0]: unknown value 'biases'"),
    ({"no_weight_decay": ["bias", "bias"]}, "names a kind twice"),
    ({"epochs": 4, "warmup": 4}, "train.warmup: 4 must be shorter than train.epochs (4)"),
    ({"epochs": 4, "milestones": [5]}, "at most train.epochs (4)"),
    ({"iterations": 100, "milestones": [150]}, "at most train.iterations (100)"),
    ({"iterations": 100, "warmup": 100}, "train.warmup: 100 must be shorter than train.iterations (100)"),
    ({"epochs": 4, "warmup_factor": 0.1}, "train.warmup_factor: 0.1 is the lr factor of a warm-up"),
    ({"epochs": 4, "warmup": 1, "warmup_factor": 2}, "train.warmup_factor: 2.0 is above the maximum 1.0"),
])
def test_train_config_errors(train, message):
    assert message in _error(train)


def test_optimizer_knobs_in_a_run(tmp_path):
    """A user's config: AdamW with a warm-up and no decay on biases/norms trains through the whole loop."""
    from cilearn.engine.runner import Run

    raw = {**BASE, "scenario": {"classes_per_task": 5, "class_order": "sorted"},
           "model": {"name": "mlp", "options": {"hidden": [16]}},
           "train": {"epochs": 3, "batch_size": 64, "optimizer": "adamw", "lr": 0.01, "betas": [0.8, 0.99],
                     "weight_decay": 0.01, "no_weight_decay": ["bias"], "scheduler": "constant", "warmup": 2,
                     "progress": False, "eval_every": 0},
           "output": {"save_checkpoints": False, "save_features": False}}
    run = Run(parse_config(expand_runs(raw)[0]), tmp_path / "run")
    result = run.execute()
    optimizer = run.trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.8, 0.99)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.01]
    with open(tmp_path / "run" / "log.csv") as handle:
        lrs = [float(r["lr"]) for r in csv.DictReader(handle)]
    assert lrs == pytest.approx([0.005, 0.01, 0.01] * 2)  # the warm-up restarts with every task
    assert result["seen_accuracy"][0] > 0.8


def _two_tasks(state: str, optimizer: str = "adam"):
    """An MLP trained by the shared loop on two 2-class tasks with Adam (or ``optimizer``); returns the trainer
    after task 2's start."""
    torch.manual_seed(0)
    model = build_model("mlp", 1, 4, hidden=[8])
    augment = BatchAugment((0.5,), (0.25,))
    method = Method(MethodOptions(name="finetune"), model, MethodContext(scenario=None, device=torch.device("cpu"),
                                                                        seed=0, infer=None, augment=augment))
    cfg = TrainConfig(epochs=1, batch_size=8, optimizer=optimizer, lr=0.01, weight_decay=0.0, scheduler="constant",
                      progress=False, channels_last=False, optimizer_state=state)
    trainer = Trainer(cfg, torch.device("cpu"), augment)
    images = np.random.RandomState(0).randint(0, 256, (32, 4, 4, 1), dtype=np.uint8)
    model.add_classes(2)
    trainer.start(method)
    trainer.fit(model, method, ImageData(images, np.arange(32) % 2, ["a", "b", "c", "d"]))  # 4 steps
    first = trainer.optimizer
    after_task_1 = {name: {k: v.clone() for k, v in first.state[p].items()} for name, p in model.named_parameters()}
    model.add_classes(2)
    trainer.start(method)
    return trainer, model, first, after_task_1


def test_optimizer_state_keep_carries_adams_moments_and_step_count_into_the_next_task():
    trainer, model, first, after_task_1 = _two_tasks("keep")
    assert trainer.optimizer is not first  # a new optimizer (the grown head's outputs join it) ...
    for name, p in model.named_parameters():
        state = trainer.optimizer.state[p]
        if name == "head.chunks.1.weight" or name == "head.chunks.1.bias":
            assert not state  # ... the new outputs start fresh
            continue
        assert int(state["step"]) == 4  # ... every other parameter continues task 1's Adam: 4 steps so far
        assert torch.equal(state["exp_avg"], after_task_1[name]["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], after_task_1[name]["exp_avg_sq"])
    # a run resumed after task 1 starts task 2 from the state its checkpoint kept (Trainer.carried)
    resumed = type(trainer)(trainer.base_cfg, torch.device("cpu"), trainer.augment)
    resumed.carried = trainer.kept_state(model)
    resumed.start(Method(MethodOptions(name="finetune"), model, MethodContext(None, torch.device("cpu"), 0, None,
                                                                            trainer.augment)))
    assert int(resumed.optimizer.state[model.backbone.layers[1].weight]["step"]) == 4


def test_optimizer_state_keep_carries_adagrads_sums_of_squares():
    trainer, model, _, after_task_1 = _two_tasks("keep", optimizer="adagrad")
    assert isinstance(trainer.optimizer, torch.optim.Adagrad)
    for name, p in model.named_parameters():
        total = trainer.optimizer.state[p]["sum"]
        if name.startswith("head.chunks.1."):
            assert not total.any()  # the new outputs start from Adagrad's zero accumulator
        else:
            assert total.any() and torch.equal(total, after_task_1[name]["sum"])


def test_optimizer_state_reset_starts_every_task_fresh():
    trainer, model, _, _ = _two_tasks("reset")
    assert all(not trainer.optimizer.state[p] for p in model.parameters())


def test_clip_grad_value_bounds_every_gradient_before_the_step(tmp_path):
    """train.clip_grad_value v: each gradient element is clipped to [−v, v] before the step, so with plain SGD at
    lr 1 no weight moves by more than v per step (one step here: the whole task in one batch); unclipped, the
    same first step moves some weight by more."""
    from helpers import make_run

    def first_step(**train):
        run = make_run(tmp_path / str(len(train)), {"name": "finetune"}, num_tasks=1,
                       train={"lr": 1.0, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 4096, **train})
        before = [p.detach().clone() for p in run.model.backbone.parameters()]
        run.execute()
        return max((p.detach() - b).abs().max().item() for p, b in zip(run.model.backbone.parameters(), before))

    assert first_step(clip_grad_value=1e-3) == pytest.approx(1e-3, rel=1e-4)  # the largest gradients hit the bound
    assert first_step() > 2e-3
    with pytest.raises(ConfigError, match="clip_grad_value"):
        parse_config({"data": {"name": "digits"}, "method": {"name": "finetune"}, "model": {"name": "mlp"},
                      "train": {"clip_grad_value": 0}})
