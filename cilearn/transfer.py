"""Transfer learning: start a run from a pre-trained backbone (``model.pretrained``).

``model.pretrained`` is one of

- a run directory: its last ``checkpoints/task_XX.pt`` is used;
- a cilearn checkpoint file (``{"format": ..., "model": state_dict, ...}``);
- a plain PyTorch state dict (``torch.save(model.state_dict())``) of an ``IncrementalNet`` (keys
  ``backbone.*``/``head.*``) or of a bare backbone.

Everything is read with ``weights_only`` (:func:`cilearn.engine.checkpoints.load_checkpoint`).  Only the
backbone's weights and BatchNorm statistics are copied: the head belongs to the new classes.  The
checkpoint must come from the same architecture; a missing/unexpected key or a shape mismatch is a
:class:`~cilearn.errors.CheckpointError` naming the parameter.

``model.transfer``:

- ``full``: every weight is trained (fine-tuning from the pre-trained start);
- ``linear_probe``: the whole backbone is frozen — ``requires_grad=False`` (the base Method's
  ``parameters_to_train`` leaves it out of the optimizer) and its BatchNorm layers stay in evaluation
  mode even while the net trains (a forward pre-hook resets ``training`` before every call, so no
  method, trainer or ``model.train()`` call can update the running statistics);
- ``freeze`` with ``freeze_stages: k``: the first ``k`` stages are frozen the same way; stage 0 is the
  stem, then the residual stages (ResNets), or the hidden layers of an MLP.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .engine.checkpoints import load_checkpoint
from .rundir import RunDir


# --- finding and reading the weights ------------------------------------------------------------------
def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: the file itself, or a run directory's last task checkpoint."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        tasks = RunDir(path).task_checkpoints()  # last task first
        if tasks:
            return tasks[0]
        runs = RunDir(path).runs_with_checkpoints()
        hint = (f" It holds the runs {', '.join(runs)}: point model.pretrained at one of them, e.g. "
                f"{path / runs[0]}." if runs else " Was the run saved with output.save_checkpoints: true?")
        raise CheckpointError(f"model.pretrained: '{path}' has no checkpoints/task_XX.pt.{hint}")
    raise CheckpointError(f"model.pretrained: '{path}' does not exist; give a run directory, a cilearn checkpoint "
                          f"or a state dict saved with torch.save(model.state_dict()).")


def backbone_state(state: dict, source: str) -> dict[str, torch.Tensor]:
    """The backbone weights of a cilearn checkpoint or a plain (IncrementalNet or backbone) state dict."""
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a cilearn checkpoint
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"model.pretrained: '{source}' is neither a cilearn checkpoint nor a state dict of "
                              f"tensors.")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def load_backbone(model: nn.Module, path: str | Path) -> Path:
    """Copy the backbone weights of the checkpoint ``path`` names into ``model.backbone``."""
    file = resolve_checkpoint(path)
    weights = backbone_state(load_checkpoint(file), str(file))
    target = model.backbone.state_dict()
    missing = [k for k in target if k not in weights]
    unexpected = [k for k in weights if k not in target]
    if missing or unexpected:
        detail = (f"missing {missing[:3]}" if missing else "") + (" and " if missing and unexpected else "") + (
            f"unexpected {unexpected[:3]}" if unexpected else "")
        raise CheckpointError(f"model.pretrained: '{file}' does not match model backbone ({detail}); pre-train "
                              f"and transfer with the same model.name and model.options.")
    for key, value in target.items():
        if weights[key].shape != value.shape:
            raise CheckpointError(
                f"model.pretrained: parameter 'backbone.{key}' has shape {tuple(weights[key].shape)} in '{file}' "
                f"but {tuple(value.shape)} in this model; use the same model.name and model.options (width, "
                f"depth, input channels) as the run that saved the checkpoint.")
    model.backbone.load_state_dict(weights)
    return file


# --- freezing -----------------------------------------------------------------------------------------
def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone as an ordered list of stages: ResNet stem + residual stages; MLP hidden layers."""
    if hasattr(backbone, "stem") and hasattr(backbone, "stages"):
        return [backbone.stem, *backbone.stages]
    if hasattr(backbone, "layers"):
        return [m for m in backbone.layers if isinstance(m, nn.Linear)]
    raise ConfigError(f"model.freeze_stages: {type(backbone).__name__} has no known stages; use "
                      f"model.transfer: linear_probe or full.")


def _keep_eval(module: nn.Module, args) -> None:
    module.training = False  # frozen BatchNorm: normalise with, and never update, the running statistics


def freeze(module: nn.Module) -> None:
    """No gradient for ``module``'s parameters and evaluation-mode BatchNorm, whatever ``train()`` says."""
    for param in module.parameters():
        param.requires_grad_(False)
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not getattr(sub, "_cilearn_frozen", False):
            sub.register_forward_pre_hook(_keep_eval)
            sub._cilearn_frozen = True
            sub.eval()


def apply_transfer(model: nn.Module, model_cfg) -> Path:
    """Load ``model_cfg.pretrained``'s backbone into ``model`` and freeze what ``model_cfg.transfer`` asks.
    Returns the checkpoint file used."""
    mode, stages = model_cfg.transfer, model_cfg.freeze_stages
    if mode != "freeze" and stages:
        raise ConfigError(f"model.freeze_stages: only used with model.transfer: freeze (got transfer: {mode}).")
    file = load_backbone(model, model_cfg.pretrained)
    if mode == "linear_probe":
        freeze(model.backbone)
    elif mode == "freeze":
        parts = backbone_stages(model.backbone)
        if stages > len(parts):
            raise ConfigError(f"model.freeze_stages: {stages} is more than the {len(parts)} stages of "
                              f"{model_cfg.name} (stem = stage 0, then {len(parts) - 1} more).")
        for part in parts[:stages]:
            freeze(part)
    return file
