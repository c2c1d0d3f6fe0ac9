"""A fully connected variational auto-encoder: the generator of generative replay (``dgr``).

The architecture of van de Ven & Tolias's generator (their code, branch ``preprints``, ``vae_models.py``
``AutoEncoder`` with its defaults: no batch norm, ReLU): encoder ``in → hidden[0] → … → hidden[-1]`` with ReLUs,
then one Linear to the latent mean and one, without bias, to the latent log-variance; decoder ``z → hidden[-1]
→ … → hidden[0] → in``, ReLUs between and a sigmoid at the end (pixels in [0, 1]).  Their loss, averaged over the
batch: the binary cross-entropy of the reconstruction **averaged over the pixels**, plus the KL divergence to
N(0, I) summed over the latent units and **divided by the number of pixels** (their ``average = True``).  The
cross-entropy is computed from the decoder's logits (the same value as theirs on the sigmoid, without its
clamp of log 0 at −100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _stack(sizes: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for previous, size in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(previous, size), nn.ReLU()]
    return layers


class VAE(nn.Module):
    """``VAE(shape=(C, H, W), hidden=(400, 400), z_dim=100)``; images as floats in [0, 1], NCHW."""

    def __init__(self, shape: Sequence[int], hidden: Sequence[int] = (400, 400), z_dim: int = 100) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("the VAE needs at least one hidden layer")
        self.shape = tuple(int(s) for s in shape)
        self.z_dim = z_dim
        self.pixels = pixels = math.prod(self.shape)
        self.encoder = nn.Sequential(nn.Flatten(), *_stack([pixels, *hidden]))
        self.to_mean = nn.Linear(hidden[-1], z_dim)
        self.to_logvar = nn.Linear(hidden[-1], z_dim, bias=False)
        reverse = list(hidden)[::-1]
        self.decoder = nn.Sequential(*_stack([z_dim, *reverse]), nn.Linear(reverse[-1], pixels))

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(images)
        return self.to_mean(hidden), self.to_logvar(hidden)

    def decode_logits(self, z: Tensor) -> Tensor:
        """The decoder's pre-sigmoid outputs, (N, pixels)."""
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """Images in [0, 1], (N, C, H, W)."""
        return torch.sigmoid(self.decode_logits(z)).view(len(z), *self.shape)

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """``count`` images decoded from z ~ N(0, I) (drawn with ``generator``, on the CPU, then moved)."""
        device = self.to_mean.weight.device
        z = torch.randn(count, self.z_dim, generator=generator).to(device)
        return self.decode(z)

    def loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Reconstruction (BCE averaged over pixels) + KL / pixels, each averaged over the batch; ``images`` in
        [0, 1]; the reparameterisation noise is drawn with ``generator``."""
        mean, logvar = self.encode(images)
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        z = mean + noise * torch.exp(0.5 * logvar)
        target = images.reshape(len(images), -1)
        reconstruction = F.binary_cross_entropy_with_logits(self.decode_logits(z), target, reduction="none")
        kl = -0.5 * (1 + logvar - mean.square() - logvar.exp()).sum(1)
        return reconstruction.mean(1).mean() + kl.mean() / self.pixels
