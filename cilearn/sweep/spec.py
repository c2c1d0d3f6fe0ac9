"""Sweep files: a base config and a grid of settings, expanded into runs with readable, stable names.

A sweep file:

```yaml
name: icarl_study_digits        # default: the file name
base: ../icarl_digits.yaml      # a config file (relative to this file) or an inline config mapping
set: {train.epochs: 5}          # fixed settings for every run (not part of the run names)
grid:                           # axes, crossed in this order (dotted config keys)
  method.name: [lwf, icarl]
  losses:                       # a zipped axis: named entries, each setting several keys together
    BCE-BCE: {method.classification_loss: bce, method.distillation_loss: bce}
    CE-MSE: {method.classification_loss: ce, method.distillation_loss: mse}
  train.lr: [0.05, 0.1]
  seed: [0, 1, 2]
average_over: [seed]            # axes that repeat a grid point (default: seed, scenario.class_order)
```

Every combination of the axes is one run; the axes not in ``average_over`` make its *grid point*.  A run
lives in ``<point>/<repeat>`` below the sweep folder, e.g. ``icarl,BCE-BCE,lr=0.05/seed1``: the point
joins one piece per axis (``key=value`` with the key's last part, the bare value for ``method.name``, the
label or name of a whole ``method`` section, the entry name of a zipped axis).  Names depend only on the
axis values, so expanding the same file again gives the same folders, and a run's method label is its
grid point, which is what tables and reports group seeds by.

A base config with ``methods:`` or ``seeds:`` lists turns them into a ``method`` and a ``seed`` axis
(unless the grid sets those keys itself).  Settings apply shallowest key first, so a ``method`` axis of
whole sections combines with ``method.<option>`` axes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

from ..config import Config, load_yaml, parse_config, set_value
from ..errors import ConfigError
from ..schema import did_you_mean

SWEEP_KEYS = ("name", "base", "set", "grid", "average_over")
DEFAULT_AVERAGE_OVER = ("seed", "scenario.class_order")
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "name")
RESERVED = {"configs", "logs", "report"}  # folders of the sweep itself, next to the grid points
MAX_POINT_LENGTH = 120  # longer grid-point names end in a hash instead
MAX_VALUE_LENGTH = 40   # e.g. a class order of 100 labels: its first labels and a hash


@dataclasses.dataclass
class Axis:
    key: str                    # the grid key: a dotted config key, or the name of a zipped axis
    names: list[str]            # the folder-name piece of each value
    settings: list[dict]        # per value: {dotted config key: value}
    repeat: bool = False        # averaged over (seeds, class orders) rather than a grid point


@dataclasses.dataclass
class SweepRun:
    name: str                   # "<point>/<repeat>": the run folder, relative to the sweep folder
    point: str                  # the grid point, also the method label in tables
    settings: dict              # the dotted keys this run sets on the base config
    raw: dict                   # the full single-run config
    config: Config              # ... validated


@dataclasses.dataclass
class Sweep:
    name: str
    spec: dict                  # the sweep file with its base inlined: all that --resume needs
    runs: list[SweepRun]

    def resolved(self) -> dict:
        """What sweep.yaml holds: the spec and the expansion."""
        return {**self.spec, "runs": [{"name": r.name, "point": r.point, "settings": r.settings} for r in self.runs]}


# --- reading -----------------------------------------------------------------------------------------
def load_sweep(path: str | Path) -> Sweep:
    """Read, expand and validate a sweep file (every run's config is checked; nothing is written)."""
    path = Path(path)
    spec = load_yaml(path)  # one-line errors for missing files and bad YAML; name defaults to the stem
    base = spec.get("base")
    if isinstance(base, str):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        try:
            spec["base"] = load_yaml(base_path)
        except ConfigError as exc:
            raise ConfigError(f"{path}: base: {exc}") from None
    return expand(spec, str(path))


def expand(spec: dict, where: str) -> Sweep:
    """A sweep spec (base inlined) → every run, each validated with :func:`parse_config`."""
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{where}: {message}")

    for key in spec:
        if key not in SWEEP_KEYS:
            raise fail(f"unknown key '{key}'.{did_you_mean(key, SWEEP_KEYS)} A sweep file has "
                       f"{', '.join(SWEEP_KEYS)}.")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name):
        raise fail(f"name: expected a folder-safe name (letters, digits, . _ -), got {name!r}.")
    base = spec.get("base")
    if not isinstance(base, dict):
        raise fail("base: give the path of a config file (e.g. base: ../quickstart.yaml) or an inline "
                   "config mapping (data, model, method, train, ...).")
    raw = copy.deepcopy(base)
    raw["name"] = name  # written into every run's config, so that its child process reads back the same config
    for key, value in _mapping(spec.get("set") or {}, "set", fail).items():
        set_value(raw, _config_key(key, "set", fail), value, f"{where}: set: {key}")

    grid = _mapping(spec.get("grid") or {}, "grid", fail)
    axes = [_axis(key, values, fail) for key, values in grid.items()]
    set_keys = {k for axis in axes for s in axis.settings for k in s}
    if "methods" in raw and "method" not in set_keys:
        axes.insert(0, _axis("method", raw["methods"], fail, "base: methods"))
    if "seeds" in raw and "seed" not in set_keys:
        axes.append(_axis("seed", raw["seeds"], fail, "base: seeds"))
    raw.pop("methods", None)
    raw.pop("seeds", None)
    _check_disjoint(axes, spec.get("set") or {}, fail)

    average_over = spec.get("average_over", list(DEFAULT_AVERAGE_OVER))
    if not isinstance(average_over, list) or not all(isinstance(k, str) for k in average_over):
        raise fail(f"average_over: expected a list of grid keys, e.g. [seed], got {average_over!r}.")
    keys = [axis.key for axis in axes]
    for key in average_over:
        if key not in keys and key not in DEFAULT_AVERAGE_OVER:
            raise fail(f"average_over: '{key}' is not a grid axis.{did_you_mean(key, keys)} Axes: "
                       f"{', '.join(keys) or 'none'}.")
    if not axes:  # grid: {}, grid: with nothing, or no grid: a sweep of one run is a plain run
        raise fail("grid: nothing to vary (no grid axis, and the base lists no methods or seeds); give at least "
                   "one axis, e.g. grid: {seed: [0, 1, 2]}, or run the base config with cilearn run.")
    for axis in axes:
        axis.repeat = axis.key in average_over
    _short_keys(axes)

    runs, seen = [], {}
    for combination in itertools.product(*(range(len(a.names)) for a in axes)):
        run = _make_run(raw, axes, combination, fail)
        if run.name in seen:
            raise fail(f"grid points {seen[run.name]} and {run.settings} would share the run folder "
                       f"'{run.name}'; give zipped entries or method sections distinct names/labels.")
        seen[run.name] = run.settings
        runs.append(run)
    for run in runs:  # every grid point is checked before anything runs
        try:
            run.config = parse_config(run.raw)
        except ConfigError as exc:
            raise fail(f"grid point '{run.name}' ({_describe(run.settings)}): {exc}") from None
    resolved = {"name": name, "base": base, **({"set": spec["set"]} if spec.get("set") else {}),
                "grid": grid, "average_over": average_over}
    return Sweep(name=name, spec=resolved, runs=runs)


