"""Experiment configuration: YAML file → validated :class:`Config`.

One config describes one experiment.  ``methods:`` (a list of method sections) and ``seeds:`` expand
it into several runs that share everything else; each run gets its own resolved single-run config.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .augment import MODES, STEP_OPTIONS, parse_steps
from .data.registry import DATASETS, dataset_options, is_registered
from .errors import ConfigError, did_you_mean
from .log import get_logger
from .loggers import LOGGERS, check_logger_names
from .methods import METHODS, MethodOptions, method_options
from .models.registry import MODELS, model_options
from .schema import build_section, option, section_schema, to_dict
from .sections import FIRST_TASK_KEYS, DataConfig, ModelConfig, OutputConfig, ScenarioConfig, TrainConfig
from .shipped import find_config
from .streams import STREAMS, stream_options

__all__ = ["Config", "DataConfig", "ModelConfig", "OutputConfig", "ScenarioConfig", "TrainConfig",
           "absent_from_old_run", "apply_overrides", "as_they_ran", "expand_runs", "json_schema", "load_runs",
           "load_yaml", "method_section", "parse_config", "parse_override", "parse_stored_config", "run_label",
           "set_value", "with_method_options"]


@dataclasses.dataclass
class Config:
    data: DataConfig
    model: ModelConfig
    method: MethodOptions = option(help="the method and its options (cilearn list --options)")
    train: TrainConfig = option(default_factory=TrainConfig)
    scenario: ScenarioConfig = option(default_factory=ScenarioConfig)
    output: OutputConfig = option(default_factory=OutputConfig)
    seed: int = option(0, min=0)
    name: str | None = option(None, help="experiment name used for the default output folder")

    def to_dict(self) -> dict:
        return to_dict(self)


_TOP_KEYS = {f.name for f in dataclasses.fields(Config)} | {"methods", "seeds"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently,
    so a second ``train:`` section would drop the first without a word)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = key_node.value
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"the key '{key}' appears twice in one mapping", key_node.start_mark)
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict:
    """A config file as a dict; a relative path that does not exist may name a shipped config (``quickstart``,
    ``configs/quickstart.yaml`` from any folder: :mod:`cilearn.shipped`)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute():
        path = find_config(str(path)) or path
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a folder; give the path to a YAML file, "
                          f"e.g. configs/quickstart.yaml (or resume a run folder with --resume).")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist. Give the path to a YAML file, "
                          f"e.g. configs/quickstart.yaml, or the name of a shipped config (cilearn configs).")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read ({exc.strerror or exc}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not a text (UTF-8) file; give a YAML config.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    if raw is None:  # an empty file, or only comments
        raise ConfigError(f"config file '{path}' is empty; a config needs at least the data, model and method "
                          f"sections, e.g. copy configs/quickstart.yaml.")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, method, train).")
    raw.setdefault("name", path.stem)
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=1`` → (['train', 'epochs'], 1); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected KEY=VALUE, e.g. --set train.epochs=1.")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"--set '{text}': the key must be dotted names, e.g. train.lr=0.5.")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set '{text}': cannot parse the value '{value}' as YAML.") from None
    return parts, parsed


def set_value(raw: dict, parts: list[str], value: Any, where: str) -> None:
    """Set the dotted key ``parts`` of a raw config in place, creating missing sections.  Setting one of
    a pair replaces the other, as a user means it: method=... on a config with methods: runs that one
    method; seed=3 runs that one seed.  ``methods.N.key`` sets a key of the list's entry N (from 0), and
    ``methods.N`` replaces that entry.  ``where`` names the setting in errors (e.g. "--set 'x=1'")."""
    if parts[0] == "method" and len(parts) > 1 and "methods" in raw and "method" not in raw:
        entries = raw["methods"] if isinstance(raw["methods"], list) else []
        names = ", ".join(f"{i} {_entry_name(m)}" for i, m in enumerate(entries))
        raise ConfigError(f"{where}: this config lists several methods (methods: {names}); set a key of one of "
                          f"them with methods.N.{'.'.join(parts[1:])}=... (N from 0), or run one method with "
                          f"method=... .")
    node: Any = raw
    depth = 0
    while depth < len(parts) - 1:
        part = parts[depth]
        if isinstance(node, list):  # methods.N: an entry of the list (a bare name becomes {name: ...})
            index = _list_index(node, part, parts[:depth], where)
            if isinstance(node[index], str):
                node[index] = {"name": node[index]}
            node, depth = node[index], depth + 1
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: '{'.'.join(parts[:depth])}' is not a section.")
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict) and not (isinstance(child, list) and parts[:depth + 1] == ["methods"]):
            raise ConfigError(f"{where}: '{'.'.join(parts[:depth + 1])}' is not a section.")
        node, depth = child, depth + 1
    if isinstance(node, list):
        node[_list_index(node, parts[-1], parts[:-1], where)] = value
    else:
        node[parts[-1]] = value
    pairs = {("method",): "methods", ("methods",): "method", ("seed",): "seeds", ("seeds",): "seed"}
    if tuple(parts) in pairs:
        raw.pop(pairs[tuple(parts)], None)


