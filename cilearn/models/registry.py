"""Model registry: ``build_model`` validates a name + options and returns an :class:`IncrementalNet`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from cilearn.errors import ConfigError, did_you_mean, unknown_choice
from cilearn.models.mlp import INITS, MLP
from cilearn.models.net import IncrementalNet
from cilearn.models.resnet import BLOCKS, SHORTCUTS, cifar_resnet, imagenet_resnet

_REQUIRED = object()  # default marking an option the user must give (cifar_resnet's depth)

# ResNets downsample 4x (CIFAR) or 8x (ImageNet family) with padded stride-2 convs; below 8 pixels
# the last stages would work on 1x1 (or smaller) maps, which is never what anyone wants.
_RESNET_MIN_IMAGE_SIZE = 8


@dataclass(frozen=True)
class _Spec:
    description: str
    make: Callable[[int, int, dict[str, Any]], nn.Module]  # (in_channels, image_size, options)
    defaults: dict[str, Any]  # every accepted option with its default
    min_image_size: int = 1
    accepts_any: bool = False  # a plugin's options are its own business


_REGISTRY: dict[str, _Spec] = {}


def _register(name: str, spec: _Spec) -> None:
    _REGISTRY[name] = spec


def list_models() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every model, in registration order (plugins last)."""
    return [(name, spec.description) for name, spec in {**_REGISTRY, **_plugin_specs()}.items()]


def _plugin_specs() -> dict[str, _Spec]:
    """Models of installed packages (``cilearn.models`` entry points): ``make(in_channels, image_size,
    **options)`` returns a backbone with a ``feature_dim``; its options are passed through unchecked."""
    from cilearn.plugins import first_line, plugins

    return {name: _Spec(first_line(make, f"model from a plugin ({name})"),
                        lambda c, s, opts, make=make: make(c, s, **opts), defaults={}, accepts_any=True)
            for name, make in plugins("cilearn.models").items() if name not in _REGISTRY}


def model_defaults(name: str) -> tuple[dict[str, Any], list[str]]:
    """A built-in model's options with their defaults, and the options without one (the user must give them);
    ``({}, [])`` for a plugin's model or an unknown name (``build_model`` reports that)."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        return {}, []
    return ({k: v for k, v in spec.defaults.items() if v is not _REQUIRED},
            [k for k, v in spec.defaults.items() if v is _REQUIRED])


def _is_int(value: Any) -> bool:
    # numbers.Integral also admits numpy ints; bool is an int subclass but never a valid size.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def build_model(name: str, in_channels: int, image_size: int, **options: Any) -> IncrementalNet:
    """Build the backbone ``name`` wrapped in an :class:`IncrementalNet` whose head has no classes yet.

    Raises :class:`ConfigError` for an unknown name, unknown or invalid options, ``in_channels`` not
    1 or 3, or an image too small for the model.
    """
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None and isinstance(name, str):
        spec = _plugin_specs().get(name)
    if spec is None:
        raise unknown_choice("model", name, {**_REGISTRY, **_plugin_specs()}, "model.name")
    if not _is_int(in_channels) or in_channels not in (1, 3):
        raise ConfigError(f"model {name!r}: in_channels must be 1 or 3, got {in_channels!r}")
    if not _is_int(image_size) or image_size < spec.min_image_size:
        raise ConfigError(
            f"model {name!r} needs image_size >= {spec.min_image_size} (an int), got {image_size!r}"
        )
    in_channels, image_size = int(in_channels), int(image_size)
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown and not spec.accepts_any:
        valid = ", ".join(sorted(spec.defaults)) or "none"
        raise ConfigError(f"model {name!r}: unknown option(s) {', '.join(repr(u) for u in unknown)}."
                          f"{did_you_mean(unknown[0], spec.defaults)} Valid options: {valid}.")
    merged = {**spec.defaults, **options}
    missing = sorted(k for k, v in merged.items() if v is _REQUIRED)
    if missing:
        raise ConfigError(f"model {name!r} needs option(s): {', '.join(missing)}")
    backbone = spec.make(in_channels, image_size, merged)
    return IncrementalNet(backbone, backbone.feature_dim)


# ----------------------------------------------------------------------------- option validation


def _check_width(name: str, width: Any) -> float:
    is_number = isinstance(width, (int, float)) and not isinstance(width, bool)
    if not is_number or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"model {name!r}: width must be a positive number, got {width!r}")
    return float(width)


def _check_block(name: str, block: Any) -> str:
    if block not in BLOCKS:
        raise unknown_choice("block", block, BLOCKS, f"model {name!r}")
    return block


def _check_depth(name: str, depth: Any, block: str) -> int:
    # A CIFAR ResNet has 3 stages of n blocks plus the stem conv and the classifier layer.
    layers = 2 if block == "basic" else 3
    step = 3 * layers
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < step + 2 or (depth - 2) % step:
        if isinstance(depth, int) and not isinstance(depth, bool) and depth > step + 2:
            lower = depth - (depth - 2) % step
            nearest = f"; nearest valid: {lower} or {lower + step}"
        else:
            nearest = ""
        examples = ", ".join(str(step * n + 2) for n in (1, 3, 5, 9, 18))
        raise ConfigError(
            f"model {name!r}: depth {depth!r} is invalid for block={block!r}: "
            f"need depth = {step}n+2 with n >= 1 (e.g. {examples}){nearest}"
        )
    return depth


def _check_shortcut(name: str, shortcut: Any) -> str:
    if shortcut not in SHORTCUTS:
        raise ConfigError(
            f"model {name!r}: shortcut must be 'A' (zero-padding identity, no parameters; iCaRL's ResNet) "
            f"or 'B' (1x1 conv + BN projection), got {shortcut!r}"
        )
    return shortcut


def _check_last_relu(name: str, last_relu: Any) -> bool:
    if not isinstance(last_relu, bool):
        raise ConfigError(
            f"model {name!r}: last_relu must be true (ReLU after the last block, features >= 0) or false "
            f"(no ReLU there, signed features, iCaRL's ResNet), got {last_relu!r}"
        )
    return last_relu


def _resnet_style(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The options every ResNet shares besides its size: width, shortcut kind, ReLU after the last block."""
    return {
        "width": _check_width(name, opts["width"]),
        "shortcut": _check_shortcut(name, opts["shortcut"]),
        "last_relu": _check_last_relu(name, opts["last_relu"]),
    }


