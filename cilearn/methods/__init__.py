"""Method registry.  A new method is a :class:`Method` subclass in its own module, listed here."""

from __future__ import annotations

from ..errors import ConfigError
from ..schema import build_section, unknown_choice
from .base import Classifier, Method, MethodContext, MethodOptions, head_classifier
from .finetune import FineTune
from .icarl import ICaRL
from .joint import Joint
from .lwf import LwF
from .ewc import EWC
from .replay import IIDStream, Replay

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (FineTune, Joint, LwF, ICaRL, Replay, IIDStream, EWC)}


def register(cls: type[Method]) -> type[Method]:
    """Add a method class to the registry (usable as a decorator by plugins)."""
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise unknown_choice("method", name, METHODS, "method.name")
    return METHODS[name]


def method_options(section: dict) -> MethodOptions:
    """Validate a ``method:`` config section against the method's own options."""
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError("method: expected a mapping with a 'name', e.g. method: {name: finetune}.")
    cls = method_class(str(section["name"]))
    return build_section(cls.Options, section, "method")


def list_methods() -> list[tuple[str, str]]:
    return [(name, cls.description) for name, cls in sorted(METHODS.items())]


__all__ = ["METHODS", "Classifier", "Method", "MethodContext", "MethodOptions", "head_classifier",
           "list_methods", "method_class", "method_options", "register"]
