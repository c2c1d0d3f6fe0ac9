"""The model registry (:data:`MODELS`): each model a factory and an options dataclass; ``build_model`` builds
the backbone ``name`` wrapped in an :class:`IncrementalNet` whose head has no classes yet."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Literal

from torch import nn

from cilearn.errors import ConfigError
from cilearn.models.mlp import MLP
from cilearn.models.net import IncrementalNet
from cilearn.models.resnet import cifar_resnet, imagenet_resnet
from cilearn.plugins import first_line
from cilearn.registry import Component, Registry
from cilearn.schema import option

# ResNets downsample 4x (CIFAR) or 8x (ImageNet family) with padded stride-2 convs; below 8 pixels
# the last stages would work on 1x1 (or smaller) maps, which is never what anyone wants.
_RESNET_MIN_IMAGE_SIZE = 8


# --- options (shortcut "B" and last_relu true were the only choices before they became options: defaults kept)

@dataclasses.dataclass
class ResNetOptions:
    """The options every ResNet shares besides its size."""

    width: float = option(1.0, help="channel multiplier (> 0): 0.5 halves every layer's channels")
    shortcut: Literal["A", "B"] = option(
        "B", help="A: zero-padding identity, no parameters (iCaRL's ResNet); B: 1x1 conv + BN projection")
    last_relu: bool = option(True, help="true: ReLU after the last block (features >= 0); false: none there, "
                                        "signed features (iCaRL's ResNet)")
    init: Literal["torchvision", "icarl", "pytorch"] = option(
        "torchvision", help="torchvision: convs He-normal fan_out, the head PyTorch's Linear default; icarl: convs "
                            "He-normal fan_in and the head He-normal (gain 1) with zero biases, as iCaRL's Theano "
                            "code and Avalanche's initialize_icarl_net; pytorch: every layer PyTorch's own default "
                            "(convs U(±1/sqrt(fan_in)), never re-initialised), as the ER-ACE authors' reduced "
                            "ResNet-18 (pclucas14/AML model.py)")

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ConfigError(f"model.options.width: must be a positive number, got {self.width!r}.")


@dataclasses.dataclass
class CifarResNetOptions(ResNetOptions):
    block: Literal["basic", "bottleneck"] = option(
        "basic", help="basic (depth 6n+2) or bottleneck (expansion 4, depth 9n+2)")


@dataclasses.dataclass
class AnyDepthOptions:
    depth: int = option(help="6n+2 with basic blocks, 9n+2 with bottleneck blocks")
    block: Literal["basic", "bottleneck"] = option("basic", help="basic (depth 6n+2) or bottleneck (depth 9n+2)")
    width: float = option(1.0, help="channel multiplier (> 0)")
    shortcut: Literal["A", "B"] = option("B", help="A: zero-padding identity; B: 1x1 conv + BN projection")
    last_relu: bool = option(True, help="ReLU after the last block")
    init: Literal["torchvision", "icarl", "pytorch"] = option(
        "torchvision", help="torchvision: convs He-normal fan_out; icarl: He-normal fan_in, head He-normal, "
                            "zero biases; pytorch: PyTorch's own defaults (convs U(±1/sqrt(fan_in)))")

    def __post_init__(self) -> None:
        ResNetOptions.__post_init__(self)  # type: ignore[arg-type]  (the same width rule)
        check_depth(self.depth, self.block)


@dataclasses.dataclass
class MLPOptions:
    hidden: list[int] = option(default_factory=lambda: [400, 400], min=1, help="hidden layer widths")
    batchnorm: bool = option(False, help="each layer Linear(bias=False) + BatchNorm1d + ReLU (GDumb's MLP)")
    init: Literal["default", "xavier_uniform"] = option(
        "default", help="default: PyTorch's; xavier_uniform: Mammoth's, biases 0")

    def __post_init__(self) -> None:
        if not self.hidden:
            raise ConfigError("model.options.hidden: must be a non-empty list of positive ints, got [].")


def check_depth(depth: int, block: str) -> None:
    """A CIFAR ResNet has 3 stages of n blocks plus the stem conv and the classifier layer."""
    step = 3 * (2 if block == "basic" else 3)
    if depth < step + 2 or (depth - 2) % step:
        lower = depth - (depth - 2) % step
        nearest = f"; nearest valid: {lower} or {lower + step}" if depth > step + 2 else ""
        examples = ", ".join(str(step * n + 2) for n in (1, 3, 5, 9, 18))
        raise ConfigError(f"model.options.depth: {depth} is invalid for block={block!r}: need depth = {step}n+2 with "
                          f"n >= 1 (e.g. {examples}){nearest}.")


# --- factories: (in_channels, image_size, options) -> backbone with feature_dim

def _cifar(depth: int | None, block: str | None = None):
    """A CIFAR ResNet factory; ``depth``/``block`` given here are fixed, ``None`` reads the option."""

    def make(in_channels: int, image_size: int, opts) -> nn.Module:
        chosen_block = block or opts.block
        chosen_depth = depth or opts.depth
        check_depth(chosen_depth, chosen_block)
        return cifar_resnet(chosen_depth, chosen_block, in_channels, width=opts.width, shortcut=opts.shortcut,
                            last_relu=opts.last_relu, init=opts.init)

    return make


def _imagenet(block: str, blocks: list[int]):
    def make(in_channels: int, image_size: int, opts: ResNetOptions) -> nn.Module:
        return imagenet_resnet(block, blocks, in_channels, width=opts.width, shortcut=opts.shortcut,
                               last_relu=opts.last_relu, init=opts.init)

    return make


def _mlp(in_channels: int, image_size: int, opts: MLPOptions) -> nn.Module:
    return MLP(in_channels * image_size * image_size, list(opts.hidden), opts.batchnorm, opts.init)


def _plugin(name: str, make: Any) -> Component:
    """A model of an installed package (``cilearn.models`` entry point): ``make(in_channels, image_size,
    **options)`` returns a backbone with a ``feature_dim``.  With an ``Options`` dataclass attribute its options
    are checked and given as keywords; without one they pass through as written."""
    declared = getattr(make, "Options", None)

    def factory(in_channels: int, image_size: int, opts: Any) -> nn.Module:
        values = dataclasses.asdict(opts) if dataclasses.is_dataclass(opts) else dict(opts)
        return make(in_channels, image_size, **values)

    return Component(name, factory, declared, first_line(make, f"model from a plugin ({name})"))


MODELS = Registry("model", "model.name", "cilearn.models", adapt=_plugin)
MIN_IMAGE_SIZE: dict[str, int] = {}


def _add(name: str, factory, options: type, description: str, min_image_size: int = 1) -> None:
    MODELS.add(name, factory, options, description)
    MIN_IMAGE_SIZE[name] = min_image_size


for _depth in (20, 32, 44, 56, 110):  # block stays an option: e.g. resnet56 with block="bottleneck" is 9n+2
    _add(f"resnet{_depth}", _cifar(_depth), CifarResNetOptions,
         f"CIFAR ResNet-{_depth} (He et al. 2016): 16/32/64 channels, basic blocks (option block), feature_dim 64 "
         f"(iCaRL's variant: options shortcut A, last_relu false)", _RESNET_MIN_IMAGE_SIZE)
for _depth in (47, 110, 164):  # the bottleneck presets fix their block
    _add(f"resnet{_depth}b", _cifar(_depth, "bottleneck"), ResNetOptions,
         f"CIFAR ResNet-{_depth} with bottleneck blocks (expansion 4), 16/32/64 planes, feature_dim 256",
         _RESNET_MIN_IMAGE_SIZE)
_add("cifar_resnet", _cifar(None), AnyDepthOptions,
     "CIFAR ResNet of any depth: options depth=D, block='basic' (D=6n+2) or 'bottleneck' (D=9n+2)",
     _RESNET_MIN_IMAGE_SIZE)
for _name, _block, _blocks, _dim in (("resnet18", "basic", [2, 2, 2, 2], 512),
                                     ("resnet34", "basic", [3, 4, 6, 3], 512),
                                     ("resnet50", "bottleneck", [3, 4, 6, 3], 2048)):
    _add(_name, _imagenet(_block, _blocks), ResNetOptions,
         f"ImageNet ResNet-{_name[6:]} adapted to 32x32 inputs (3x3 stride-1 stem, no max-pool), feature_dim {_dim}",
         _RESNET_MIN_IMAGE_SIZE)
_add("mlp", _mlp, MLPOptions,
     "MLP: flatten, hidden layers of 400 and 400 ReLU units (option hidden), for MNIST / 8x8 digits; batchnorm: "
     "true makes each layer Linear(bias=False) + BatchNorm1d + ReLU (GDumb's MLP); init: default or "
     "xavier_uniform (Mammoth's)")


def list_models() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every model, in registration order (plugins last)."""
    return [(name, component.description) for name, component in MODELS.components().items()]


