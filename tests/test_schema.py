"""The config's JSON Schema (``cilearn schema``) and the resolved config that lists every default."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from cilearn.cli import main
from cilearn.config import Config, expand_runs, json_schema, load_yaml, parse_config
from cilearn.methods import all_methods
from cilearn.models.registry import model_options
from cilearn.schema import to_dict
from cilearn.streams import STREAM_OPTIONS

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (test extra) checks configs against the schema")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
GOOD = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2}, "model": {"name": "mlp"},
        "method": {"name": "icarl", "memory_size": 200}, "train": {"epochs": 2, "lr": "1e-3"}}


@pytest.fixture(scope="module")
def validator():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, raw: dict) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(raw)]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_and_its_resolved_runs_validate(validator, path):
    raw = load_yaml(path)
    assert errors(validator, raw) == []
    for run in expand_runs(raw):
        resolved = parse_config(run).to_dict()
        assert errors(validator, resolved) == [], resolved


@pytest.mark.parametrize("change, where", [
    ({"train": {"epoch": 3}}, "train: Additional properties are not allowed ('epoch' was unexpected)"),
    ({"trian": {}}, ": Additional properties are not allowed ('trian' was unexpected)"),
    ({"train": {"epochs": 0}}, "train.epochs: 0 is less than the minimum of 1"),
    ({"train": {"epochs": "ten"}}, "train.epochs: 'ten' is not of type 'integer'"),
    ({"train": {"lr": "fast"}}, "train.lr: 'fast' does not match"),
    ({"train": {"scheduler": "cosin"}},
     "train.scheduler: 'cosin' is not one of ['multistep', 'cosine', 'warm_restarts', 'constant']"),
    ({"method": {"name": "icarl", "memory": 10}}, "method: "),
    ({"method": {"name": "lfw"}}, "method: "),
    ({"method": "lfw"}, "method: "),
    ({"seeds": [1, 1]}, "seeds: [1, 1] has non-unique elements"),
    ({"scenario": {"type": "class_incremental"}}, "scenario: 'classes_per_task' is a required property"),
    ({"scenario": {"type": "domain_incremental", "options": {"stream": "rotated", "angle": [0]}}}, "scenario.options"),
    ({"model": {"name": "mlp", "options": {"hiden": [8]}}}, "model.options: Additional properties"),
    ({"model": {"name": "resnet20", "options": {"shortcut": "C"}}}, "model.options.shortcut: 'C' is not one of"),
    ({"model": {"name": "resnet20", "options": {"hidden": [8]}}}, "model.options: Additional properties"),
    ({"data": {"name": "digits", "options": {"test_fraction": 2}}}, "data.options.test_fraction: 2 is greater"),
    ({"data": {"name": "image_folder"}}, "data: 'options' is a required property"),
    ({"output": {"loggers": ["csv", "tensorbord"]}}, "output.loggers.1: 'tensorbord' is not one of"),
])
def test_a_wrong_key_type_or_value_fails(validator, change, where):
    raw = {**copy.deepcopy(GOOD), **change}
    found = errors(validator, raw)
    assert found and any(message.startswith(where) for message in found), found


def test_the_schema_knows_each_method_option_with_its_default_and_help(validator):
    schema = json_schema()
    icarl = schema["$defs"]["method.icarl"]["properties"]
    assert icarl["name"] == {"const": "icarl", "description": all_methods()["icarl"].description}
    assert icarl["memory_size"]["default"] == 2000 and icarl["memory_size"]["minimum"] == 1
    assert icarl["memory_size"]["description"]
    assert set(icarl) == {f.name for f in dataclasses.fields(all_methods()["icarl"].Options)}
    assert errors(validator, {**GOOD, "method": "finetune"}) == []  # a bare name takes the defaults
    assert errors(validator, {**{k: v for k, v in GOOD.items() if k != "method"},
                              "methods": [{"name": "lwf"}, "joint"], "seeds": [0, 1]}) == []


def test_the_resolved_config_lists_every_default(tmp_path):
    """config.yaml of a run: every section key, every option of the method, the model and the stream."""
    cfg = parse_config({"data": {"name": "digits"}, "scenario": {"type": "domain_incremental",
                                                                 "options": {"stream": "permuted"}},
                        "model": {"name": "resnet20", "options": {"width": 2}}, "method": {"name": "icarl"}})
    resolved = cfg.to_dict()

    def keys(cls):
        return {f.name for f in dataclasses.fields(cls)}

    assert set(resolved) == keys(Config)
    for section in ("data", "model", "train", "scenario", "output"):
        assert set(resolved[section]) == keys(type(getattr(cfg, section))), section
    assert set(resolved["method"]) == keys(all_methods()["icarl"].Options)
    assert resolved["method"]["memory_size"] == 2000 and resolved["method"]["label"] is None
    defaults = to_dict(model_options("resnet20"))
    assert resolved["model"]["options"] == {**defaults, "width": 2}
    assert set(resolved["scenario"]["options"]) == keys(STREAM_OPTIONS["permuted"])
    assert parse_config(copy.deepcopy(resolved)).to_dict() == resolved  # resolving again changes nothing
    # ... and what a run writes is that: config.yaml of a real run
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "digits"}, "model": {"name": "mlp", "options": {"hidden": [8]}},
                                    "scenario": {"classes_per_task": 5, "num_tasks": 1}, "method": "finetune",
                                    "train": {"num_threads": 1, "progress": False}}))
    assert main(["-q", "run", str(path), "--out", str(tmp_path / "run")]) == 0
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert set(written["method"]) == keys(all_methods()["finetune"].Options)
    assert set(written["train"]) == keys(type(cfg.train))
    assert written["model"]["options"] == {"hidden": [8], "batchnorm": False, "init": "default"}  # every default


def test_schema_command(tmp_path, capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
    assert main(["schema", "--out", str(tmp_path / "cilearn.schema.json")]) == 0
    assert json.loads((tmp_path / "cilearn.schema.json").read_text()) == json_schema()
    assert main(["schema", "--out", str(tmp_path / "missing" / "x.json")]) == 2
    assert capsys.readouterr().err.startswith("error: --out: cannot write")
