"""Batched image augmentation on the training device.

Images stay uint8 NCHW on the device; a batch is augmented with a few tensor operations per step and
normalised once, so no per-sample Python or PIL work happens inside the training loop.

``train.augment`` is one of the modes ``auto`` / ``none`` / ``crop`` / ``flip`` / ``crop_flip`` or a list of
steps, each a name or ``{name: {option: value}}``, applied in order to every training batch (stream and replay):

- ``crop`` (``padding: 4``): a random window of the zero-padded image, offsets drawn per sample;
- ``flip``: horizontal flip of each sample with probability 0.5;
- ``color_jitter`` (``brightness``, ``contrast``, ``saturation``, each 0 = off): per sample, factors drawn
  uniformly from ``[max(0, 1 - v), 1 + v]`` and applied as torchvision's ``adjust_*`` functions do, in this fixed
  order (torchvision draws the order per call; hue is not offered);
- ``randaugment`` (``num_ops: 2``, ``magnitude: 9``): torchvision's RandAugment op list and magnitudes (31 bins):
  per sample, ``num_ops`` ops drawn uniformly from identity, shear x/y, translate x/y, rotate, brightness,
  colour, contrast, sharpness, posterize, solarize, autocontrast and equalize, signed ops with a random sign;
  the geometric ops sample the nearest pixel about the image centre and fill with black;
- ``cutmix`` (``alpha: 1.0``, ``p: 0.5``), the last step: with probability ``p`` per batch, a box of area
  ``1 - λ`` (``λ ~ Beta(α, α)``, box centre uniform, clipped at the border, λ then recomputed from the clipped
  box) is pasted from a random permutation of the batch (GDumb's ``cutmix_data``); the loop trains on
  ``λ·L(y) + (1 - λ)·L(y_perm)`` (:class:`Mix`), so only methods whose objective is the classification loss
  of the batch accept it (``Method.mixes_labels``).

Every random draw uses ``generator`` (None: torch's global generator, which checkpoints save and restore).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, unknown_choice
from .schema import build_section, option

MODES = ("auto", "none", "crop", "crop_flip", "flip")


def to_tensor_images(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC numpy → uint8 NCHW tensor on ``device`` (4× smaller than float32)."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()


def nchw_view(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC numpy → a uint8 NCHW tensor on ``device`` with channels_last strides: on the CPU the
    same memory as ``images`` (no copy of a task's data or of a test set); batches drawn from it are
    augmented or normalised into whatever layout the network runs in."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)


# --- the steps' options (the schema of train.augment's list form) ------------------------------------------
@dataclasses.dataclass
class CropOptions:
    """crop: a random window of the zero-padded image"""
    padding: int = option(4, min=0, help="pixels of zero padding on each side")


@dataclasses.dataclass
class FlipOptions:
    """flip: horizontal flip with probability 0.5"""


@dataclasses.dataclass
class ColorJitterOptions:
    """color_jitter: per-sample brightness, contrast and saturation factors"""
    brightness: float = option(0.0, min=0.0, help="factor drawn from [max(0, 1 - v), 1 + v] (0: off)")
    contrast: float = option(0.0, min=0.0, help="factor drawn from [max(0, 1 - v), 1 + v] (0: off)")
    saturation: float = option(0.0, min=0.0, help="factor drawn from [max(0, 1 - v), 1 + v] (0: off)")


@dataclasses.dataclass
class RandAugmentOptions:
    """randaugment: torchvision's RandAugment ops and magnitudes, drawn per sample"""
    num_ops: int = option(2, min=0, help="ops applied to each sample")
    magnitude: int = option(9, min=0, max=30, help="magnitude bin of the 31 (torchvision's default 9)")


@dataclasses.dataclass
class CutMixOptions:
    """cutmix: paste a box from another sample of the batch and mix the labels (the last step)"""
    alpha: float = option(1.0, min=1e-6, help="λ ~ Beta(alpha, alpha)")
    p: float = option(0.5, min=0.0, max=1.0, help="probability that a batch is mixed")


