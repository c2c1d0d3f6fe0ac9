"""--set on configs as the README uses them: one method of a list, a whole entry, and a shorter training on a
config with milestones."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from cilearn.config import apply_overrides, load_yaml
from cilearn.errors import ConfigError
from cilearn.experiment import Experiment

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs/quickstart.yaml"


def methods_of(experiment: Experiment) -> dict:
    return {label: cfg.method for label, cfg in experiment.runs}


def test_one_method_of_a_list():
    experiment = Experiment.from_yaml(QUICKSTART, ["methods.3.memory_size=50", "methods.0.label=ft"])
    methods = methods_of(experiment)
    assert methods["icarl"].memory_size == 50 and list(methods) == ["ft", "joint", "lwf", "icarl"]
    untouched = methods_of(Experiment.from_yaml(QUICKSTART))
    assert untouched["icarl"].memory_size == 100 and untouched["lwf"] == methods["lwf"]
    replaced = methods_of(Experiment.from_yaml(QUICKSTART, ["methods.1={name: icarl, memory_size: 20, label: small}"]))
    assert list(replaced) == ["finetune", "small", "lwf", "icarl"] and replaced["small"].memory_size == 20


def test_a_method_key_on_a_list_of_methods_says_how():
    with pytest.raises(ConfigError, match=r"several methods \(methods: 0 finetune, 1 joint, 2 lwf, 3 icarl\); set "
                                          r"a key of one of them with methods.N.memory_size=\.\.\."):
        Experiment.from_yaml(QUICKSTART, ["method.memory_size=500"])
    with pytest.raises(ConfigError, match=r"'4' is not an entry of methods \(give its position from 0"):
        Experiment.from_yaml(QUICKSTART, ["methods.4.memory_size=5"])
    one = methods_of(Experiment.from_yaml(QUICKSTART, ["method={name: icarl, memory_size: 500}"]))
    assert one == {"icarl": one["icarl"]} and one["icarl"].memory_size == 500  # method=... replaces the list
    single = ROOT / "configs/icarl_digits.yaml"  # a one-method config: method.key as the README says
    assert methods_of(Experiment.from_yaml(single, ["method.memory_size=500"]))["icarl"].memory_size == 500


def test_fewer_epochs_drop_the_milestones_past_them(caplog):
    raw = load_yaml(ROOT / "configs/cifar100_icarl.yaml")
    assert raw["train"]["epochs"] == 70 and raw["train"]["milestones"] == [49, 63]
    with caplog.at_level(logging.INFO, logger="cilearn"):
        one = Experiment.from_yaml(ROOT / "configs/cifar100_icarl.yaml", ["train.epochs=1"])
    assert all(cfg.train.epochs == 1 and cfg.train.milestones == [] for _, cfg in one.runs)
    assert "train.milestones: [49, 63] → [] (those after train.epochs=1 dropped" in caplog.text
    fifty = apply_overrides(raw, ["train.epochs=50"])
    assert fifty["train"]["milestones"] == [49]  # those that still fit stay where they were
    chosen = apply_overrides(raw, ["train.epochs=10", "train.milestones=[5]"])
    assert chosen["train"]["milestones"] == [5]
    assert apply_overrides(raw, ["train.lr=1.0"])["train"]["milestones"] == [49, 63]  # only a shorter training
    with pytest.raises(ConfigError, match="train.milestones"):  # a config file itself is still checked
        Experiment.from_dict({**yaml.safe_load(QUICKSTART.read_text()), "train": {"epochs": 2, "milestones": [3]}})


def test_every_readme_run_command_is_a_valid_experiment_on_the_config_it_names():
    """Each `cilearn run configs/... [--set ...] [--seeds ...]` written in the README and the docs parses, its
    overrides apply to the config it names, and every run's config passes its checks (nothing is trained)."""
    import re
    import shlex

    from cilearn.cli import build_parser

    texts = [(ROOT / "README.md").read_text(encoding="utf-8")] + [
        p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))]
    commands = set()
    for text in texts:
        for match in re.finditer(r"cilearn run (configs/[^\s`|#]+\.yaml(?:[^`|#\n]*))", text):
            commands.add(match.group(1).strip())
    assert len(commands) >= 20
    for command in sorted(commands):
        args = build_parser().parse_args(["run", *shlex.split(command)])
        overrides = list(args.overrides) + ([f"seeds={args.seeds}"] if args.seeds else [])
        experiment = Experiment.from_yaml(ROOT / args.config, overrides)
        assert experiment.runs, command
