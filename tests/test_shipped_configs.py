"""Every config shipped in configs/ (and configs/published/) passes validation and builds its model.

Cheap: no dataset is read; the image shape comes from the dataset's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from cilearn.config import load_runs
from cilearn.models import build_model

ROOT = Path(__file__).resolve().parents[1]
# configs/sweeps/ holds sweep files (a base config + a grid), checked by tests/test_sweep.py
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "sweeps" not in p.relative_to(ROOT / "configs").parts)
IMAGE_SHAPE = {"digits": (1, 8), "mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32),
               "cifar100": (3, 32), "cifar10_jpeg": (3, 32)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_config_is_valid(path: Path) -> None:
    _, runs = load_runs(path)
    assert runs
    for _, cfg in runs:
        shape = IMAGE_SHAPE.get(cfg.data.name)
        if shape is not None:
            net = build_model(cfg.model.name, *shape, cfg.model.options)
            assert net.feature_dim > 0


def test_icarl_study_configs_use_icarl_resnet() -> None:
    """The configs that reproduce the iCaRL study train iCaRL's ResNet-32 (option A, no last ReLU) and draw
    one class order per seed, as the study (and iCaRL's script) did."""
    study = sorted((ROOT / "configs").glob("cifar100_*.yaml")) + [ROOT / "configs/cifar10jpeg_5x2_compare.yaml"]
    assert len(study) >= 9
    for path in study:
        for _, cfg in load_runs(path)[1]:
            assert cfg.model.name == "resnet32"
            options = cfg.model.options  # resolved: the other options hold their defaults
            assert (options.shortcut, options.last_relu) == ("A", False), path.name
            if path.name.startswith("cifar100_"):  # the std over seeds covers class order and initialisation
                assert cfg.scenario.class_order == "seed" and cfg.scenario.class_order_seed is None, path.name
