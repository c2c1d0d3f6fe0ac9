"""Method registry.  A new method is a :class:`Method` subclass in its own module, listed here — or in
another package, registered through the ``cilearn.methods`` entry point (:mod:`cilearn.plugins`)."""

from __future__ import annotations

from ..errors import ConfigError
from ..schema import build_section, unknown_choice
from .base import (Batch, Classifier, Method, MethodContext, MethodOptions, Output, Stage, head_classifier,
                   task_mask)
from .finetune import FineTune
from .icarl import ICaRL
from .joint import Joint
from .lwf import LwF
from .ewc import EWC
from .replay import IIDStream, Replay
from .bic import BiC
from .wa import WA
from .lucir import LUCIR
from .podnet import PODNet
from .er import ER
from .der import DER, DERpp
from .er_ace import ERACE
from .agem import AGEM
from .gdumb import GDumb
from .si import SI
from .mas import MAS

BUILTIN: tuple[type[Method], ...] = (FineTune, Joint, LwF, ICaRL, Replay, IIDStream, EWC, BiC, WA, LUCIR, PODNet,
                                     ER, DER, DERpp, ERACE, AGEM, GDumb, SI, MAS)
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in BUILTIN}


def register(cls: type[Method]) -> type[Method]:
    """Add a method class to the registry (usable as a decorator by plugins)."""
    METHODS[cls.name] = cls
    return cls


def all_methods() -> dict[str, type[Method]]:
    """Built-in methods and those installed packages register under the ``cilearn.methods`` entry point."""
    from ..plugins import plugins

    for name, cls in plugins("cilearn.methods").items():
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise ConfigError(f"the cilearn.methods plugin '{name}' is {cls!r}, not a cilearn Method subclass.")
        METHODS.setdefault(name, cls)
    return METHODS


def method_class(name: str) -> type[Method]:
    methods = all_methods()
    if name not in methods:
        raise unknown_choice("method", name, methods, "method.name")
    return methods[name]


def method_options(section: dict) -> MethodOptions:
    """Validate a ``method:`` config section against the method's own options."""
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError("method: expected a mapping with a 'name', e.g. method: {name: finetune}.")
    cls = method_class(str(section["name"]))
    return build_section(cls.Options, section, "method")


def install_head(model, options: MethodOptions) -> None:
    """Give ``model`` (an IncrementalNet with no classes yet) the head the method asks for, if any."""
    head = method_class(options.name).make_head(options, model.feature_dim)
    if head is not None:
        if model.num_classes:
            raise ValueError("install_head: the model's head already has classes")
        anchor = next(model.parameters())
        model.head = head.to(device=anchor.device, dtype=anchor.dtype)


def list_methods() -> list[tuple[str, str]]:
    return [(name, cls.description) for name, cls in sorted(all_methods().items())]


__all__ = ["METHODS", "Batch", "Classifier", "Method", "MethodContext", "MethodOptions", "Output", "Stage",
           "all_methods", "head_classifier", "install_head", "list_methods", "method_class", "method_options",
           "register", "task_mask"]
