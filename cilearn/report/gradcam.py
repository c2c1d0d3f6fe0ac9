"""Grad-CAM (Selvaraju et al. 2017) on the last convolutional stage of a cilearn model.

The class score's gradient w.r.t. the stage's activation maps, averaged over space, weights the maps;
their ReLU'd sum, upsampled to the input size and scaled to [0, 1] per image, is the heatmap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn

from . import ReportError


def target_layer(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The last convolutional stage: ``backbone.stages[-1]`` for ResNets, else the last Conv2d; None for a
    model without convolutions (MLP)."""
    backbone = getattr(model, "backbone", model)
    stages = getattr(backbone, "stages", None)
    if isinstance(stages, nn.Sequential) and len(stages):
        return stages[-1], f"backbone.stages[{len(stages) - 1}] (last residual stage)"
    last = None
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            last = (module, f"backbone.{name}")
    return last


def grad_cam(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmaps for a normalised NCHW batch: ``(cams (N, H, W) in [0, 1], predicted classes, softmax of
    the target class)``.  ``target`` (N,) picks the class to explain; default the predicted one."""
    found = target_layer(model)
    if found is None:
        raise ReportError("Grad-CAM needs a convolutional model; this one has no Conv2d layer (an MLP?).")
    layer, _ = found
    saved: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        saved["activation"] = output
        output.register_hook(lambda grad: saved.__setitem__("gradient", grad))

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = inputs.detach().clone().requires_grad_(True)  # gradients reach the maps without touching weights
            logits = model(x)
            predicted = logits.argmax(1)
            chosen = predicted if target is None else torch.as_tensor(target, dtype=torch.long)
            score = logits.gather(1, chosen[:, None]).sum()
            saved.pop("gradient", None)
            score.backward()
    finally:
        handle.remove()
        model.train(was_training)
    activation, gradient = saved["activation"].detach().float(), saved["gradient"].float()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    probability = logits.detach().softmax(1).gather(1, chosen[:, None])[:, 0]
    return (cam / peak).numpy(), predicted.numpy(), probability.numpy()


def read_images(paths: list[str | Path], size: int, channels: int) -> np.ndarray:
    """PNG/JPG files → uint8 NHWC, converted to the model's channels and resized to ``size``×``size``."""

    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ReportError(f"image '{path}' does not exist.")
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                image = image.resize((size, size), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise ReportError(f"'{path}' cannot be read as an image ({exc}); give PNG or JPG files.") from None
        out.append(array[..., None] if array.ndim == 2 else array)
    return np.stack(out)
