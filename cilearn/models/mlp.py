"""Fully connected feature extractor for small grey-scale images (MNIST, 8x8 digits)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

INITS = ("default", "xavier_uniform")


def xavier_uniform_zero_bias(module: nn.Module, fan_out: int | None = None) -> None:
    """Mammoth's ``xavier`` (backbone/__init__.py) on a Linear: weights ~ U(-a, a) with
    ``a = sqrt(3) * sqrt(2 / (fan_in + fan_out))`` (Glorot uniform, gain 1), biases 0; other modules untouched.
    ``fan_out`` (default: the Linear's outputs) lets one chunk of a larger layer take that layer's bound."""
    if isinstance(module, nn.Linear):
        fan_out = module.out_features if fan_out is None else fan_out
        bound = math.sqrt(3.0) * math.sqrt(2.0 / (module.in_features + fan_out))
        with torch.no_grad():
            module.weight.uniform_(-bound, bound)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MLP(nn.Module):
    """Flatten, then ``Linear + ReLU`` per hidden layer; ``feature_dim = hidden[-1]``.

    ``batchnorm=True``: each hidden layer is ``Linear(bias=False) + BatchNorm1d(eps=1e-6) + ReLU``, the blocks of
    GDumb's MNIST MLP (drimpossible/GDumb, ``FCBlock``).  GDumb's last block (``Linear(bias=False) +
    BatchNorm1d`` over the classes) is not reproduced: the classifier is cilearn's linear head.

    ``init``: ``default`` keeps PyTorch's Linear initialisation; ``xavier_uniform`` initialises every Linear as
    Mammoth's MNIST MLP (:func:`xavier_uniform_zero_bias`), and the classifier outputs added to a network with
    this backbone get the same (:meth:`~cilearn.models.net.IncrementalNet.add_classes`)."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (400, 400), batchnorm: bool = False,
                 init: str = "default") -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.init = init
        layers: list[nn.Module] = [nn.Flatten()]  # flatten copies channels_last input in NCHW order
        previous = in_features
        for size in hidden:
            if batchnorm:
                layers += [nn.Linear(previous, size, bias=False), nn.BatchNorm1d(size, eps=1e-6)]
            else:
                layers += [nn.Linear(previous, size)]
            layers += [nn.ReLU(inplace=True)]
            previous = size
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.feature_dim = previous
        if init == "xavier_uniform":
            self.layers.apply(xavier_uniform_zero_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    def forward_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The features and the output of every hidden layer (after its ReLU), N×C each."""
        outputs = []
        for layer in self.layers:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                outputs.append(x)
        return x, outputs
