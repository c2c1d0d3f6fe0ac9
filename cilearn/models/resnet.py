"""ResNet feature extractors (He et al. 2016) for small images.

One generic :class:`ResNet` covers both families:

* the CIFAR ResNets (3 stages of 16/32/64 channels, 3x3 stem conv of 16 channels), built by
  :func:`cifar_resnet` with ``block="basic"`` (depth 6n+2) or ``block="bottleneck"`` (depth 9n+2);
* the ImageNet ResNets adapted to 32x32 inputs (4 stages of 64/128/256/512 channels, 3x3 stride-1
  stem conv and no max-pool), built by :func:`imagenet_resnet`.

Blocks are post-activation (original paper).  Where a block changes the shape, the shortcut is

* ``"B"`` (default): a 1x1 conv + BN projection, as torchvision does (~3k parameters more for
  resnet20..110);
* ``"A"``: no parameters: the input subsampled by the stride (``x[:, :, ::2, ::2]``) and padded with
  zero channels, half before and half after (He et al.'s option A, used by their CIFAR experiments).

``last_relu=False`` drops the ReLU after the sum of the network's very last block, so the pooled
features are signed.

**iCaRL's network** is ``shortcut="A", last_relu=False`` with the basic block: Rebuffi et al.'s Theano
code (github.com/srebuffi/iCaRL, ``iCaRL-TheanoLasagne/utils_cifar100.py``, ``build_cnn``) builds
ResNet-32 (n=5) with option-A shortcuts (``ExpressionLayer`` ``X[:, :, ::2, ::2]`` then ``PadLayer``
of ``out//4`` zero channels on each side) and calls its final block with ``last=True``, which returns
the sum without the ReLU; the global average pool of that sum is the 64-d feature that herding and the
nearest-mean classifier use.  Known remaining differences from that code: its convs are initialised
He-normal with fan_in (here fan_out, as torchvision), its BatchNorm uses eps 1e-4 (here 1e-5), and its
100-output sigmoid layer is He-normal initialised (here the head is cilearn's default ``nn.Linear``).
``init="icarl"`` removes the two initialisation differences: convs He-normal with fan_in (ReLU gain) and the
classifier He-normal with gain 1 and zero biases (what Avalanche's ``initialize_icarl_net`` does too).

``init="pytorch"`` leaves every layer as PyTorch creates it: convs ``kaiming_uniform_(a=sqrt(5))``, i.e.
U(±1/sqrt(fan_in)) (variance 1/(3·fan_in), a sixth of He-normal's 2/fan for a 3x3 conv with as many inputs as
outputs), BatchNorm weight 1 and bias 0, the head ``nn.Linear``'s default.  This is the ER-ACE authors' reduced
ResNet-18 (github.com/pclucas14/AML ``model.py``: ``ResNet18(nclasses, nf=20)`` never re-initialises a layer);
``resnet18`` with ``width: 0.3125`` has its shape (stages of 20/40/80/160 channels, 1,093,140 parameters before the
head).  Behind BatchNorm a conv's scale does not change the function, but with plain SGD and no weight decay it
sets the effective step size (the gradient scales as 1/‖w‖, the relative update as 1/‖w‖²).

Bottleneck blocks put the stride on the 3x3 conv (the torchvision "v1.5" variant).  Convs use
Kaiming-normal init (fan_out, ReLU gain, as torchvision does; fan_in with ``init="icarl"``); BatchNorm weight 1,
bias 0.  All spatial
reductions use padded stride-2 convs and the features come from global average pooling, so any image
size works as long as the registry's minimum is met; nothing calls ``.view``, so ``channels_last``
inputs are fine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

SHORTCUTS = ("A", "B")
INITS = ("torchvision", "icarl", "pytorch")


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and add ``out_ch - in_ch`` zero channels, half of them before
    the input's channels and the rest after; no parameters."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"option A shortcut cannot reduce channels ({in_ch} -> {out_ch})")
        self.stride = stride
        self.before = (out_ch - in_ch) // 2
        self.after = out_ch - in_ch - self.before

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad's last pair pads dim 1 (channels) of an NCHW tensor: (W left, W right, H top, H bottom, C before, C after)
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_channels=({self.before}, {self.after})"


def _shortcut(in_ch: int, out_ch: int, stride: int, kind: str = "B") -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    if kind == "A":
        return ZeroPadShortcut(in_ch, out_ch, stride)
    return nn.Sequential(_conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs; output channels = ``planes``; ``final_relu=False`` returns the sum as it is."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, shortcut: str = "B",
                 final_relu: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, planes, stride, shortcut)
        self.final_relu = final_relu

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)  # in place: BatchNorm's backward does not need its output (~70 MB less at batch 128)
        return self.relu(out) if self.final_relu else out


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand; output channels = ``4 * planes``."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, shortcut: str = "B",
                 final_relu: bool = True) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out_ch, stride, shortcut)
        self.final_relu = final_relu

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)  # in place, as in BasicBlock
        return self.relu(out) if self.final_relu else out


class ResNet(nn.Module):
    """3x3 stem conv + BN + ReLU, residual stages, global average pool: ``x -> (N, feature_dim)``.

    The first stage keeps the resolution; every later stage halves it.  ``shortcut`` ("A" or "B") and
    ``last_relu`` are described in the module docstring.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: Sequence[int],
        stage_planes: Sequence[int],
        stem_channels: int,
        in_channels: int = 3,
        shortcut: str = "B",
        last_relu: bool = True,
        init: str = "torchvision",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.init = init  # IncrementalNet reads it to initialise the classifier chunks it adds
        if len(blocks_per_stage) != len(stage_planes):
            raise ValueError("blocks_per_stage and stage_planes must have the same length")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        self.stem = nn.Sequential(
            _conv3x3(in_channels, stem_channels), nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        in_ch = stem_channels
        for index, (num_blocks, planes) in enumerate(zip(blocks_per_stage, stage_planes)):
            stride = 1 if index == 0 else 2
            layers: list[nn.Module] = []
            for b in range(num_blocks):
                very_last = index == len(stage_planes) - 1 and b == num_blocks - 1
                layers.append(block(in_ch, planes, stride if b == 0 else 1, shortcut,
                                    final_relu=last_relu or not very_last))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_ch
        self.downsampling = 2 ** (len(stage_planes) - 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if self.init == "pytorch":  # nn.Conv2d's own reset_parameters, already applied
                    continue
                mode = "fan_in" if self.init == "icarl" else "fan_out"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        # flatten (not view): the pooled tensor may be channels_last, i.e. non-contiguous as NCHW.
        return self.pool(x).flatten(1)

    def forward_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The pooled features and the output map of every residual stage (the same computation as
        :meth:`forward`, keeping the intermediate maps)."""
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return self.pool(x).flatten(1), maps


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def cifar_resnet(depth: int, block: str = "basic", in_channels: int = 3, width: float = 1.0,
                 shortcut: str = "B", last_relu: bool = True, init: str = "torchvision") -> ResNet:
    """CIFAR ResNet; ``depth`` must already be valid for ``block`` (the registry checks it).
    ``cifar_resnet(32, shortcut="A", last_relu=False)`` is iCaRL's ResNet-32."""
    block_cls = BLOCKS[block]
    layers_per_block = 2 if block_cls is BasicBlock else 3
    n = (depth - 2) // (3 * layers_per_block)
    planes = [_scaled(c, width) for c in (16, 32, 64)]
    return ResNet(block_cls, [n, n, n], planes, stem_channels=planes[0], in_channels=in_channels,
                  shortcut=shortcut, last_relu=last_relu, init=init)


def imagenet_resnet(
    block: str, blocks_per_stage: Sequence[int], in_channels: int = 3, width: float = 1.0,
    shortcut: str = "B", last_relu: bool = True, init: str = "torchvision",
) -> ResNet:
    """ImageNet ResNet for 32x32 inputs: 3x3 stride-1 stem, no max-pool."""
    planes = [_scaled(c, width) for c in (64, 128, 256, 512)]
    return ResNet(BLOCKS[block], blocks_per_stage, planes, stem_channels=planes[0], in_channels=in_channels,
                  shortcut=shortcut, last_relu=last_relu, init=init)