# shortcut "B" and last_relu true were the only choices before they became options: defaults kept.
_RESNET_STYLE_DEFAULTS: dict[str, Any] = {"width": 1.0, "shortcut": "B", "last_relu": True}


def _check_hidden(name: str, hidden: Any) -> list[int]:
    ok = isinstance(hidden, (list, tuple)) and len(hidden) > 0 and all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
    )
    if not ok:
        raise ConfigError(f"model {name!r}: hidden must be a non-empty list of positive ints, got {hidden!r}")
    return list(hidden)


# ----------------------------------------------------------------------------- registrations


def _cifar_factory(
    name: str, depth: int | None, block: str | None = None
) -> Callable[[int, int, dict[str, Any]], nn.Module]:
    """Factory for a CIFAR ResNet; ``depth``/``block`` given here are fixed, ``None`` reads the option."""

    def make(in_channels: int, image_size: int, opts: dict[str, Any]) -> nn.Module:
        b = _check_block(name, opts["block"] if block is None else block)
        d = _check_depth(name, opts["depth"] if depth is None else depth, b)
        return cifar_resnet(d, b, in_channels, **_resnet_style(name, opts))

    return make


for _depth in (20, 32, 44, 56, 110):
    # block stays an option here: e.g. resnet56 with block="bottleneck" is a valid 9n+2 net.
    _register(
        f"resnet{_depth}",
        _Spec(
            f"CIFAR ResNet-{_depth} (He et al. 2016): 16/32/64 channels, basic blocks (option block), "
            "feature_dim 64 (iCaRL's variant: options shortcut A, last_relu false)",
            _cifar_factory(f"resnet{_depth}", _depth),
            {**_RESNET_STYLE_DEFAULTS, "block": "basic"},
            _RESNET_MIN_IMAGE_SIZE,
        ),
    )

for _depth in (47, 110, 164):
    # The bottleneck presets fix their block: block="basic" on "resnet110b" would only confuse.
    _register(
        f"resnet{_depth}b",
        _Spec(
            f"CIFAR ResNet-{_depth} with bottleneck blocks (expansion 4), 16/32/64 planes, feature_dim 256",
            _cifar_factory(f"resnet{_depth}b", _depth, "bottleneck"),
            dict(_RESNET_STYLE_DEFAULTS),
            _RESNET_MIN_IMAGE_SIZE,
        ),
    )

_register(
    "cifar_resnet",
    _Spec(
        "CIFAR ResNet of any depth: options depth=D, block='basic' (D=6n+2) or 'bottleneck' (D=9n+2)",
        _cifar_factory("cifar_resnet", None),
        {"depth": _REQUIRED, "block": "basic", **_RESNET_STYLE_DEFAULTS},
        _RESNET_MIN_IMAGE_SIZE,
    ),
)


def _imagenet_factory(
    name: str, block: str, blocks: list[int]
) -> Callable[[int, int, dict[str, Any]], nn.Module]:
    def make(in_channels: int, image_size: int, opts: dict[str, Any]) -> nn.Module:
        return imagenet_resnet(block, blocks, in_channels, **_resnet_style(name, opts))

    return make


for _name, _block, _blocks, _dim in (
    ("resnet18", "basic", [2, 2, 2, 2], 512),
    ("resnet34", "basic", [3, 4, 6, 3], 512),
    ("resnet50", "bottleneck", [3, 4, 6, 3], 2048),
):
    _register(
        _name,
        _Spec(
            f"ImageNet ResNet-{_name[6:]} adapted to 32x32 inputs (3x3 stride-1 stem, no max-pool), "
            f"feature_dim {_dim}",
            _imagenet_factory(_name, _block, _blocks),
            dict(_RESNET_STYLE_DEFAULTS),
            _RESNET_MIN_IMAGE_SIZE,
        ),
    )


def _make_mlp(in_channels: int, image_size: int, opts: dict[str, Any]) -> nn.Module:
    if not isinstance(opts["batchnorm"], bool):
        raise ConfigError(f"model 'mlp': batchnorm must be true or false, got {opts['batchnorm']!r}")
    if opts["init"] not in INITS:
        raise ConfigError(f"model 'mlp': init must be one of {', '.join(INITS)} (default: PyTorch's; "
                          f"xavier_uniform: Mammoth's, biases 0), got {opts['init']!r}")
    return MLP(in_channels * image_size * image_size, _check_hidden("mlp", opts["hidden"]), opts["batchnorm"],
               opts["init"])


_register(
    "mlp",
    _Spec(
        "MLP: flatten, hidden layers of 400 and 400 ReLU units (option hidden), for MNIST / 8x8 digits; "
        "batchnorm: true makes each layer Linear(bias=False) + BatchNorm1d + ReLU (GDumb's MLP); "
        "init: default or xavier_uniform (Mammoth's)",
        _make_mlp,
        {"hidden": [400, 400], "batchnorm": False, "init": "default"},
    ),
)
