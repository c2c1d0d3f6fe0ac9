"""Method registry.  A new method is a :class:`Method` subclass in its own module, listed here — or in
another package, registered through the ``cilearn.methods`` entry point (:mod:`cilearn.plugins`)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
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
from .gem import GEM
from .dgr import DGR
from .gdumb import GDumb
from .si import SI
from .mas import MAS
from .l2 import L2
from .xdg import XdG

from ..registry import Component, Registry

BUILTIN: tuple[type[Method], ...] = (FineTune, Joint, LwF, ICaRL, Replay, IIDStream, EWC, BiC, WA, LUCIR, PODNet,
                                     ER, DER, DERpp, ERACE, AGEM, GEM, DGR, GDumb, SI, MAS, L2, XdG)


def _component(name: str, cls: Any) -> Component:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"the cilearn.methods plugin '{name}' is {cls!r}, not a cilearn Method subclass.")
    return Component(name, cls, cls.Options, cls.description, getattr(cls, "paper", ""))


METHODS = Registry("method", "method.name", "cilearn.methods", adapt=_component)


def register(cls: type[Method]) -> type[Method]:
    """Add a method class to the registry (usable as a decorator by plugins)."""
    METHODS.add(cls.name, cls, cls.Options, cls.description, getattr(cls, "paper", ""))
    return cls


for _cls in BUILTIN:
    register(_cls)


def all_methods() -> dict[str, type[Method]]:
    """Built-in methods and those installed packages register under the ``cilearn.methods`` entry point."""
    return {name: component.factory for name, component in METHODS.components().items()}


def method_class(name: str) -> type[Method]:
    return METHODS.get(name).factory


def method_options(section: dict) -> MethodOptions:
    """Validate a ``method:`` config section against the method's own options."""
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError("method: expected a mapping with a 'name', e.g. method: {name: finetune}.")
    return METHODS.parse_options(str(section["name"]), section, "method")


def list_methods() -> list[tuple[str, str]]:
    return [(name, cls.description) for name, cls in sorted(all_methods().items())]


__all__ = ["METHODS", "Batch", "Classifier", "Method", "MethodContext", "MethodOptions", "Output", "Stage",
           "all_methods", "head_classifier", "list_methods", "method_class", "method_options",
           "register", "task_mask"]
