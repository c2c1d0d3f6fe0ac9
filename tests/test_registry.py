"""One component registry: every kind (methods, models, datasets, streams, loggers) registered, looked up, listed
and parsed the same way, and the options of each parsed once into typed dataclasses."""

from __future__ import annotations

import dataclasses

import pytest

from cilearn.cli import main
from cilearn.config import parse_config
from cilearn.data.registry import DATASETS, DigitsOptions, register_dataset
from cilearn.errors import ConfigError
from cilearn.loggers import LOGGERS
from cilearn.methods import METHODS
from cilearn.models.registry import MODELS, CifarResNetOptions, MLPOptions, build_model
from cilearn.registry import Registry
from cilearn.schema import option
from cilearn.streams import STREAMS, PermutedOptions

RAW = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2}, "model": {"name": "mlp"},
       "method": {"name": "icarl", "memory_size": 20}}


def test_every_section_is_parsed_once_into_its_components_dataclass():
    cfg = parse_config({**RAW, "model": {"name": "resnet20", "options": {"width": 2}}})
    assert type(cfg.method) is METHODS.get("icarl").options and cfg.method.memory_size == 20
    assert isinstance(cfg.model.options, CifarResNetOptions) and cfg.model.options.width == 2.0
    assert cfg.model.options.shortcut == "B"  # defaults filled in
    assert isinstance(cfg.data.options, DigitsOptions) and cfg.data.options.test_fraction == 0.2
    stream = parse_config({**RAW, "scenario": {"type": "domain_incremental", "options": {"stream": "permuted"}}})
    assert isinstance(stream.scenario.options, PermutedOptions) and stream.scenario.options.num_tasks == 5
    # what config.yaml holds parses back to the same typed config
    assert parse_config(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_a_mistake_in_component_options_names_its_key_when_the_config_is_read():
    with pytest.raises(ConfigError, match=r"model.options: unknown key 'hiden'. Did you mean 'hidden'"):
        parse_config({**RAW, "model": {"name": "mlp", "options": {"hiden": [8]}}})
    with pytest.raises(ConfigError, match=r"model.options.depth: 21 is invalid for block='basic'"):
        parse_config({**RAW, "model": {"name": "cifar_resnet", "options": {"depth": 21}}})
    with pytest.raises(ConfigError, match=r"data.options.path: required key is missing"):
        parse_config({**RAW, "data": {"name": "clear"}})
    with pytest.raises(ConfigError, match=r"scenario.options.stream: unknown stream 'rotate'. Did you mean"):
        parse_config({**RAW, "scenario": {"type": "domain_incremental", "options": {"stream": "rotate"}}})
    with pytest.raises(ConfigError, match=r"output.loggers\[1\]: unknown logger 'tensorbord'"):
        parse_config({**RAW, "output": {"loggers": ["csv", "tensorbord"]}})


def test_build_model_takes_parsed_options_or_keywords_alike():
    parsed = build_model("mlp", 1, 8, MLPOptions(hidden=[16]))
    keywords = build_model("mlp", 1, 8, hidden=[16])
    assert parsed.feature_dim == keywords.feature_dim == 16
    with pytest.raises(TypeError, match="not both"):
        build_model("mlp", 1, 8, MLPOptions(), hidden=[16])


def test_a_registry_adds_looks_up_and_removes_components_the_same_way_for_every_kind():
    @dataclasses.dataclass
    class Options:
        size: int = option(3, min=1)

    registry = Registry("widget", "widget.name")
    registry.add("small", object(), Options, "a small widget")
    assert registry.parse_options("small", {"size": 5}, "widget.options") == Options(size=5)
    with pytest.raises(ConfigError, match=r"widget.options.size: 0 is below the minimum 1"):
        registry.parse_options("small", {"size": 0}, "widget.options")
    with pytest.raises(ConfigError, match=r"widget.name: unknown widget 'smal'. Did you mean 'small'"):
        registry.get("smal")
    registry.remove("small")
    assert "small" not in registry
    for kind in (METHODS, MODELS, DATASETS, STREAMS, LOGGERS):  # one class, one way
        assert isinstance(kind, Registry) and kind.components()


def test_a_dataset_registered_from_python_with_options_has_them_checked(request, tmp_path):
    from cilearn.data import load_dataset

    @dataclasses.dataclass
    class Options:
        keep: int = option(100, min=1)

    def small_digits(keep: int):
        splits = load_dataset("digits")
        return dataclasses.replace(splits, train=splits.train.subset(slice(0, keep)))
    small_digits.Options = Options
    register_dataset("small_digits", small_digits)
    request.addfinalizer(lambda: DATASETS.remove("small_digits"))
    cfg = parse_config({**RAW, "data": {"name": "small_digits", "options": {"keep": 50}}})
    assert cfg.data.options == Options(keep=50)
    assert len(load_dataset("small_digits", options=cfg.data.options).train) == 50
    with pytest.raises(ConfigError, match="data.options: unknown key 'kept'"):
        parse_config({**RAW, "data": {"name": "small_digits", "options": {"kept": 50}}})


def test_list_options_shows_the_options_of_models_datasets_streams_and_loggers(capsys):
    assert main(["list", "--options"]) == 0
    out = capsys.readouterr().out
    for title in ("datasets:", "models:", "methods:", "streams (scenario.options.stream):",
                  "loggers (output.loggers):"):
        assert f"\n{title}\n" in f"\n{out}"
    assert "    shortcut ('A' or 'B', default 'B')" in out  # a model's option
    assert "    test_path (a string (or null), default None)" in out  # a dataset's
    assert "    identity_first (true or false, default True)" in out  # a stream's
    assert "    output.wandb_project (a string, default 'cilearn')" in out  # a logger's settings
    assert "    memory_size (an integer, default 2000)" in out  # a method's, as before
