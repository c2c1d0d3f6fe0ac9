"""Builders shared by the tests: tiny runs on the bundled digits, and a plugin package "installed" for a subprocess.

The suite's fixtures (one CPU thread for every test module) live in conftest.py; pytest puts this folder on
``sys.path`` for it, so test modules import these builders as ``from helpers import ...``.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import textwrap
from pathlib import Path

from cilearn.config import parse_config
from cilearn.engine.runner import Run

# What the tiny digits runs have in common. Every other setting comes from the caller, so that a test's config
# says what it runs; a default added here would change every test that builds on it.
DIGITS = {"data": {"name": "digits"},
          "scenario": {"classes_per_task": 2, "class_order": "sorted"},
          "model": {"name": "mlp", "options": {"hidden": [32]}},
          "method": {"name": "finetune"},
          "train": {"batch_size": 32, "lr": 0.05, "progress": False}}


def method_on(scenario, name: str, **options):
    """Method ``name`` with ``options`` on a fresh MLP (one hidden layer of 16, seeded) over ``scenario``'s images, on
    the CPU, as a run would build it, for the hook-level tests; the head is grown by the test."""
    import torch

    from cilearn.augment import BatchAugment
    from cilearn.engine.evaluate import Inference
    from cilearn.methods import MethodContext, method_class, method_options
    from cilearn.models import build_model

    torch.manual_seed(0)
    height, _, channels = scenario.image_shape
    model = build_model("mlp", channels, height, hidden=[16])
    augment = BatchAugment(scenario.mean, scenario.std)
    device = torch.device("cpu")
    context = MethodContext(scenario=scenario, device=device, seed=0,
                            infer=Inference(model, augment, device, 256), augment=augment)
    return method_class(name)(method_options({"name": name, **options}), model, context)


def load_script(relative: str):
    """A script of the repository (``benchmarks/…``, ``docs/…``) imported as a module, by its path."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, nested dicts key by key. A section that names another component
    (a different ``name``: another model, method or dataset) replaces the base's section, whose options would
    not apply to it."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        current = out.get(key)
        if isinstance(value, dict) and isinstance(current, dict) and \
                value.get("name", current.get("name")) == current.get("name"):
            out[key] = merged(current, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def digits_config(**changes) -> dict:
    """A raw config (as read from YAML) of a tiny run on digits: ``DIGITS`` with each keyword's section merged in,
    e.g. ``digits_config(model={"options": {"hidden": [16]}}, train={"epochs": 2}, seed=1)``."""
    return merged(DIGITS, changes)


def make_run(tmp_path, method: dict, num_tasks: int = 5, epochs: int = 1, **changes) -> Run:
    """A set-up (not yet executed) run of ``method`` on digits, 2 classes per task, a 32-unit MLP, a constant lr,
    no evaluation during a task, no checkpoints or feature files; ``changes`` as in digits_config."""
    raw = digits_config(scenario={"num_tasks": num_tasks}, method=method,
                        train={"epochs": epochs, "scheduler": "constant", "eval_every": 0},
                        output={"save_checkpoints": False, "save_features": False}, seed=0)
    run = Run(parse_config(merged(raw, changes)), tmp_path)
    run.setup()
    return run


def installed_plugin(tmp_path, package: str, source: str, entry_points: str) -> dict:
    """A package "installed" into ``tmp_path/site`` as pip would leave it (the module and a dist-info folder
    with ``entry_points.txt``); returns the environment of a subprocess that sees it beside cilearn."""
    site = tmp_path / "site"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    dist = site / f"{package}-0.1.dist-info"
    dist.mkdir()
    name = package.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    root = Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{root}", "OMP_NUM_THREADS": "1"}
