"""XdG (context-dependent gating) as van de Ven & Tolias's code computes it: each task's gate over the hidden units
written out by hand (gated: x·wᵀ·0 + b), gradients, the evaluation scoring each task's test images under its own
gate (also through the folded evaluation copy), refusals, and a task-incremental run through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import digits_config, make_run

from cilearn.cli import main
from cilearn.config import parse_config
from cilearn.engine.runner import Run
from cilearn.errors import ConfigError
from cilearn.rundir import write_yaml

TASK_IL = {"type": "task_incremental"}


def xdg_run(tmp_path, gating_prop=0.5, hidden=(6, 5), **changes):
    return make_run(tmp_path, {"name": "xdg", "gating_prop": gating_prop}, num_tasks=3, scenario=TASK_IL,
                    model={"options": {"hidden": list(hidden)}}, **changes)


def by_hand(run, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """The MLP's features with task masks, as their ``linearExcitability``: relu((x·Wᵀ)·m + b) per hidden layer."""
    h = x.flatten(1)
    for layer, mask in zip(run.method.layers, masks):
        h = F.relu((h @ layer.weight.T) * mask + layer.bias)
    return h


def test_each_task_gates_its_share_of_units_and_gated_units_output_their_bias(tmp_path):
    run = xdg_run(tmp_path)
    method = run.method
    for layer in method.layers:  # non-zero biases, so that "gated → b" differs from "gated → 0"
        torch.nn.init.uniform_(layer.bias, 0.1, 0.5)
    masks = [method.mask(k) for k in range(3)]
    for per_task in masks:
        assert [int((m == 0).sum()) for m in per_task] == [3, 2]  # int(0.5 · 6), int(0.5 · 5)
        assert all(set(m.tolist()) <= {0.0, 1.0} for m in per_task)
    assert not all(torch.equal(a, b) for a, b in zip(masks[0], masks[1]))  # tasks use different units
    again = xdg_run(tmp_path / "again").method  # the same seed: the same gates (a resumed run's)
    assert all(torch.equal(a, b) for k in range(3) for a, b in zip(masks[k], again.mask(k)))

    x = torch.rand(4, 1, 8, 8)
    for k in range(3):
        with method.task_context(k):
            got = run.model.features(x)
        torch.testing.assert_close(got, by_hand(run, x, masks[k]), rtol=1e-6, atol=1e-6)
        first = run.model.backbone.layers[1](x.flatten(1))  # the first Linear's gated output: b where gated
        gated = masks[k][0] == 0
        with method.task_context(k):
            first_gated = run.model.backbone.layers[1](x.flatten(1))
        torch.testing.assert_close(first_gated[:, gated], method.layers[0].bias[gated].expand(4, -1))
        torch.testing.assert_close(first_gated[:, ~gated], first[:, ~gated])
    method.active = None
    torch.testing.assert_close(run.model.features(x), by_hand(run, x, [torch.ones(6), torch.ones(5)]))


def test_gated_units_weights_get_no_gradient_their_biases_do(tmp_path):
    run = xdg_run(tmp_path)
    run.method.begin_task(run.scenario[0])
    for layer in run.method.layers:
        torch.nn.init.uniform_(layer.bias, 0.1, 0.5)
    run.model.add_classes(2)
    run.model.features(torch.rand(8, 1, 8, 8)).sum().backward()
    for layer, mask in zip(run.method.layers, run.method.mask(0)):
        gated = mask == 0
        assert torch.all(layer.weight.grad[gated] == 0) and torch.any(layer.weight.grad[~gated] != 0)
        assert torch.all(layer.bias.grad[gated] != 0)  # ReLU(b) > 0 passes the gradient to b


@pytest.mark.parametrize("eval_batch_size", [512, 7])  # one batch: the model itself; 7: the folded copy
def test_evaluation_scores_each_task_under_its_own_gate(tmp_path, eval_batch_size):
    run = xdg_run(tmp_path, train={"eval_batch_size": eval_batch_size})
    for task in run.scenario:
        run.run_task(task)
    data = run.evaluator.test_set(2)
    features, logits = run.evaluator._infer(data)
    for k in range(3):
        rows = torch.as_tensor(np.flatnonzero(data.segment == k))
        x = run.augment.normalize(data.images[rows])
        want = by_hand(run, x, run.method.mask(k))
        torch.testing.assert_close(features[rows], want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[rows], run.model.head(want), rtol=1e-5, atol=1e-5)
    ungated = run.inference(data.images)[0]
    assert not torch.allclose(ungated, features, atol=1e-3)  # the gates changed what the evaluation saw


def test_xdg_is_refused_where_it_cannot_work(tmp_path):
    with pytest.raises(ConfigError, match="only a task-incremental scenario gives"):
        Run(parse_config(digits_config(method={"name": "xdg"})), tmp_path / "a").setup()
    with pytest.raises(ConfigError, match="has none. Use model.name: mlp"):
        Run(parse_config(digits_config(method={"name": "xdg"}, scenario=TASK_IL,
                                       model={"name": "resnet20", "options": {"width": 0.25}})), tmp_path / "b").setup()
    with pytest.raises(ConfigError, match="gating_prop"):
        parse_config(digits_config(method={"name": "xdg", "gating_prop": 1.5}, scenario=TASK_IL))


def test_cli_runs_xdg_beside_finetuning_in_task_incremental_digits(tmp_path, capsys):
    raw = digits_config(scenario={**TASK_IL, "num_tasks": 3}, model={"options": {"hidden": [64, 64]}},
                        train={"epochs": 3, "scheduler": "constant", "eval_batch_size": 16})
    raw.pop("method")
    raw["methods"] = [{"name": "finetune"}, {"name": "xdg", "gating_prop": 0.8}]
    raw["seed"] = 0
    config = tmp_path / "xdg.yaml"
    write_yaml(config, raw)
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    forgetting = {label: entry["forgetting"]["mean"] for label, entry in summary["aggregate"].items()}
    assert forgetting["xdg"] < forgetting["finetune"]  # separate sub-networks forget less than one shared one