def _mapping(value: Any, what: str, fail) -> dict:
    if not isinstance(value, dict):
        raise fail(f"{what}: expected a mapping of config keys to values, got {value!r}.")
    return value


def _config_key(key: Any, what: str, fail) -> list[str]:
    """A dotted config key as its parts; its first part must be a config section or top-level key."""
    parts = str(key).split(".")
    if any(not p for p in parts):
        raise fail(f"{what}: '{key}' is not a dotted config key (e.g. train.lr).")
    if parts[0] in ("methods", "seeds"):
        raise fail(f"{what}: '{key}': vary '{parts[0][:-1]}' in the grid instead (one value per run).")
    if parts[0] not in CONFIG_KEYS:
        raise fail(f"{what}: '{key}' is not a config key: '{parts[0]}' is no config section."
                   f"{did_you_mean(parts[0], CONFIG_KEYS)} Sections: {', '.join(CONFIG_KEYS)}.")
    return parts


def _axis(key: Any, values: Any, fail, what: str | None = None) -> Axis:
    what = what or f"grid: {key}"
    key = str(key)
    first = key.split(".")[0]
    if first in CONFIG_KEYS or "." in key or first in ("methods", "seeds"):
        _config_key(key, "grid", fail)
        if not isinstance(values, list) or not values:
            raise fail(f"{what}: expected a non-empty list of values, e.g. {key}: [a, b].")
        if key == "method":
            values = [{"name": v} if isinstance(v, str) else v for v in values]
        _no_repeats([json.dumps(v, sort_keys=True, default=str) for v in values], what, fail)
        return Axis(key, [_value_name(key, v) for v in values], [{key: v} for v in values])
    # Any other name is a zipped axis: {entry name: {dotted key: value, ...}, ...}
    if not isinstance(values, dict) or not values:
        raise fail(f"{what}: '{key}' is not a config key.{did_you_mean(first, CONFIG_KEYS)} A zipped axis "
                   f"maps entry names to settings, e.g. {key}: {{BCE-BCE: {{method.classification_loss: bce, "
                   f"method.distillation_loss: bce}}}}.")
    settings = []
    for entry, entry_settings in values.items():
        if entry_settings is None:  # an entry that keeps the base config as it is
            entry_settings = {}
        if not isinstance(entry_settings, dict):
            raise fail(f"{what}: entry '{entry}': expected a mapping of config keys to values (or {{}} for "
                       f"the base config as it is), got {entry_settings!r}.")
        for setting in entry_settings:
            _config_key(setting, f"{what}: {entry}", fail)
        settings.append(dict(entry_settings))
    return Axis(key, [_safe(str(entry)) for entry in values], settings)


