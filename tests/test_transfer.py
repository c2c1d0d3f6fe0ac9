"""Transfer learning: loading a pre-trained backbone, linear probe, frozen stages, mismatch errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cilearn.cli import main
from cilearn.config import ModelConfig
from cilearn.errors import CheckpointError, ConfigError
from cilearn.models import build_model
from cilearn.engine.checkpoints import save_checkpoint
from cilearn.transfer import apply_transfer, backbone_stages

OPTIONS = {"depth": 8, "width": 0.5}


def tiny(seed: int, classes: int = 3, **options):
    torch.manual_seed(seed)
    model = build_model("cifar_resnet", 1, 8, **{**OPTIONS, **options})
    model.add_classes(classes)
    return model


def cfg(path, transfer="full", freeze_stages=0) -> ModelConfig:
    return ModelConfig(name="cifar_resnet", options=OPTIONS, pretrained=str(path), transfer=transfer,
                       freeze_stages=freeze_stages)


@pytest.fixture
def source(tmp_path: Path):
    model = tiny(1, classes=5)
    model.train()
    with torch.no_grad():  # non-default BatchNorm statistics, so that copying them is visible
        model(torch.randn(16, 1, 8, 8) * 3 + 1)
    return model


def assert_backbone_equal(a, b) -> None:
    for (name, x), y in zip(a.backbone.state_dict().items(), b.backbone.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("form", ["plain", "backbone_only", "checkpoint", "run_dir"])
def test_backbone_weights_copied_head_not(tmp_path: Path, source, form) -> None:
    if form == "plain":
        path = tmp_path / "weights.pt"
        torch.save(source.state_dict(), path)
    elif form == "backbone_only":
        path = tmp_path / "backbone.pt"
        torch.save(source.backbone.state_dict(), path)
    elif form == "checkpoint":
        path = tmp_path / "ckpt.pt"
        save_checkpoint(path, {"format": 1, "model": source.state_dict(), "method": {}})
    else:
        path = tmp_path / "run"
        save_checkpoint(path / "checkpoints" / "task_00.pt", {"format": 1, "model": tiny(9, 5).state_dict()})
        save_checkpoint(path / "checkpoints" / "task_01.pt", {"format": 1, "model": source.state_dict()})
    target = tiny(2)
    head_before = target.head.state_dict()
    apply_transfer(target, cfg(path))
    assert_backbone_equal(target, source)  # the last task's checkpoint for a run directory
    assert all(torch.equal(v, target.head.state_dict()[k]) for k, v in head_before.items())
    assert all(p.requires_grad for p in target.parameters())  # full


def train_steps(model, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 3, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_linear_probe_freezes_backbone_and_batchnorm(tmp_path: Path, source) -> None:
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    model = tiny(2)
    apply_transfer(model, cfg(path, "linear_probe"))
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    train_steps(model)
    assert_backbone_equal(model, source)  # weights and BatchNorm running statistics unchanged
    assert any(not torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())
    # In training mode the frozen backbone computes exactly what it computes in evaluation mode.
    x = torch.randn(4, 1, 8, 8)
    model.train()
    train_features = model.features(x)
    model.eval()
    assert torch.allclose(train_features, model.features(x))


def test_freeze_stages(tmp_path: Path, source) -> None:
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    model = tiny(2)
    apply_transfer(model, cfg(path, "freeze", freeze_stages=2))  # stem + first residual stage
    stages = backbone_stages(model.backbone)
    assert len(stages) == 4
    frozen = {id(p) for s in stages[:2] for p in s.parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    train_steps(model)
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param)
        assert changed != (id(param) in frozen), name
    for name, buffer in model.named_buffers():
        if name.startswith(("backbone.stem", "backbone.stages.0.")) and "running" in name:
            assert torch.equal(buffer, buffers[name]), name
        elif name.startswith("backbone.stages.2.") and "running_mean" in name:
            assert not torch.equal(buffer, buffers[name]), name
    with pytest.raises(ConfigError, match="more than the 4 stages"):
        apply_transfer(tiny(2), cfg(path, "freeze", freeze_stages=5))
    with pytest.raises(ConfigError, match="only used with model.transfer: freeze"):
        apply_transfer(tiny(2), cfg(path, "full", freeze_stages=1))


def test_shape_mismatch_and_bad_sources(tmp_path: Path, source) -> None:
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    wide = build_model("cifar_resnet", 1, 8, depth=8, width=1.0)
    with pytest.raises(CheckpointError) as err:
        apply_transfer(wide, cfg(path))
    message = str(err.value)
    assert "backbone.stem.0.weight" in message and "(8, 1, 3, 3)" in message and "(16, 1, 3, 3)" in message
    assert "same model.name and model.options" in message
    other = build_model("mlp", 1, 8)
    with pytest.raises(CheckpointError, match="does not match model backbone"):
        apply_transfer(other, ModelConfig(name="mlp", pretrained=str(path)))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        apply_transfer(tiny(2), cfg(tmp_path / "empty_run"))
    with pytest.raises(CheckpointError, match="does not exist"):
        apply_transfer(tiny(2), cfg(tmp_path / "nowhere.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        apply_transfer(tiny(2), cfg(tmp_path / "junk.pt"))


def test_cli_pretrain_then_linear_probe(tmp_path: Path) -> None:
    common = ["--set", "model={name: cifar_resnet, options: {depth: 8, width: 0.5}}", "--set", "train.epochs=1",
              "--set", "train.progress=false", "--set", "output.save_features=false"]
    pre = tmp_path / "pre"
    assert main(["run", str(Path(__file__).parents[1] / "configs/quickstart.yaml"), "--out", str(pre),
                 "--set", "method={name: finetune}", "--set", "scenario.classes_per_task=5",
                 "--set", "scenario.num_tasks=1", *common]) == 0
    out = tmp_path / "probe"
    assert main(["run", str(Path(__file__).parents[1] / "configs/quickstart.yaml"), "--out", str(out), *common,
                 "--set", "method={name: finetune}", "--set", "scenario.classes_per_task=5",
                 "--set", "scenario.num_tasks=1", "--set", "scenario.class_order=[5, 6, 7, 8, 9, 0, 1, 2, 3, 4]",
                 "--set", f"model.pretrained={pre}", "--set", "model.transfer=linear_probe"]) == 0
    before = torch.load(pre / "checkpoints" / "task_00.pt", weights_only=True)["model"]
    after = torch.load(out / "checkpoints" / "task_00.pt", weights_only=True)["model"]
    for key, value in before.items():
        if key.startswith("backbone."):
            assert torch.equal(value, after[key]), key
    assert not torch.equal(before["head.chunks.0.weight"], after["head.chunks.0.weight"])
    assert json.loads((out / "metrics.json").read_text())["complete"]
