"""The growing classifier head and the backbone + head network shared by every method."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .mlp import xavier_uniform_zero_bias


def he_normal_gain1_zero_bias(layer: nn.Module) -> None:
    """iCaRL's classifier initialisation (Theano code; Avalanche's ``initialize_icarl_net``): weights
    N(0, 1/fan_in) (He-normal, fan_in, gain 1: the sigmoid's gain), biases 0.  Row-wise, so a chunk of a
    larger layer gets the same distribution as the whole layer."""
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="sigmoid")
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


class IncrementalHead(nn.Module):
    """Classifier made of one Linear chunk per task, outputs concatenated; growing keeps old weights.

    Chunk ``t`` produces the logits of the classes introduced by task ``t``, so the same head serves
    class-incremental learning (argmax over all logits) and task-incremental learning (multi-head:
    argmax inside ``task_slices[t]``).  Growing never touches existing chunks, but it does add new
    parameters: optimizers built before :meth:`grow` do not know about them and must be rebuilt.

    ``bias=False`` gives chunks without a bias (logits = W·f).  Other heads (a cosine classifier, say)
    subclass this one and override :meth:`new_chunk`; a chunk only needs an ``out_features``.
    """

    def __init__(self, in_features: int, bias: bool = True) -> None:
        super().__init__()
        if in_features <= 0:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.in_features = in_features
        self.bias = bias
        self.chunks = nn.ModuleList()
        # Empty, non-persistent buffer that follows .to()/.cuda()/.half(): it tells grow() which
        # device/dtype to use even while the head has no parameters yet (zero chunks).
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def num_classes(self) -> int:
        return sum(chunk.out_features for chunk in self.chunks)

    @property
    def task_slices(self) -> list[slice]:
        slices, start = [], 0
        for chunk in self.chunks:
            slices.append(slice(start, start + chunk.out_features))
            start += chunk.out_features
        return slices

    def new_chunk(self, num_new_classes: int) -> nn.Module:
        """The module producing a new task's logits (default ``nn.Linear`` initialisation)."""
        return nn.Linear(self.in_features, num_new_classes, bias=self.bias)

    def grow(self, num_new_classes: int) -> None:
        """Append a chunk of ``num_new_classes`` outputs."""
        if isinstance(num_new_classes, bool) or not isinstance(num_new_classes, int) or num_new_classes <= 0:
            raise ValueError(f"num_new_classes must be a positive int, got {num_new_classes!r}")
        chunk = self.new_chunk(num_new_classes)
        self.chunks.append(chunk.to(device=self._anchor.device, dtype=self._anchor.dtype))

    def forward(self, features: Tensor) -> Tensor:
        if len(self.chunks) == 0:
            return features.new_zeros((features.shape[0], 0))
        return torch.cat([chunk(features) for chunk in self.chunks], dim=1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, tasks={len(self.chunks)}"


class IncrementalNet(nn.Module):
    """A feature extractor (``x -> (N, feature_dim)``) followed by an :class:`IncrementalHead`."""

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = IncrementalHead(feature_dim)

    def features(self, x: Tensor, return_stages: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """``x -> (N, feature_dim)``; with ``return_stages`` also the output of every stage of the backbone
        (ResNet stages: N×C×H×W maps; MLP hidden layers: N×C), for distillation on intermediate features
        (PODNet).  The default path is the backbone's plain forward."""
        if not return_stages:
            return self.backbone(x)
        if not hasattr(self.backbone, "forward_stages"):
            raise TypeError(f"{type(self.backbone).__name__} does not expose its stage outputs (forward_stages)")
        return self.backbone.forward_stages(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def add_classes(self, k: int, layer_outputs: int | None = None) -> None:
        """Add ``k`` outputs (a chunk).  ``layer_outputs``: the outputs of the whole layer the chunks form (a full
        head's every class), which the Xavier bound of an MLP initialised as Mammoth's counts."""
        self.head.grow(k)
        init = getattr(self.backbone, "init", "default")
        if init == "xavier_uniform":
            xavier_uniform_zero_bias(self.head.chunks[-1], layer_outputs)
        elif init == "icarl":
            he_normal_gain1_zero_bias(self.head.chunks[-1])

    @property
    def num_classes(self) -> int:
        return self.head.num_classes