def _no_repeats(items: list[str], what: str, fail) -> None:
    if len(set(items)) != len(items):
        raise fail(f"{what}: a value is listed twice.")


def _check_disjoint(axes: list[Axis], fixed: dict, fail) -> None:
    owner = {str(k): "set" for k in fixed}
    for axis in axes:
        for key in {k for s in axis.settings for k in s}:
            if key in owner and owner[key] != axis.key:
                raise fail(f"'{key}' is set both by {owner[key]} and by the grid axis '{axis.key}'; set it in "
                           f"one place.")
            owner[key] = axis.key


def _short_keys(axes: list[Axis]) -> None:
    """``key=value`` pieces use the key's last part (``lr=0.1``), the full key where that is ambiguous."""
    dotted = [a for a in axes if a.key.split(".")[0] in CONFIG_KEYS and a.key not in ("method", "method.name")]
    last = [a.key.split(".")[-1] for a in dotted]
    for axis, short in zip(dotted, last):
        prefix = short if last.count(short) == 1 else axis.key
        axis.names = [f"{prefix}{n}" if axis.key == "seed" and axis.repeat else f"{prefix}={n}"
                      for n in axis.names]


def _value_name(key: str, value: Any) -> str:
    if isinstance(value, dict):  # a whole section: its label or name
        text = value.get("label") or value.get("name") or _digest(value)
    elif isinstance(value, (list, tuple)):
        text = "+".join(_value_text(v) for v in value)
    else:
        text = _value_text(value)
    text = _safe(text)
    return text if len(text) <= MAX_VALUE_LENGTH else f"{text[:MAX_VALUE_LENGTH - 9]}-{_digest(value)}"


def _value_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, dict):
        return str(value.get("label") or value.get("name") or _digest(value))
    return str(value)


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _safe(text: str) -> str:
    """A folder-name piece: letters, digits and . _ + = - only (',' joins the pieces, '/' nests)."""
    text = re.sub(r"[^A-Za-z0-9._+=-]+", "-", text).strip("-")
    return re.sub(r"^\.+", "_", text) or "_"


def _make_run(base: dict, axes: list[Axis], combination: tuple[int, ...], fail) -> SweepRun:
    settings: dict = {}
    point, repeat = [], []
    for axis, index in zip(axes, combination):
        settings.update(axis.settings[index])
        (repeat if axis.repeat else point).append(axis.names[index])
    raw = copy.deepcopy(base)
    for key in sorted(settings, key=lambda k: k.count(".")):  # whole sections first, then their keys
        set_value(raw, key.split("."), copy.deepcopy(settings[key]), f"grid: {key}")
    method = raw.get("method")
    if isinstance(method, str):
        raw["method"] = method = {"name": method}
    if not isinstance(method, dict):
        raise fail("base: the config has no method section; give one in base or as a 'method' grid axis.")
    point_name = ",".join(point) or _safe(str(method.get("label") or method.get("name")))
    if len(point_name) > MAX_POINT_LENGTH:
        point_name = f"{point_name[:MAX_POINT_LENGTH - 9]}-{hashlib.sha1(point_name.encode()).hexdigest()[:8]}"
    if point_name in RESERVED:
        point_name = f"{point_name}_"
    repeat_name = ",".join(repeat) or f"seed{raw.get('seed', 0)}"
    method["label"] = point_name  # tables and reports group the repeats of one grid point by label
    return SweepRun(name=f"{point_name}/{repeat_name}", point=point_name, settings=settings, raw=raw,
                    config=None)  # type: ignore[arg-type] - set by expand() after every name is known


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in settings.items()) or "the base config"
