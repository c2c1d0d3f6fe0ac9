"""ResNet feature extractors (He et al. 2016) for small images.

One generic :class:`ResNet` covers both families:

* the CIFAR ResNets (3 stages of 16/32/64 channels, 3x3 stem conv of 16 channels), built by
  :func:`cifar_resnet` with ``block="basic"`` (depth 6n+2) or ``block="bottleneck"`` (depth 9n+2);
* the ImageNet ResNets adapted to 32x32 inputs (4 stages of 64/128/256/512 channels, 3x3 stride-1
  stem conv and no max-pool), built by :func:`imagenet_resnet`.

Blocks are post-activation (original paper).  Shortcuts are identity when the shape is unchanged and
otherwise a 1x1 conv + BN projection ("option B"), unlike the zero-padding "option A" that the CIFAR
experiments of the paper used; this adds ~3k parameters to resnet20..110.  Bottleneck blocks put the
stride on the 3x3 conv (the torchvision "v1.5" variant).  Convs use Kaiming-normal init (fan_out,
ReLU gain, as torchvision does); BatchNorm weight 1, bias 0.  All spatial reductions use padded
stride-2 convs and the features come from global average pooling, so any image size works as long
as the registry's minimum is met; nothing calls ``.view``, so ``channels_last`` inputs are fine.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(_conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs; output channels = ``planes``."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand; output channels = ``4 * planes``."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem conv + BN + ReLU, residual stages, global average pool: ``x -> (N, feature_dim)``.

    The first stage keeps the resolution; every later stage halves it.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: Sequence[int],
        stage_planes: Sequence[int],
        stem_channels: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(blocks_per_stage) != len(stage_planes):
            raise ValueError("blocks_per_stage and stage_planes must have the same length")
        self.stem = nn.Sequential(
            _conv3x3(in_channels, stem_channels), nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        in_ch = stem_channels
        for index, (num_blocks, planes) in enumerate(zip(blocks_per_stage, stage_planes)):
            stride = 1 if index == 0 else 2
            layers: list[nn.Module] = []
            for b in range(num_blocks):
                layers.append(block(in_ch, planes, stride if b == 0 else 1))
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
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        # flatten (not view): the pooled tensor may be channels_last, i.e. non-contiguous as NCHW.
        return self.pool(x).flatten(1)


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def cifar_resnet(depth: int, block: str = "basic", in_channels: int = 3, width: float = 1.0) -> ResNet:
    """CIFAR ResNet; ``depth`` must already be valid for ``block`` (the registry checks it)."""
    block_cls = BLOCKS[block]
    layers_per_block = 2 if block_cls is BasicBlock else 3
    n = (depth - 2) // (3 * layers_per_block)
    planes = [_scaled(c, width) for c in (16, 32, 64)]
    return ResNet(block_cls, [n, n, n], planes, stem_channels=planes[0], in_channels=in_channels)


def imagenet_resnet(
    block: str, blocks_per_stage: Sequence[int], in_channels: int = 3, width: float = 1.0
) -> ResNet:
    """ImageNet ResNet for 32x32 inputs: 3x3 stride-1 stem, no max-pool."""
    planes = [_scaled(c, width) for c in (64, 128, 256, 512)]
    return ResNet(BLOCKS[block], blocks_per_stage, planes, stem_channels=planes[0], in_channels=in_channels)