def _entry_name(entry: Any) -> str:
    return str(entry.get("label") or entry.get("name")) if isinstance(entry, dict) else str(entry)


def _list_index(items: list, part: str, where_parts: list[str], where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        names = ", ".join(f"{i} {_entry_name(m)}" for i, m in enumerate(items))
        raise ConfigError(f"{where}: '{part}' is not an entry of {'.'.join(where_parts)} (give its position from 0: "
                          f"{names}).")
    return int(part)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``--set`` values applied to a raw config.  One that shortens the training (``train.epochs`` or
    ``train.iterations``) without setting ``train.milestones`` drops the config's milestones that no longer fall
    inside it (saying so): a quick ``--set train.epochs=1`` of a study config runs at its first learning rate,
    and the milestones that still fit stay where the config put them."""
    raw = copy.deepcopy(raw)
    keys = set()
    for text in overrides or []:
        parts, value = parse_override(text)
        set_value(raw, parts, value, f"--set '{text}'")
        keys.add(".".join(parts))
    if keys & {"train.epochs", "train.iterations"} and not keys & {"train.milestones", "train"}:
        _drop_late_milestones(raw)
    return raw


def _drop_late_milestones(raw: dict) -> None:
    train = raw.get("train")
    if not isinstance(train, dict) or not isinstance(train.get("milestones"), list):
        return
    length, unit = (train.get("iterations"), "train.iterations") if train.get("iterations") else (
        train.get("epochs", 1), "train.epochs")
    if not isinstance(length, int):
        return  # the type check of parse_config says what is wrong
    kept = [m for m in train["milestones"] if not isinstance(m, int) or m <= length]
    if kept != train["milestones"]:
        get_logger(__name__).info(f"train.milestones: {train['milestones']} → {kept} (those after {unit}={length} "
                                  f"dropped; set train.milestones to choose others)")
        train["milestones"] = kept


def expand_runs(raw: dict) -> list[dict]:
    """Split ``methods:`` and ``seeds:`` into one raw single-run config each."""
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"unknown top-level key '{key}'.{did_you_mean(key, _TOP_KEYS)} "
                              f"Valid keys: {', '.join(sorted(_TOP_KEYS))}.")
    if "methods" in raw and "method" in raw:
        raise ConfigError("give either 'method' (one method) or 'methods' (a list), not both.")
    methods = raw.get("methods", [raw.get("method")])
    if not isinstance(methods, list) or not methods:
        raise ConfigError("'methods' must be a non-empty list of method sections, e.g. [{name: finetune}].")
    seeds = raw.get("seeds", [raw.get("seed", 0)])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        if "seeds" in raw:
            raise ConfigError(f"seeds: expected a non-empty list of non-negative integers, got {seeds!r}.")
        raise ConfigError(f"seed: expected a non-negative integer, got {raw.get('seed')!r}.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: {seeds} repeats a seed.")
    runs = []
    for method in methods:
        if method is None:
            raise ConfigError("method: required section is missing, e.g. method: {name: finetune}.")
        if isinstance(method, str):
            method = {"name": method}
        for seed in seeds:
            run = {k: copy.deepcopy(v) for k, v in raw.items() if k not in ("methods", "seeds")}
            run["method"] = copy.deepcopy(method)
            run["seed"] = seed
            runs.append(run)
    names = [run_label(r, len(seeds) > 1) for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("methods: two entries would share a run folder; give each a distinct 'label'.")
    return runs


def run_label(raw: dict, with_seed: bool) -> str:
    method = raw["method"] if isinstance(raw["method"], dict) else {"name": raw["method"]}
    label = str(method.get("label") or method.get("name"))
    return f"{label}/seed{raw['seed']}" if with_seed else label


def parse_config(raw: dict) -> Config:
    """Validate one single-run raw config (after expansion).  Every section is parsed once, into typed
    dataclasses: the method into its own options class, ``model.options``, ``data.options`` and a domain
    stream's ``scenario.options`` into the options class of the model, dataset and stream they name (the
    resolved config lists every default)."""
    for section in ("data", "model"):
        if section not in raw or raw[section] is None:
            raise ConfigError(f"{section}: required section is missing (e.g. {section}: {{name: ...}}).")
    train = raw.get("train")
    if isinstance(train, dict) and "bf16" in train:
        # train.bf16 (0.1: bf16 autocast on CUDA only) became train.precision: the config.yaml of a run made
        # before still parses, and resumes in the precision it trained in (bf16: true on a CPU trained in fp32
        # before and now autocasts: the one case that does not resume exactly).
        if "precision" in train:
            raise ConfigError("train.bf16: replaced by train.precision (auto, fp32, bf16 or fp16); remove train.bf16.")
        train = {k: v for k, v in train.items() if k != "bf16"}
        train["precision"] = "bf16" if raw["train"]["bf16"] is True else "fp32"
        raw = {**raw, "train": train}
    method = raw.get("method")
    if not isinstance(method, dict) or "name" not in method:
        raise ConfigError("method: expected a mapping with a 'name', e.g. method: {name: finetune}.")
    raw = {**raw, "method": method_options(method)}  # the method's own keys are checked now, before any work
    cfg = build_section(Config, raw, "")
    for section, path in ((cfg.model, "model.options"), (cfg.data, "data.options"), (cfg.scenario, "scenario.options")):
        if not isinstance(section.options, dict):
            raise ConfigError(f"{path}: expected a mapping of options, got {section.options!r}.")
    cfg.model.options = model_options(cfg.model.name, cfg.model.options)
    if is_registered(cfg.data.name):  # else: a dataset given from Python; Experiment says what is missing
        cfg.data.options = dataset_options(cfg.data.name, cfg.data.options)
    if cfg.scenario.type == "domain_incremental" and cfg.scenario.options.get("stream") is not None:
        cfg.scenario.options = stream_options(cfg.scenario.options)
    if cfg.scenario.type != "domain_incremental" and cfg.scenario.classes_per_task is None:
        raise ConfigError("scenario.classes_per_task: required for class- and task-incremental scenarios.")
    if cfg.scenario.class_order_seed is not None and cfg.scenario.class_order != "seed":
        raise ConfigError(f"scenario.class_order_seed: only used with class_order: seed (this config has "
                          f"class_order: {cfg.scenario.class_order!r}); remove one of them.")
    check_train(cfg.train)
    check_logger_names(cfg.output.loggers)
    return cfg


def check_train(train: TrainConfig) -> None:
    """The cross-field checks of the train section (each field's type and range is already checked)."""
    if train.lr <= 0:
        raise ConfigError(f"train.lr: {train.lr:g} trains nothing; give a learning rate above 0, e.g. 0.1.")
    length, unit = (train.iterations, "train.iterations") if train.iterations else (train.epochs, "train.epochs")
    milestones = train.milestones
    if milestones != sorted(milestones) or any(m > length for m in milestones):
        raise ConfigError(f"train.milestones: {milestones} must be increasing and at most {unit} ({length}).")
    if train.warmup >= length and train.warmup > 0:
        raise ConfigError(f"train.warmup: {train.warmup:g} must be shorter than {unit} ({length}).")
    if train.warmup_factor is not None and train.warmup <= 0:
        raise ConfigError(f"train.warmup_factor: {train.warmup_factor:g} is the lr factor of a warm-up, and this "
                          f"config has none; set train.warmup (e.g. 1) or remove warmup_factor.")
    if train.nesterov and (train.optimizer != "sgd" or train.momentum <= 0):
        raise ConfigError(f"train.nesterov: needs optimizer sgd with momentum > 0 (this config: optimizer "
                          f"{train.optimizer}, momentum {train.momentum:g}).")
    if len(train.betas) != 2 or any(b >= 1 for b in train.betas):
        raise ConfigError(f"train.betas: expected two numbers in [0, 1), e.g. [0.9, 0.999]; got {train.betas}.")
    if len(set(train.no_weight_decay)) != len(train.no_weight_decay):
        raise ConfigError(f"train.no_weight_decay: {train.no_weight_decay} names a kind twice.")
    if isinstance(train.augment, list):
        parse_steps(train.augment)
    if train.first_task:  # checked, and its values typed as the train section's own (YAML's "1e-3" a float)
        merged = first_task_config(train)
        train.first_task = {key: getattr(merged, key) for key in train.first_task}


def first_task_config(train: TrainConfig) -> TrainConfig:
    """The train settings of the first task: ``train`` with ``train.first_task`` over it, checked as a train
    section is (a first task that gives ``epochs`` counts epochs, even when the run counts iterations)."""
    first = train.first_task
    if not isinstance(first, dict):
        raise ConfigError(f"train.first_task: expected a mapping of train settings, e.g. {{epochs: 4, lr: 0.1}}; "
                          f"got {first!r}.")
    for key in first:
        if key not in FIRST_TASK_KEYS:
            why = ("a setting of the whole run, one value for every task." if key in TrainConfig.__dataclass_fields__
                   else f"not a train setting.{did_you_mean(key, FIRST_TASK_KEYS)}")
            raise ConfigError(f"train.first_task.{key}: {why} The first task may change: {', '.join(FIRST_TASK_KEYS)}.")
    if first.get("optimizer", train.optimizer) != train.optimizer and train.optimizer_state == "keep":
        raise ConfigError(f"train.first_task.optimizer: {first['optimizer']} cannot hand its state to the later "
                          f"tasks' {train.optimizer} (train.optimizer_state: keep); use one optimizer, or "
                          f"optimizer_state: reset.")
    values = {**to_dict(train), "first_task": {}, **first}
    if "epochs" in first and "iterations" not in first:
        values["iterations"] = None
    merged = build_section(TrainConfig, values, "train.first_task")
    try:
        check_train(merged)
    except ConfigError as exc:
        raise ConfigError(f"train.first_task: the first task's settings (train with first_task over it) are wrong: "
                          f"{exc} Give the first task its own value in train.first_task.") from None
    return merged


def method_section(raw: dict) -> dict:
    """A raw config's ``method:`` as a mapping (``method: er`` is ``{name: er}``)."""
    method = raw.get("method")
    return method if isinstance(method, dict) else {"name": method}


def absent_from_old_run(stored: dict) -> dict:
    """The method options a run folder's resolved config.yaml ``stored`` does not list, with what their absence
    meant when it was written: options added later with a new default, named by the options class's
    ``absent_from_old_runs`` (ER-ACE's ``head: linear``).  {} for a config.yaml that lists them."""
    method = method_section(stored)
    if method.get("name") not in METHODS:  # parse_config says what is wrong
        return {}
    then = getattr(METHODS.get(method["name"]).options, "absent_from_old_runs", {})
    return {key: value for key, value in then.items() if key not in method}


def with_method_options(raw: dict, options: dict) -> dict:
    """``raw`` with ``options`` added to its method section (keys it sets itself win)."""
    if not options:
        return raw
    return {**raw, "method": {**options, **method_section(raw)}}


def parse_stored_config(stored: dict) -> Config:
    """A run folder's config.yaml, parsed as it meant when the run was written (:func:`absent_from_old_run`), so
    that old run folders resume and report as they ran."""
    return parse_config(with_method_options(stored, absent_from_old_run(stored)))


def as_they_ran(raws: list[dict], stored: list[dict | None]) -> list[dict]:
    """An experiment's runs (``raws``, from experiment.yaml as the user wrote it) with the method options that the
    started runs' config.yaml (``stored``, None for a run not started) show were added after the experiment began,
    set to what they meant then (:func:`absent_from_old_run`); the runs not started yet take the same, so that every
    run of a method resumes as the first ones ran."""
    then: dict[str, dict] = {}
    for kept in filter(None, stored):
        then.setdefault(str(method_section(kept).get("name")), {}).update(absent_from_old_run(kept))
    return [with_method_options(raw, then.get(str(method_section(raw).get("name")), {})) for raw in raws]


def load_runs(path: str | Path, overrides: list[str] | None = None) -> tuple[str, list[tuple[str, Config]]]:
    """Read, override, expand and validate a config file: (experiment name, [(run label, config)])."""
    raw = apply_overrides(load_yaml(path), overrides or [])
    raws = expand_runs(raw)
    many_seeds = len({r["seed"] for r in raws}) > 1
    return str(raw.get("name")), [(run_label(r, many_seeds), parse_config(r)) for r in raws]


def json_schema() -> dict:
    """JSON Schema (draft 2020-12) of a config file, for editors that complete and check YAML (``cilearn schema``).

    Built from the same dataclasses that validate configs: every section's keys, types, choices, bounds,
    defaults and help lines; ``method`` (and each entry of ``methods``) is a union of the registered methods'
    options discriminated by ``name``; ``model.options`` and ``data.options`` follow the model's and dataset's
    ``name`` (``if``/``then``), ``scenario.options`` is one of the domain streams' options discriminated by
    ``stream``.  cilearn's own checks go further (cross-section rules)."""
    defs: dict = {}
    schema = section_schema(Config, defs)
    methods = METHODS.components()
    for name, component in sorted(methods.items()):
        options = section_schema(component.options, defs)
        options["properties"]["name"] = {"const": name, "description": component.description}
        options["title"] = f"method {name}"
        defs[f"method.{name}"] = options
    one_method = {"anyOf": [
        {"type": "object", "oneOf": [{"$ref": f"#/$defs/method.{n}"} for n in sorted(methods)],
         "discriminator": {"propertyName": "name"}},
        {"enum": sorted(methods), "description": "a method with its default options"}]}
    schema["properties"]["method"] = {**one_method, "description": "the method of this experiment"}
    schema["properties"]["methods"] = {"type": "array", "minItems": 1, "items": one_method,
                                       "description": "several methods, one run each, compared in a summary"}
    schema["properties"]["seeds"] = {"type": "array", "minItems": 1, "uniqueItems": True,
                                     "items": {"type": "integer", "minimum": 0},
                                     "description": "several seeds, one run each (mean ± std in the summary)"}
    defs.pop("MethodOptions", None)  # replaced by the union above
    schema["required"] = [key for key in schema["required"] if key != "method"]
    schema["oneOf"] = [{"required": ["method"]}, {"required": ["methods"]}]
    for section, registry in (("ModelConfig", MODELS), ("DataConfig", DATASETS)):
        # options by name: if name is X then options follow X's dataclass (a plugin without one: any mapping)
        kind = registry.kind
        rules = []
        for name, component in registry.components().items():
            options = section_schema(component.options, defs) if component.options else {"type": "object"}
            options["title"] = f"{kind} {name} options"
            defs[f"{kind}.{name}"] = options
            then: dict = {"properties": {"options": {"$ref": f"#/$defs/{kind}.{name}"}}}
            if options.get("required"):  # e.g. image_folder's path: the options must be given
                then["required"] = ["options"]
            rules.append({"if": {"properties": {"name": {"const": name}}, "required": ["name"]}, "then": then})
        defs[section]["properties"]["options"]["type"] = "object"
        defs[section]["allOf"] = rules
    for kind, component in STREAMS.components().items():
        stream = section_schema(component.options, defs)
        stream["properties"]["stream"] = {"const": kind}
        defs[f"stream.{kind}"] = stream
    defs["ScenarioConfig"]["properties"]["options"] = {
        "anyOf": [{"type": "object", "maxProperties": 0},
                  {"type": "object", "oneOf": [{"$ref": f"#/$defs/stream.{k}"} for k in STREAMS.components()],
                   "discriminator": {"propertyName": "stream"}}],
        "description": "domain_incremental streams: stream and its options"}
    loggers = defs["OutputConfig"]["properties"]["loggers"]
    loggers["items"] = {"enum": list(LOGGERS.components())}
    augment = defs["TrainConfig"]["properties"]["augment"]  # the list form: each step a name or {name: options}
    step = {"anyOf": [{"enum": list(STEP_OPTIONS)}] + [
        {"type": "object", "properties": {name: section_schema(cls, defs)}, "required": [name],
         "additionalProperties": False} for name, cls in STEP_OPTIONS.items()]}
    augment["anyOf"] = [{"enum": list(MODES)}, {"type": "array", "items": step}]
    # classes_per_task is needed by every scenario but the domain streams
    schema["if"] = {"properties": {"scenario": {"properties": {"type": {"const": "domain_incremental"}},
                                                "required": ["type"]}}, "required": ["scenario"]}
    schema["else"] = {"properties": {"scenario": {"required": ["classes_per_task"]}}, "required": ["scenario"]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "cilearn experiment config",
            **schema, "$defs": dict(sorted(defs.items()))}