def model_options(name: str, values: dict | None = None, path: str = "model.options") -> Any:
    """The options of model ``name`` parsed from ``values`` (defaults filled in)."""
    return MODELS.parse_options(name, values or {}, path)


def _is_int(value: Any) -> bool:
    # numbers.Integral also admits numpy ints; bool is an int subclass but never a valid size.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def build_model(name: str, in_channels: int, image_size: int, options: Any = None, **keywords: Any
                ) -> IncrementalNet:
    """Build the backbone ``name`` wrapped in an :class:`IncrementalNet` whose head has no classes yet.

    ``options``: the model's parsed options (``cfg.model.options``); or give them as keywords
    (``build_model("resnet20", 3, 32, width=0.5)``), checked the same way.  Raises :class:`ConfigError` for an
    unknown name, unknown or invalid options, ``in_channels`` not 1 or 3, or an image too small for the model.
    """
    component = MODELS.get(name)
    if options is None or isinstance(options, dict):
        options = model_options(name, {**(options or {}), **keywords})
    elif keywords:
        raise TypeError("build_model: give the options either parsed (options=...) or as keywords, not both")
    if not _is_int(in_channels) or in_channels not in (1, 3):
        raise ConfigError(f"model {name!r}: in_channels must be 1 or 3, got {in_channels!r}")
    least = MIN_IMAGE_SIZE.get(name, 1)
    if not _is_int(image_size) or image_size < least:
        raise ConfigError(f"model {name!r} needs image_size >= {least} (an int), got {image_size!r}")
    backbone = component.factory(int(in_channels), int(image_size), options)
    return IncrementalNet(backbone, backbone.feature_dim)


__all__ = ["MODELS", "AnyDepthOptions", "CifarResNetOptions", "MLPOptions", "ResNetOptions", "build_model",
           "list_models", "model_options"]
