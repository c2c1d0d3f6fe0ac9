"""Experiment configuration: YAML file → validated :class:`Config`.

One config describes one experiment.  ``methods:`` (a list of method sections) and ``seeds:`` expand
it into several runs that share everything else; each run gets its own resolved single-run config.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError, did_you_mean
from .schema import build_section, option, to_dict


@dataclasses.dataclass
class DataConfig:
    name: str = option(help="dataset name (cilearn list)")
    root: str | None = option(None, help="data folder; default: $CILEARN_DATA or ~/.cache/cilearn/data")
    download: bool = option(False, help="download official archives when missing")
    normalize: bool = option(True, help="standardise the inputs by the training set's per-channel mean and std; "
                                        "false: raw pixels in [0, 1] (Mammoth's MNIST, van de Ven & Tolias)")
    options: dict = option(default_factory=dict, help="dataset-specific options, e.g. path for image_folder")


@dataclasses.dataclass
class ScenarioConfig:
    type: Literal["class_incremental", "task_incremental", "domain_incremental"] = option(
        "class_incremental", help="task_incremental = class split + a head per task with task ids at test")
    classes_per_task: int | None = option(None, min=1, help="classes added by each task after the first")
    initial_classes: int | None = option(None, min=1, help="classes in the first task (B0: = classes_per_task)")
    num_tasks: int | None = option(None, min=1, help="stop after this many tasks")
    class_order: str | list[int] = option(
        "seed", help="'seed' (numpy permutation from class_order_seed, default the run seed), 'pycil' (permutation "
                     "with seed 1993, PyCIL's CIFAR-100 order), 'icarl_script' (first order of iCaRL's CIFAR-100 "
                     "script), 'vandeven' (van de Ven & Tolias's split-MNIST order for the run seed: argsort of that "
                     "permutation), 'sorted', or a list of labels")
    class_order_seed: int | None = option(
        None, min=0, help="with class_order 'seed': draw the order from this seed, so that seeds: vary only the "
                          "initialisation and training randomness; default: each run seed draws its own order")
    options: dict = option(default_factory=dict, help="stream-specific options (domain streams)")


@dataclasses.dataclass
class ModelConfig:
    name: str = option(help="model name (cilearn list)")
    options: dict = option(default_factory=dict, help="model options, e.g. width for ResNets")
    pretrained: str | None = option(
        None, help="start from a checkpoint: a run directory, a cilearn checkpoint or a state dict")
    transfer: Literal["full", "linear_probe", "freeze"] = option(
        "full", help="with pretrained: fine-tune everything, train only the head, or freeze the first freeze_stages")
    freeze_stages: int = option(0, min=0, help="stages (stem = stage 0) kept frozen when transfer is 'freeze'")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = option(1, min=1, help="epochs per task")
    iterations: int | None = option(
        None, min=1, help="a fixed number of gradient steps per task instead of epochs (train.epochs is then "
                          "ignored; passes over fresh permutations of the data, the last one cut short; milestones "
                          "and warm-up count iterations)")
    batch_size: int = option(128, min=1)
    optimizer: Literal["sgd", "adam", "adamw"] = option(
        "sgd", help="sgd (momentum, nesterov), adam (L2 weight decay added to the gradient), adamw (decoupled)")
    optimizer_state: Literal["reset", "keep"] = option(
        "reset", help="reset: a fresh optimizer for every task (and stage); keep: its state (Adam's moments and "
                      "step counts, SGD's momentum) carries over from task to task, as one optimizer never reset "
                      "(Hsu et al. 2018, van de Ven & Tolias 2019); outputs a growing head adds start fresh")
    lr: float = option(0.1, min=0.0, help="learning rate (> 0)")
    momentum: float = option(0.9, min=0.0, max=1.0, help="sgd only")
    nesterov: bool = option(False, help="sgd only: Nesterov momentum (needs momentum > 0)")
    betas: list[float] = option(default_factory=lambda: [0.9, 0.999], min=0.0, max=1.0,
                                help="adam/adamw: the two moment decay rates, each in [0, 1)")
    weight_decay: float = option(5e-4, min=0.0)
    no_weight_decay: list[Literal["bias", "norm"]] = option(
        default_factory=list, help="parameters without weight decay: bias (every bias, normalisation shifts "
                                   "included), norm (normalisation scales); iCaRL's Theano code: [bias]")
    scheduler: Literal["multistep", "cosine", "warm_restarts", "constant"] = option(
        "multistep", help="cosine: from lr down to min_lr over the epochs; warm_restarts: cosine cycles of 1, 2, 4, "
                          "... epochs (SGDR)")
    min_lr: float = option(0.0, min=0.0, help="the lowest learning rate of the cosine schedules")
    milestones: list[int] = option(default_factory=list, min=1, help="epochs (iterations with train.iterations) at "
                                                                     "which multistep multiplies lr by gamma")
    gamma: float = option(0.2, min=0.0)
    warmup: float = option(0.0, min=0.0, help="linear warm-up of the lr over this many epochs (iterations with "
                                              "train.iterations) before the scheduler; 0: none")
    augment: Literal["auto", "none", "crop", "crop_flip", "flip"] | list[Any] = option(
        "auto", help="auto: crop+flip for colour images, none for grey digits; or a list of steps, each a name or "
                     "{name: {option: value}}: crop {padding: 4}, flip, color_jitter {brightness, contrast, "
                     "saturation}, randaugment {num_ops: 2, magnitude: 9}, cutmix {alpha: 1.0, p: 0.5} (last; "
                     "methods whose loss is the batch's classification loss only); see cilearn/augment.py")
    eval_batch_size: int = option(128, min=1, help="batch for evaluation and feature extraction (128: on CPU "
                                                   "faster than 256 or 1024 for the CIFAR ResNets, and less memory)")
    fold_batchnorm: bool = option(True, help="evaluation and feature extraction (herding, class means) run a copy "
                                             "of the network with each BatchNorm folded into its convolution (the "
                                             "same function; features equal to ~1e-5; timed by cilearn bench)")
    eval_every: int = option(1, min=0, help="evaluate on test data every N epochs (0: only after each task)")
    eval_subsample: int = option(
        2000, min=0, help="the per-epoch evaluation scores a fixed sample of at most this many test images, the "
                          "same number from each class (and task) seen (0: all of them); the evaluation after "
                          "each task, which the metrics and the last epoch's log row report, always scores all")
    checkpoint_every: int = option(0, min=0, help="also checkpoint every N epochs inside a task (0: only per task)")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")
    channels_last: bool = option(True)
    num_threads: int | None = option(None, min=1, help="torch CPU threads; default: all cores")
    precision: Literal["auto", "fp32", "bf16"] = option(
        "fp32", help="fp32 (the default: the same numbers on every machine); bf16: bfloat16 autocast for the "
                     "network's forward passes (losses, BatchNorm statistics, herding and class means stay fp32); "
                     "auto: bf16 where the device computes it natively (CPUs with AVX512-BF16/AMX, GPUs of "
                     "compute capability 8.0+), else fp32; the run's metrics.json and run.json record what ran")
    compile: bool = option(False, help="torch.compile the model")
    deterministic: bool = option(False, help="torch deterministic algorithms (slower on GPU)")
    progress: bool = option(True, help="progress bars")
    sync_batchnorm: bool = option(False, help="under torchrun: synchronise BatchNorm statistics across processes "
                                              "(CUDA only)")
    dist_timeout: float = option(1800.0, min=1.0, help="under torchrun: seconds a process waits for the others "
                                                       "before the job stops")


@dataclasses.dataclass
class OutputConfig:
    save_checkpoints: bool = option(True, help="checkpoint after every task (needed for --resume)")
    save_features: bool = option(True, help="save test features/predictions per task for reports")
    max_feature_samples: int = option(2000, min=0, help="test samples whose features are saved per task")
    loggers: list[str] = option(
        default_factory=lambda: ["csv"], help="where progress is logged: csv (log.csv, accuracy_matrix.csv), "
        "tensorboard (RUN_DIR/tensorboard; pip install 'cilearn[tensorboard]'), wandb (RUN_DIR/wandb; "
        "pip install 'cilearn[wandb]'), mlflow (a local store in RUN_DIR/mlflow, or MLFLOW_TRACKING_URI; pip "
        "install 'cilearn[mlflow]'), or a logger of an installed package (entry point group cilearn.loggers)")
    wandb_project: str = option("cilearn", help="the W&B project of loggers: [wandb]")
    wandb_entity: str | None = option(None, help="the W&B entity (team or user); default: W&B's own default")
    wandb_group: str | None = option(None, help="the W&B group; default: the config's name (a sweep's runs carry "
                                                "the sweep's name, an experiment's runs the experiment's)")
    wandb_tags: list[str] = option(default_factory=list, help="W&B tags of the run")
    wandb_name: str | None = option(None, help="the W&B run name; default: the run's label (method, /seedN)")
    mlflow_experiment: str | None = option(None, help="the MLflow experiment of loggers: [mlflow]; default: the "
                                                      "config's name")
    headline_accuracy: Literal["sample_weighted", "task_mean"] = option(
        "sample_weighted", help="the accuracy that last_accuracy, average_incremental_accuracy and the summary "
        "tables report: sample_weighted (all test images of the classes seen, one pool) or task_mean (the mean "
        "of the per-task accuracies over the tasks seen, as van de Ven & Tolias, Hsu et al. and Mammoth); "
        "metrics.json always holds both (*_sample_weighted, *_task_mean)")
    spread: Literal["std", "sem"] = option(
        "std", help="the ± of the summary tables over seeds: std (sample standard deviation) or sem (standard "
                    "error of the mean, std / sqrt(seeds), as van de Ven & Tolias report)")


@dataclasses.dataclass
class Config:
    data: DataConfig
    model: ModelConfig
    method: dict
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
        from .shipped import find_config

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
        from .log import get_logger

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
    """Validate one single-run raw config (after expansion)."""
    from .methods import method_options  # late imports: methods and streams import config types
    from .models.registry import model_defaults
    from .streams import STREAM_OPTIONS

    for section in ("data", "model"):
        if section not in raw or raw[section] is None:
            raise ConfigError(f"{section}: required section is missing (e.g. {section}: {{name: ...}}).")
    train = raw.get("train")
    if isinstance(train, dict) and "bf16" in train:
        # train.bf16 (0.1: bf16 autocast on CUDA only) became train.precision: the config.yaml of a run made
        # before still parses, and resumes in the precision it trained in (bf16: true on a CPU trained in fp32
        # before and now autocasts: the one case that does not resume exactly).
        if "precision" in train:
            raise ConfigError("train.bf16: replaced by train.precision (auto, fp32 or bf16); remove train.bf16.")
        train = {k: v for k, v in train.items() if k != "bf16"}
        train["precision"] = "bf16" if raw["train"]["bf16"] is True else "fp32"
        raw = {**raw, "train": train}
    cfg = build_section(Config, raw, "")
    if not isinstance(cfg.method, dict) or "name" not in cfg.method:
        raise ConfigError("method: expected a mapping with a 'name', e.g. method: {name: finetune}.")
    # The resolved config lists every default: the method's options, the model's, the stream's.
    cfg.method = to_dict(method_options(cfg.method))  # validates the method's own keys now, before any work
    defaults, _ = model_defaults(cfg.model.name)
    cfg.model.options = {**defaults, **cfg.model.options}
    if cfg.scenario.type == "domain_incremental" and cfg.scenario.options.get("stream") in STREAM_OPTIONS:
        kind = cfg.scenario.options["stream"]
        cfg.scenario.options = to_dict(build_section(STREAM_OPTIONS[kind], cfg.scenario.options, "scenario.options"))
    if cfg.scenario.type != "domain_incremental" and cfg.scenario.classes_per_task is None:
        raise ConfigError("scenario.classes_per_task: required for class- and task-incremental scenarios.")
    if cfg.scenario.class_order_seed is not None and cfg.scenario.class_order != "seed":
        raise ConfigError(f"scenario.class_order_seed: only used with class_order: seed (this config has "
                          f"class_order: {cfg.scenario.class_order!r}); remove one of them.")
    check_train(cfg.train)
    from .loggers import check_logger_names

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
    if train.nesterov and (train.optimizer != "sgd" or train.momentum <= 0):
        raise ConfigError(f"train.nesterov: needs optimizer sgd with momentum > 0 (this config: optimizer "
                          f"{train.optimizer}, momentum {train.momentum:g}).")
    if len(train.betas) != 2 or any(b >= 1 for b in train.betas):
        raise ConfigError(f"train.betas: expected two numbers in [0, 1), e.g. [0.9, 0.999]; got {train.betas}.")
    if len(set(train.no_weight_decay)) != len(train.no_weight_decay):
        raise ConfigError(f"train.no_weight_decay: {train.no_weight_decay} names a kind twice.")
    if isinstance(train.augment, list):
        from .augment import parse_steps

        parse_steps(train.augment)


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
    options discriminated by ``name``, ``scenario.options`` one of the domain streams' options discriminated by
    ``stream``.  cilearn's own checks go further (cross-section rules, dataset and model options)."""
    from .methods import all_methods
    from .schema import section_schema
    from .streams import STREAM_OPTIONS

    defs: dict = {}
    schema = section_schema(Config, defs)
    methods = all_methods()
    for name, cls in sorted(methods.items()):
        options = section_schema(cls.Options, defs)
        options["properties"]["name"] = {"const": name, "description": cls.description}
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
    schema["required"] = [key for key in schema["required"] if key != "method"]
    schema["oneOf"] = [{"required": ["method"]}, {"required": ["methods"]}]
    for kind, cls in STREAM_OPTIONS.items():
        stream = section_schema(cls, defs)
        stream["properties"]["stream"] = {"const": kind}
        defs[f"stream.{kind}"] = stream
    defs["ScenarioConfig"]["properties"]["options"] = {
        "anyOf": [{"type": "object", "maxProperties": 0},
                  {"type": "object", "oneOf": [{"$ref": f"#/$defs/stream.{k}"} for k in STREAM_OPTIONS],
                   "discriminator": {"propertyName": "stream"}}],
        "description": "domain_incremental streams: stream and its options"}
    augment = defs["TrainConfig"]["properties"]["augment"]  # the list form: each step a name or {name: options}
    from .augment import MODES, STEP_OPTIONS
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
