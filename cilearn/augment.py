"""Batched image augmentation on the training device.

Images stay uint8 NCHW on the device; a batch is cropped and flipped with a few tensor operations and
normalised once, so no per-sample Python or PIL work happens inside the training loop.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_tensor_images(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC numpy → uint8 NCHW tensor on ``device`` (4× smaller than float32)."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()


def nchw_view(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC numpy → a uint8 NCHW tensor on ``device`` with channels_last strides: on the CPU the
    same memory as ``images`` (no copy of a task's data or of a test set); batches drawn from it are
    augmented or normalised into whatever layout the network runs in."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)


class BatchAugment:
    """Random crop with zero padding, horizontal flip and normalisation, applied to whole batches."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], crop_padding: int = 0, flip: bool = False,
                 channels_last: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.crop_padding = crop_padding
        self.flip = flip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @classmethod
    def from_mode(cls, mode: str, mean, std, channels: int, channels_last: bool = False) -> "BatchAugment":
        """``auto`` means crop+flip for colour images and nothing for grey ones (flipping digits changes
        their meaning)."""
        if mode == "auto":
            mode = "crop_flip" if channels == 3 else "none"
        return cls(mean, std, crop_padding=4 if "crop" in mode else 0, flip="flip" in mode,
                   channels_last=channels_last)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW → normalised float32 (no randomness; used for evaluation)."""
        if self.mean.device != images.device:
            self.mean, self.inv_std = self.mean.to(images.device), self.inv_std.to(images.device)
        out = (images.float().mul_(1.0 / 255).sub_(self.mean)).mul_(self.inv_std)
        return out.contiguous(memory_format=self.memory_format)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a uint8 NCHW batch and return normalised float32."""
        n, _, h, w = images.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(images, (p, p, p, p))
            # Per-sample offsets gathered with one advanced-indexing call instead of a Python loop.
            dy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=images.device)
            dx = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=images.device)
            rows = (dy + torch.arange(h, device=images.device))[:, None, :, None]
            cols = (dx + torch.arange(w, device=images.device))[:, None, None, :]
            batch = torch.arange(n, device=images.device)[:, None, None, None]
            chan = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
            images = padded[batch, chan, rows, cols]
        if self.flip:
            flip = torch.rand(n, generator=generator, device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return self.normalize(images)