STEP_OPTIONS: dict[str, type] = {"crop": CropOptions, "flip": FlipOptions, "color_jitter": ColorJitterOptions,
                                 "randaugment": RandAugmentOptions, "cutmix": CutMixOptions}


def parse_steps(spec: Any, path: str = "train.augment") -> list[tuple[str, Any]]:
    """``train.augment``'s list form → [(step name, its options)], checked (ConfigError naming the entry)."""
    steps = []
    for i, entry in enumerate(spec):
        where = f"{path}[{i}]"
        if isinstance(entry, Mapping) and len(entry) == 1:
            (name, values), = entry.items()
        elif isinstance(entry, str):
            name, values = entry, {}
        else:
            raise ConfigError(f"{where}: expected a step name or {{name: {{option: value}}}}, got {entry!r}. "
                              f"Steps: {', '.join(STEP_OPTIONS)}.")
        if name not in STEP_OPTIONS:
            raise unknown_choice("augmentation step", name, list(STEP_OPTIONS), where)
        steps.append((name, build_section(STEP_OPTIONS[name], values, f"{where}.{name}")))
    names = [name for name, _ in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: {names} names a step twice; give each step once.")
    if "cutmix" in names[:-1]:
        raise ConfigError(f"{path}: cutmix mixes the labels and must be the last step (this list: {names}).")
    return steps


def mode_steps(mode: str, channels: int) -> list[tuple[str, Any]]:
    """The steps of a string mode; ``auto`` means crop+flip for colour images and nothing for grey ones
    (flipping digits changes their meaning)."""
    if mode not in MODES:
        raise unknown_choice("value", mode, list(MODES), "train.augment")
    if mode == "auto":
        mode = "crop_flip" if channels == 3 else "none"
    return ([("crop", CropOptions())] if "crop" in mode else []) + ([("flip", FlipOptions())] if "flip" in mode else [])


# --- the steps -----------------------------------------------------------------------------------------------
def crop(images: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random ``h×w`` window of each zero-padded image (per-sample offsets, one advanced-indexing call)."""
    n, _, h, w = images.shape
    p = padding
    padded = F.pad(images, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=images.device)
    rows = (dy + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def flip(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    chosen = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(chosen[:, None, None, None], images.flip(3), images)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of float images in [0, 1] (torchvision's weights; a grey image is its own)."""
    if x.shape[1] == 1:
        return x
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(factor·x + (1 - factor)·other, 0, 1)`` with one factor per sample (torchvision's ``_blend``)."""
    f = factor.view(-1, 1, 1, 1)
    return x.mul(f).add_(other * (1 - f)).clamp_(0, 1)


def adjust_brightness(x, factor):
    return x.mul(factor.view(-1, 1, 1, 1)).clamp_(0, 1)  # the blend with black


def adjust_contrast(x, factor):
    return blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x, factor):
    return blend(x, grayscale(x), factor)


def adjust_sharpness(x, factor):
    """Blend with a 3×3 smoothed copy (centre weight 5, neighbours 1, /13) whose border pixels are the image's."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return blend(x, smooth, factor)


def posterize(x, bits: int):
    mask = 256 - 2 ** (8 - bits)  # keep the top ``bits`` bits
    return torch.bitwise_and((x * 255).round().to(torch.uint8), mask).float() / 255


def solarize(x, threshold: float):
    return torch.where(x >= threshold, 1 - x, x)


def autocontrast(x):
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    scale = torch.where(flat, torch.ones_like(high), 1 / (high - low).clamp_min(1e-12))
    return torch.where(flat, x, ((x - low) * scale).clamp_(0, 1))


def equalize(x):
    """Histogram equalisation of each channel on 256 levels (torchvision's ``equalize`` lookup table)."""
    n, c, h, w = x.shape
    values = (x * 255).round().long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, values, torch.ones_like(values))
    last = hist.gather(1, values.amax(1, keepdim=True))  # the count of the highest level present
    step = (h * w - last) // 255
    lut = (hist.cumsum(1) + step // 2) // step.clamp_min(1)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], 1).clamp_(0, 255)
    out = torch.where(step == 0, values, lut.gather(1, values))
    return (out.float() / 255).view(n, c, h, w)


def affine(x, matrix):
    """Resample each image at ``matrix`` (N×2×3, output pixel → source pixel, coordinates about the centre);
    nearest pixel, black outside."""
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device) - (h - 1) / 2,
                            torch.arange(w, dtype=x.dtype, device=x.device) - (w - 1) / 2, indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
    source = points @ matrix.transpose(1, 2)  # N × HW × 2, pixel offsets from the centre
    grid = torch.stack([source[..., 0] * 2 / w, source[..., 1] * 2 / h], -1).view(n, h, w, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _matrices(n, dtype, device):
    m = torch.zeros(n, 2, 3, dtype=dtype, device=device)
    m[:, 0, 0] = m[:, 1, 1] = 1
    return m


RANDAUGMENT_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                   "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")


def randaugment_op(name: str, x: torch.Tensor, magnitude: int, sign: torch.Tensor) -> torch.Tensor:
    """One RandAugment op on float images in [0, 1] with torchvision's magnitude (31 bins) and a per-sample sign."""
    n, _, h, w = x.shape
    level = magnitude / 30
    if name == "identity":
        return x
    if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        m = _matrices(n, x.dtype, x.device)
        if name == "shear_x":
            m[:, 0, 1] = -0.3 * level * sign  # source x = x - s·y
        elif name == "shear_y":
            m[:, 1, 0] = -0.3 * level * sign
        elif name == "translate_x":
            m[:, 0, 2] = -150 / 331 * w * level * sign
        elif name == "translate_y":
            m[:, 1, 2] = -150 / 331 * h * level * sign
        else:
            angle = torch.deg2rad(30.0 * level * sign)
            m[:, 0, 0], m[:, 0, 1] = torch.cos(angle), torch.sin(angle)
            m[:, 1, 0], m[:, 1, 1] = -torch.sin(angle), torch.cos(angle)
        return affine(x, m)
    factor = 1 + 0.9 * level * sign
    if name == "brightness":
        return adjust_brightness(x, factor)
    if name == "color":
        return adjust_saturation(x, factor)
    if name == "contrast":
        return adjust_contrast(x, factor)
    if name == "sharpness":
        return adjust_sharpness(x, factor)
    if name == "posterize":
        return posterize(x, 8 - round(magnitude / 7.5))
    if name == "solarize":
        return solarize(x, 1.0 - level)
    if name == "autocontrast":
        return autocontrast(x)
    return equalize(x)


@dataclasses.dataclass
class Mix:
    """CutMix's labels: the loop trains on ``lam·L(y) + (1 - lam)·L(labels)``."""
    labels: torch.Tensor
    lam: float


def beta_sample(alpha: float, generator: torch.Generator | None, device) -> float:
    """One draw of Beta(α, α) as ``X / (X + Y)`` of two Gamma(α) draws (Marsaglia & Tsang), from ``generator``."""
    def gamma(shape: float) -> float:
        boost = 1.0
        if shape < 1:  # Gamma(a) = Gamma(a + 1)·U^(1/a)
            boost = float(torch.rand((), generator=generator, device=device)) ** (1 / shape)
            shape += 1
        d = shape - 1 / 3
        c = 1 / math.sqrt(9 * d)
        while True:
            z = float(torch.randn((), generator=generator, device=device))
            v = (1 + c * z) ** 3
            u = float(torch.rand((), generator=generator, device=device))
            if v > 0 and math.log(max(u, 1e-300)) < 0.5 * z * z + d - d * v + d * math.log(v):
                return d * v * boost

    a, b = gamma(alpha), gamma(alpha)
    return a / (a + b)


class BatchAugment:
    """The training batches' augmentation steps and normalisation, applied to whole batches."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], crop_padding: int = 0, flip: bool = False,
                 channels_last: bool = False, steps: list[tuple[str, Any]] | None = None):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if steps is None:
            steps = ([("crop", CropOptions(crop_padding))] if crop_padding else []) + (
                [("flip", FlipOptions())] if flip else [])
        self.steps = [(name, o) for name, o in steps if name != "cutmix"]
        self.cutmix_options: CutMixOptions | None = next((o for name, o in steps if name == "cutmix"), None)
        self.crop_padding = next((o.padding for name, o in self.steps if name == "crop"), 0)
        self.flip = any(name == "flip" for name, _ in self.steps)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @classmethod
    def from_mode(cls, mode: str | list, mean, std, channels: int, channels_last: bool = False) -> "BatchAugment":
        """``mode``: one of :data:`MODES` or a list of steps (see the module)."""
        steps = mode_steps(mode, channels) if isinstance(mode, str) else parse_steps(mode)
        return cls(mean, std, channels_last=channels_last, steps=steps)

    @property
    def mixes(self) -> bool:
        """Whether the batches' labels are mixed (a cutmix step)."""
        return self.cutmix_options is not None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW (or float in [0, 1]) → normalised float32 (no randomness; used for evaluation)."""
        if self.mean.device != images.device:
            self.mean, self.inv_std = self.mean.to(images.device), self.inv_std.to(images.device)
        if images.dtype == torch.uint8:
            out = images.float().mul_(1.0 / 255).sub_(self.mean)
        else:
            out = images.sub(self.mean)
        out = out.mul_(self.inv_std)
        return out.contiguous(memory_format=self.memory_format)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a uint8 NCHW batch (every step but cutmix) and return normalised float32."""
        for name, o in self.steps:
            if name == "crop":
                images = crop(images, o.padding, generator) if o.padding else images
            elif name == "flip":
                images = flip(images, generator)
            else:  # colour and RandAugment steps work on float images in [0, 1]
                if images.dtype == torch.uint8:
                    images = images.float().mul_(1.0 / 255)
                images = self._float_step(name, o, images, generator)
        return self.normalize(images)

    def _float_step(self, name, o, x, generator):
        n, device = len(x), x.device
        if name == "color_jitter":
            for value, adjust in ((o.brightness, adjust_brightness), (o.contrast, adjust_contrast),
                                  (o.saturation, adjust_saturation)):
                if value:
                    low = max(0.0, 1 - value)
                    factor = low + (1 + value - low) * torch.rand(n, generator=generator, device=device)
                    x = adjust(x, factor)
            return x
        # randaugment: per sample and round, one op and a sign; the samples that drew an op get it
        for _ in range(o.num_ops):
            choice = torch.randint(0, len(RANDAUGMENT_OPS), (n,), generator=generator, device=device)
            sign = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)
            out = x.clone()
            for k, op in enumerate(RANDAUGMENT_OPS[1:], start=1):
                chosen = (choice == k).nonzero()[:, 0]
                if len(chosen):
                    out[chosen] = randaugment_op(op, x[chosen], o.magnitude, sign[chosen].to(x.dtype))
            x = out
        return x

    def cutmix(self, inputs: torch.Tensor, labels: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, Mix | None]:
        """CutMix of an augmented batch (GDumb's ``cutmix_data``): the mixed inputs and their :class:`Mix`, or
        the batch unchanged and None (no cutmix step, or not drawn for this batch)."""
        o = self.cutmix_options
        if o is None:
            return inputs, None
        device = inputs.device
        if float(torch.rand((), generator=generator, device=device)) >= o.p:
            return inputs, None
        lam = beta_sample(o.alpha, generator, device)
        n, _, h, w = inputs.shape
        perm = torch.randperm(n, generator=generator, device=device)
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy = int(torch.randint(0, h, (), generator=generator, device=device))
        cx = int(torch.randint(0, w, (), generator=generator, device=device))
        y1, y2 = min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h)
        x1, x2 = min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w)
        mixed = inputs.clone()
        mixed[:, :, y1:y2, x1:x2] = inputs[perm, :, y1:y2, x1:x2]
        return mixed, Mix(labels[perm], 1 - (y2 - y1) * (x2 - x1) / (h * w))
