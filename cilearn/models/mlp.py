"""Fully connected feature extractor for small grey-scale images (MNIST, 8x8 digits)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Flatten, then ``Linear + ReLU`` per hidden layer; ``feature_dim = hidden[-1]``.

    ``batchnorm=True``: each hidden layer is ``Linear(bias=False) + BatchNorm1d(eps=1e-6) + ReLU``, the blocks of
    GDumb's MNIST MLP (drimpossible/GDumb, ``FCBlock``).  GDumb's last block (``Linear(bias=False) +
    BatchNorm1d`` over the classes) is not reproduced: the classifier is cilearn's linear head."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (400, 400), batchnorm: bool = False) -> None:
        super().__init__()
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
