"""Config schema: unknown keys with a suggestion, types, ranges, ``--set`` overrides, and the expansion
of ``methods:`` / ``seeds:`` into runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import yaml

from cilearn.cli import build_parser
from cilearn.config import Config, apply_overrides, expand_runs, load_runs, load_yaml, parse_config, parse_override
from cilearn.data import load_dataset
from cilearn.errors import CilearnError, ConfigError
from cilearn.methods import METHODS
from cilearn.models import build_model
from cilearn.schema import build_section, did_you_mean, option

BASE = {"data": {"name": "digits"}, "model": {"name": "mlp"}, "method": {"name": "finetune"},
        "scenario": {"classes_per_task": 2}}


def with_changes(**sections) -> dict:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        for run in expand_runs(raw):
            parse_config(run)
    return str(info.value)


# --- schema -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Section:
    count: int = option(1, min=1, max=10)
    rate: float = option(0.5, min=0.0)
    flag: bool = option(False)
    label: str | None = option(None)
    mode: Literal["a", "b"] = option("a")
    sizes: list[int] = option(default_factory=list, min=1)
    order: str | list[int] = option("seed")
    extra: dict = option(default_factory=dict)


def test_defaults_and_valid_values():
    assert build_section(Section, None, "s") == Section()
    built = build_section(Section, {"count": 3.0, "rate": 2, "flag": True, "label": 7, "mode": "b",
                                    "sizes": [1, 2], "order": [2, 0, 1], "extra": {"k": 1}}, "s")
    assert built == Section(count=3, rate=2.0, flag=True, label="7", mode="b", sizes=[1, 2], order=[2, 0, 1],
                            extra={"k": 1})
    assert isinstance(built.count, int) and isinstance(built.rate, float)


def test_numbers_in_scientific_notation_without_a_dot():
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; a number field takes it as the number it means.
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"
    assert build_section(Section, {"rate": "1e-3"}, "s").rate == pytest.approx(0.001)
    assert build_section(Section, {"rate": "2E+2"}, "s").rate == 200.0
    with pytest.raises(ConfigError, match="expected a number, got '1e'"):
        build_section(Section, {"rate": "1e"}, "s")


@pytest.mark.parametrize("values, message", [
    ({"cuont": 2}, "s: unknown key 'cuont'. Did you mean 'count'? Valid keys: count, extra, flag, label, mode"),
    ({"zzz": 2}, "s: unknown key 'zzz'. Valid keys:"),
    ({"count": "3"}, "s.count: expected an integer, got '3'."),
    ({"count": 2.5}, "s.count: expected an integer, got 2.5."),
    ({"count": True}, "s.count: expected an integer, got True."),
    ({"count": float("nan")}, "s.count: expected an integer, got nan."),
    ({"count": float("inf")}, "s.count: expected an integer, got inf."),
    ({"count": 0}, "s.count: 0 is below the minimum 1."),
    ({"count": 11}, "s.count: 11 is above the maximum 10."),
    ({"rate": "fast"}, "s.rate: expected a number, got 'fast'."),
    ({"rate": -0.1}, "s.rate: -0.1 is below the minimum 0.0."),
    ({"rate": float("nan")}, "s.rate: expected a finite number, got nan."),
    ({"rate": float("-inf")}, "s.rate: expected a finite number, got -inf."),
    ({"rate": None}, "s.rate: expected a number, got None."),
    ({"flag": "true"}, "s.flag: expected true or false, got 'true'."),
    ({"flag": 1}, "s.flag: expected true or false, got 1."),
    ({"label": [1]}, "s.label: expected a string (or null), got [1]."),
    ({"mode": "c"}, "s.mode: unknown value 'c'. Choose one of: a, b."),
    ({"sizes": 3}, "s.sizes: expected a list of integers, got 3."),
    ({"sizes": [1, "x"]}, "s.sizes[1]: expected an integer, got 'x'."),
    ({"sizes": [2, 0]}, "s.sizes: 0 is below the minimum 1."),
    ({"order": {"a": 1}}, "s.order: expected a string or a list of integers, got {'a': 1}."),
    ({"extra": [1]}, "s.extra: expected a mapping, got [1]."),
])
def test_schema_errors_name_the_key(values, message):
    with pytest.raises(ConfigError) as info:
        build_section(Section, values, "s")
    assert str(info.value).startswith(message)


def test_section_must_be_a_mapping_and_required_keys():
    with pytest.raises(ConfigError, match=r"^s: expected a mapping of options, got \[1, 2\]\.$"):
        build_section(Section, [1, 2], "s")

    @dataclasses.dataclass
    class Needs:
        name: str = option()

    with pytest.raises(ConfigError, match=r"^s.name: required key is missing\.$"):
        build_section(Needs, {}, "s")


def test_did_you_mean():
    assert did_you_mean("epoch", ["epochs", "lr"]) == " Did you mean 'epochs'?"
    assert did_you_mean("qqq", ["epochs", "lr"]) == ""
    assert did_you_mean("ResNet32", ["resnet32", "mlp"]) == " Did you mean 'resnet32'?"  # case-insensitive


@pytest.mark.parametrize("call, where", [
    (lambda: expand_runs(with_changes(trian={})), "unknown top-level key 'trian'. Did you mean 'train'?"),
    (lambda: parse_config(with_changes(method={"name": "fintune"})), "Did you mean 'finetune'?"),
    (lambda: build_model("resnet_32", 3, 32), "Did you mean 'resnet32'?"),
    (lambda: build_model("mlp", 1, 8, hiden=[3]), "Did you mean 'hidden'?"),
    (lambda: load_dataset("digitz"), "Did you mean 'digits'?"),
    (lambda: load_dataset("digits", sed=1), "Did you mean 'seed'?"),
    (lambda: build_parser().parse_args(["lst"]), "Did you mean 'list'?"),
])
def test_one_suggestion_format_everywhere(call, where):
    """Config keys and values, methods, models and their options, datasets and their options, commands:
    every 'unknown' message suggests the closest name in the same words (errors.did_you_mean)."""
    with pytest.raises(CilearnError) as info:
        call()
    assert where in str(info.value)


# --- whole configs ------------------------------------------------------------------------------------
def test_parse_config_defaults_and_round_trip():
    cfg = parse_config(expand_runs(dict(BASE))[0])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 1 and cfg.train.checkpoint_every == 0 and cfg.seed == 0
    assert cfg.method.name == "finetune"  # parsed into the method's own options, every default listed
    assert type(cfg.method) is METHODS.get("finetune").options
    assert set(cfg.to_dict()["method"]) == {f.name for f in dataclasses.fields(METHODS.get("finetune").options)}
    assert cfg.scenario.classes_per_task == 2
    again = parse_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))  # what config.yaml holds
    assert again == cfg


@pytest.mark.parametrize("raw, message", [
    (with_changes(trian={"epochs": 1}), "unknown top-level key 'trian'. Did you mean 'train'?"),
    (with_changes(train={"epoch": 1}), "train: unknown key 'epoch'. Did you mean 'epochs'?"),
    (with_changes(train={"lr": "0.1x"}), "train.lr: expected a number, got '0.1x'."),
    (with_changes(train={"momentum": 2}), "train.momentum: 2.0 is above the maximum 1.0."),
    (with_changes(train={"milestones": [3, 2], "epochs": 5}), "train.milestones: [3, 2] must be increasing"),
    (with_changes(train={"milestones": [6], "epochs": 5}), "at most train.epochs (5)"),
    (with_changes(scenario={"classes_per_task": None}), "scenario.classes_per_task: required"),
    (with_changes(scenario={"type": "class_incremantal"}), "Did you mean 'class_incremental'?"),
    (with_changes(method={"name": "finetune", "lables": "x"}), "method: unknown key 'lables'. Did you mean 'label'?"),
    (with_changes(method={"name": "fintune"}), "unknown method 'fintune'. Did you mean 'finetune'?"),
    ({**BASE, "method": {"label": "x"}}, "method: expected a mapping with a 'name'"),
    (with_changes(method=None), "method: required section is missing"),
    (with_changes(model=None), "model: required section is missing"),
    (with_changes(seed=-1), "seed: expected a non-negative integer, got -1."),
    (with_changes(seed=True), "seed: expected a non-negative integer, got True."),
    (with_changes(seed="1"), "seed: expected a non-negative integer, got '1'."),
    (with_changes(seeds=[0, 0]), "seeds: [0, 0] repeats a seed."),
    (with_changes(seeds=[]), "seeds: expected a non-empty list"),
    (with_changes(seeds=3), "seeds: expected a non-empty list of non-negative integers, got 3."),
    ({**{k: v for k, v in BASE.items() if k != "method"}, "methods": []}, "'methods' must be a non-empty list"),
    ({**{k: v for k, v in BASE.items() if k != "method"}, "methods": "joint"}, "'methods' must be a non-empty list"),
    (with_changes(methods=[{"name": "joint"}]), "give either 'method' (one method) or 'methods'"),
    ({**{k: v for k, v in BASE.items() if k != "method"}, "methods": ["joint", {"name": "joint"}]},
     "two entries would share a run folder; give each a distinct 'label'"),
])
def test_config_errors(raw, message):
    assert message in error(raw)


# --- methods: and seeds: ------------------------------------------------------------------------------
def test_methods_and_seeds_expand_into_runs():
    raw = {k: v for k, v in BASE.items() if k != "method"}
    raw.update(methods=["finetune", {"name": "joint", "label": "upper"}], seeds=[0, 3], train={"epochs": 2})
    runs = expand_runs(raw)
    assert [(r["method"], r["seed"]) for r in runs] == [
        ({"name": "finetune"}, 0), ({"name": "finetune"}, 3),
        ({"name": "joint", "label": "upper"}, 0), ({"name": "joint", "label": "upper"}, 3)]
    assert all("methods" not in r and "seeds" not in r and r["train"] == {"epochs": 2} for r in runs)
    runs[0]["train"]["epochs"] = 9  # each run owns its copy
    assert runs[1]["train"]["epochs"] == 2 and raw["train"]["epochs"] == 2


def test_load_runs_labels_and_name(tmp_path: Path):
    raw = {k: v for k, v in BASE.items() if k != "method"}
    raw.update(methods=["finetune", {"name": "joint", "label": "upper"}])
    path = tmp_path / "my-exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    name, runs = load_runs(path)
    assert name == "my-exp" and [label for label, _ in runs] == ["finetune", "upper"]
    name, runs = load_runs(path, ["seeds=[1, 2]", "train.epochs=3"])
    assert [label for label, _ in runs] == ["finetune/seed1", "finetune/seed2", "upper/seed1", "upper/seed2"]
    assert all(cfg.train.epochs == 3 for _, cfg in runs) and [c.seed for _, c in runs] == [1, 2, 1, 2]
    _, runs = load_runs(path, ["method=joint"])  # --set method=... replaces the methods list
    assert [label for label, _ in runs] == ["joint"]


# --- --set --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, parts, value", [
    ("train.epochs=1", ["train", "epochs"], 1),
    ("a.b=c", ["a", "b"], "c"),
    ("train.lr=0.5", ["train", "lr"], 0.5),
    ("train.lr=1e-3", ["train", "lr"], "1e-3"),  # a string until the schema reads it as a number
    ("train.milestones=[2, 4]", ["train", "milestones"], [2, 4]),
    ("method={name: joint, label: j}", ["method"], {"name": "joint", "label": "j"}),
    ("label=", ["label"], ""),
    ("name=a=b", ["name"], "a=b"),
    ("output.save_features=false", ["output", "save_features"], False),
    (" train.epochs =2", ["train", "epochs"], 2),
])
def test_parse_override(text, parts, value):
    assert parse_override(text) == (parts, value)


@pytest.mark.parametrize("text, message", [
    ("train.epochs", "--set 'train.epochs': expected KEY=VALUE, e.g. --set train.epochs=1."),
    ("=3", "--set '=3': the key must be dotted names"),
    ("train..lr=3", "--set 'train..lr=3': the key must be dotted names"),
    ("train.=3", "the key must be dotted names"),
    ("train.lr=[1,", "--set 'train.lr=[1,': cannot parse the value '[1,' as YAML."),
])
def test_parse_override_errors(text, message):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert message in str(info.value)


def test_apply_overrides():
    raw = {"train": {"epochs": 5}, "data": {"name": "digits"}}
    new = apply_overrides(raw, ["train.epochs=1", "data.options.test_fraction=0.3", "seed=4"])
    assert new == {"train": {"epochs": 1}, "data": {"name": "digits", "options": {"test_fraction": 0.3}}, "seed": 4}
    assert raw == {"train": {"epochs": 5}, "data": {"name": "digits"}}  # the input is not changed
    with pytest.raises(ConfigError, match=r"'train.epochs' is not a section"):
        apply_overrides(raw, ["train.epochs.x=1"])
    assert apply_overrides({"seeds": [1, 2]}, ["seed=3"]) == {"seed": 3}


def test_override_types_are_checked_like_the_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    _, [(_, cfg)] = load_runs(path, ["train.lr=1e-3", "train.epochs=2"])
    assert cfg.train.lr == pytest.approx(0.001) and cfg.train.epochs == 2
    with pytest.raises(ConfigError, match=r"^train.epochs: expected an integer, got 'two'\.$"):
        load_runs(path, ["train.epochs=two"])
    with pytest.raises(ConfigError, match=r"train: unknown key 'lrr'\. Did you mean 'lr'\?"):
        load_runs(path, ["train.lrr=0.1"])


# --- the YAML file ------------------------------------------------------------------------------------
def test_load_yaml(tmp_path: Path):
    path = tmp_path / "exp.yaml"
    path.write_text("data: {name: digits}\n")
    assert load_yaml(path) == {"data": {"name": "digits"}, "name": "exp"}
    for empty in ("", "# only a comment\n"):
        path.write_text(empty)
        with pytest.raises(ConfigError, match="is empty"):
            load_yaml(path)
    path.write_text("base: &b {epochs: 2}\ntrain:\n  <<: *b\n  lr: 0.1\n")  # merge keys still work
    assert load_yaml(path)["train"] == {"epochs": 2, "lr": 0.1}
    for text, message in [
        ("train: {epochs: 1, epochs: 2}\n", "line 1, column 20: the key 'epochs' appears twice"),
        ("a: [1\n", "invalid YAML at line 2"),
        ("just a string\n", "the top level must be a mapping"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_yaml(path)
        assert message in str(info.value) and str(path) in str(info.value)
