"""One way to plug things in: a :class:`Registry` per kind of component (methods, models, datasets, scenario
streams, loggers), each entry a :class:`Component` — a name, a factory, an options dataclass and a description.

Built-in components are added by the module that defines them (``cilearn.methods``, ``cilearn.models``,
``cilearn.data``, ``cilearn.streams``, ``cilearn.loggers``); installed packages add theirs through the entry
point group of the kind (``cilearn.methods``, ``cilearn.models``, ``cilearn.datasets``, ``cilearn.loggers``, see
:mod:`cilearn.plugins`), read on the first lookup that needs them.  Either way a config section names the
component and gives its options, which :meth:`Registry.parse_options` turns into the component's options
dataclass once, when the config is parsed: nothing downstream sees the raw mapping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .errors import ConfigError, unknown_choice
from .plugins import first_line, plugins
from .schema import build_section


@dataclasses.dataclass(frozen=True)
class Component:
    """One registered component.  ``options`` is the dataclass its config options are parsed into (``None``:
    a plugin that declares none; its options are handed over as a mapping, unchecked)."""

    name: str
    factory: Any
    options: type | None = None
    description: str = ""
    paper: str = ""
    plugin: bool = False  # from an installed package's entry point


@dataclasses.dataclass
class NoOptions:
    """A component without options of its own."""


class Registry:
    """The components of one kind by name.  ``adapt`` turns an entry point's object into a :class:`Component`
    (and refuses one of the wrong type); ``section`` is the config key that names the component, for errors."""

    def __init__(self, kind: str, section: str, group: str | None = None,
                 adapt: Callable[[str, Any], Component] | None = None, error: type[Exception] = ConfigError):
        self.kind, self.section, self.group = kind, section, group
        self.adapt = adapt
        self.error = error
        self._components: dict[str, Component] = {}
        self._plugins_read = group is None

    def add(self, name: str, factory: Any, options: type | None = NoOptions, description: str = "",
            paper: str = "") -> Component:
        """Register a component (a later one of the same name replaces it)."""
        component = Component(name, factory, options, description or first_line(factory, name), paper)
        self._components[name] = component
        return component

    def remove(self, name: str) -> None:
        """Forget a component (tests, and a notebook replacing its own)."""
        self._components.pop(name, None)

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True  # first: a plugin that fails is reported once, not on every lookup
        for name, obj in plugins(self.group).items():
            if name not in self._components:
                component = self.adapt(name, obj) if self.adapt else Component(name, obj, None, first_line(obj, name))
                self._components[name] = dataclasses.replace(component, plugin=True)

    def components(self) -> dict[str, Component]:
        """Every component of this kind, built-in first, in registration order, then plugins."""
        self._read_plugins()
        return self._components

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._components or name in self.components())

    def get(self, name: Any) -> Component:
        if isinstance(name, str) and name in self._components:
            return self._components[name]
        components = self.components()
        if not isinstance(name, str) or name not in components:
            raise unknown_choice(self.kind, str(name), components, self.section, error=self.error)
        return components[name]

    def parse_options(self, name: str, values: Any, path: str) -> Any:
        """The options dataclass of component ``name`` built from ``values`` (a mapping; ``path`` names it in
        errors).  A plugin without an options dataclass gets the mapping as it is."""
        component = self.get(name)
        if component.options is None:
            if values is not None and not isinstance(values, dict):
                raise self.error(f"{path}: expected a mapping of options, got {values!r}.")
            return dict(values or {})
        return build_section(component.options, values, path)


