"""cilearn: class-incremental learning for image classification with one shared training loop.

The Python API (see the README's "Python API")::

    import cilearn

    result = cilearn.Experiment.from_yaml("configs/quickstart.yaml").run()
    print(result.table())
    scenario = cilearn.scenarios.create("digits", classes_per_task=2)

The names below are imported on first use: ``import cilearn`` stays cheap (no torch until it is needed).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"  # the one place: pyproject.toml reads it (tool.setuptools.dynamic)

# name -> module that defines it
_LAZY = {
    "Experiment": "cilearn.experiment",
    "ExperimentResult": "cilearn.results",
    "RunResult": "cilearn.results",
    "load_result": "cilearn.results",
    "make_report": "cilearn.report.build",
    "ReportOptions": "cilearn.report.build",
    "setup_logging": "cilearn.log",
    # the errors cilearn raises for input a user can fix (see cilearn.errors)
    "CilearnError": "cilearn.errors",
    "ConfigError": "cilearn.errors",
    "DataError": "cilearn.errors",
    "CheckpointError": "cilearn.errors",
    "TrainingDiverged": "cilearn.errors",
}
_SUBMODULES = ("data", "scenarios", "methods", "models", "metrics")

__all__ = [*_LAZY, *_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"cilearn.{name}")
    raise AttributeError(f"module 'cilearn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
