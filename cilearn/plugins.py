"""Third-party extensions through Python entry points, so users extend cilearn without forking it.

A package registers, in its own ``pyproject.toml``::

    [project.entry-points."cilearn.methods"]
    mymethod = "mypackage.methods:MyMethod"          # a cilearn.methods.Method subclass

    [project.entry-points."cilearn.datasets"]
    mydata = "mypackage.data:load"                   # load(root: Path, download: bool, **options) -> DatasetSplits

    [project.entry-points."cilearn.models"]
    mynet = "mypackage.models:make"                  # make(in_channels, image_size, **options) -> nn.Module
                                                     # backbone with a ``feature_dim`` attribute

    [project.entry-points."cilearn.loggers"]
    mylog = "mypackage.logging:MyLogger"             # a cilearn.loggers.Logger subclass, made with no
                                                     # arguments; output.loggers: [csv, mylog]

Entry points are read once per process, on the first lookup that needs them; a plugin that fails to
import is reported as one clear error naming the package, not a traceback.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError

GROUPS = ("cilearn.methods", "cilearn.datasets", "cilearn.models", "cilearn.loggers")
_LOADED: dict[str, dict[str, Any]] = {}


def plugins(group: str) -> dict[str, Any]:
    """``{name: loaded object}`` of the installed entry points of ``group``."""
    if group not in _LOADED:
        found = {}
        for point in entry_points(group=group):
            try:
                found[point.name] = point.load()
            except Exception as exc:  # a broken plugin must not look like a cilearn bug
                package = point.dist.name if point.dist is not None else point.value
                raise ConfigError(f"the {group} plugin '{point.name}' of the installed package '{package}' "
                                  f"cannot be loaded ({type(exc).__name__}: {exc}); fix or uninstall that "
                                  f"package.") from None
        _LOADED[group] = found
    return _LOADED[group]


def first_line(obj: Any, fallback: str) -> str:
    """A one-line description: the object's ``description`` or the first line of its docstring."""
    text = getattr(obj, "description", None) or (getattr(obj, "__doc__", None) or "").strip()
    return text.splitlines()[0] if text else fallback
