"""Rebuild a run's model after a given task from its folder (config + checkpoint), without training.

The dataset is loaded again to rebuild the scenario (deterministic from the config and seed): it gives
the input shape, the normalisation statistics, the class names and the test images Grad-CAM looks at.
Scenarios are cached per process, so a report over many checkpoints loads each dataset once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..augment import BatchAugment, to_tensor_images
from ..config import Config, load_yaml, parse_config
from ..errors import CilearnError
from ..rundir import load_checkpoint
from ..scenarios import Scenario
from . import ReportError

_SCENARIOS: dict[str, Scenario] = {}


@dataclass
class ScenarioInfo:
    """What the model needs around it: the rebuilt scenario, the normaliser and the checkpoint."""

    scenario: Scenario
    normalizer: BatchAugment
    checkpoint: dict = field(repr=False)
    task_index: int = 0

    @property
    def image_size(self) -> int:
        return self.scenario.image_shape[0]

    @property
    def channels(self) -> int:
        return self.scenario.image_shape[2]

    @property
    def class_names(self) -> list[str]:
        return self.scenario.class_names

    def normalize(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC numpy images → normalised float NCHW tensor (as at evaluation time)."""
        return self.normalizer.normalize(to_tensor_images(images))

    def memory(self) -> "Memory | None":
        return find_memory(self.checkpoint.get("method") or {})


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ReportError(f"'{path}' is missing: '{run_dir}' is not a cilearn run directory.")
    return parse_config(load_yaml(path))


def rebuild_scenario(cfg: Config) -> Scenario:
    from ..data import load_dataset
    from ..scenarios import build_scenario

    key = json.dumps([cfg.data.name, cfg.data.root, cfg.data.options, vars(cfg.scenario), cfg.seed],
                     sort_keys=True, default=str)
    if key not in _SCENARIOS:
        splits = load_dataset(cfg.data.name, cfg.data.root, download=False, **cfg.data.options)
        _SCENARIOS.clear()  # keep one dataset in memory at a time
        _SCENARIOS[key] = build_scenario(cfg.scenario, splits, cfg.seed)
    return _SCENARIOS[key]


def load_model_from_checkpoint(checkpoint_path: str | Path, run_dir: str | Path | None = None
                               ) -> tuple[torch.nn.Module, Config, ScenarioInfo]:
    """Model, config and scenario info from a checkpoint inside a run directory (``RUN/checkpoints/x.pt``
    unless ``run_dir`` is given).  The model is on the CPU, in eval mode."""
    from ..models import build_model

    checkpoint_path = Path(checkpoint_path)
    run_dir = Path(run_dir) if run_dir is not None else checkpoint_path.resolve().parent.parent
    if not checkpoint_path.is_file():
        raise ReportError(f"checkpoint '{checkpoint_path}' does not exist (the run may have been made with "
                          f"output.save_checkpoints: false).")
    if not (run_dir / "config.yaml").is_file():
        raise ReportError(f"no config.yaml next to checkpoint '{checkpoint_path}' (looked in '{run_dir}'); "
                          f"give a checkpoint inside a run directory, e.g. RUN/checkpoints/task_00.pt.")
    cfg = read_config(run_dir)
    state = load_checkpoint(checkpoint_path)
    if not isinstance(state, dict) or "model" not in state or "head_sizes" not in state:
        raise ReportError(f"'{checkpoint_path}' is not a cilearn run checkpoint (no model/head_sizes).")
    scenario = rebuild_scenario(cfg)
    height, _, channels = scenario.image_shape
    model = build_model(cfg.model.name, channels, height, **cfg.model.options)
    for size in state["head_sizes"]:
        model.add_classes(int(size))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ReportError(f"'{checkpoint_path}' does not match the model in '{run_dir / 'config.yaml'}': "
                          f"{str(exc).splitlines()[0]}") from None
    model.eval()
    normalizer = BatchAugment.from_mode(cfg.train.augment, scenario.mean, scenario.std, channels)
    info = ScenarioInfo(scenario=scenario, normalizer=normalizer, checkpoint=state,
                        task_index=int(state.get("task", 0)))
    return model, cfg, info


def load_run_model(run_dir: str | Path, task_index: int) -> tuple[torch.nn.Module, Config, ScenarioInfo]:
    """The model of ``run_dir`` after task ``task_index`` (0-based), rebuilt from its config and
    ``checkpoints/task_XX.pt``: ``(model in eval mode on the CPU, config, scenario info)``."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"task_{task_index:02d}.pt"
    try:
        return load_model_from_checkpoint(path, run_dir)
    except ReportError:
        raise
    except CilearnError as exc:  # the dataset moved, a config no longer validates, ...
        raise ReportError(f"cannot rebuild the model of '{run_dir}' after task {task_index + 1}: {exc}") from None


@torch.inference_mode()
def compute_features(model: torch.nn.Module, info: ScenarioInfo, images: np.ndarray, batch: int = 256
                     ) -> np.ndarray:
    out = [model.features(info.normalize(images[i:i + batch])).float().numpy()
           for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, getattr(model, "feature_dim", 0)), np.float32)


# --- the exemplar memory in a method's state ---------------------------------------------------------
@dataclass
class Memory:
    images: np.ndarray  # uint8 NHWC
    labels: np.ndarray  # int64
    rank: np.ndarray    # position in the class's selection order (0 = most representative)
    source: str         # where in the method state it was found

    def __len__(self) -> int:
        return len(self.labels)


def _numpy(value) -> np.ndarray | None:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    return None


def _nhwc(images: np.ndarray) -> np.ndarray | None:
    if images.ndim == 3:
        return images[..., None]
    if images.ndim != 4:
        return None
    if images.shape[3] in (1, 3):
        return images
    if images.shape[1] in (1, 3):
        return images.transpose(0, 2, 3, 1)
    return None


def find_memory(state, path: str = "method") -> Memory | None:
    """The exemplar memory in a method's ``state_dict()``, or None.

    Looks for a mapping that holds a uint8 image array and an integer label array of the same length
    (iCaRL / replay: ``state["memory"] = {"images", "labels", "rank"}``), anywhere in the state.
    """
    if not isinstance(state, dict):
        return None
    images = _numpy(state.get("images"))
    labels = _numpy(state.get("labels"))
    if images is not None and labels is not None and images.dtype == np.uint8 and labels.ndim == 1 \
            and np.issubdtype(labels.dtype, np.integer) and len(images) == len(labels) and len(labels):
        nhwc = _nhwc(images)
        if nhwc is not None:
            rank = _numpy(state.get("rank"))
            if rank is None or rank.shape != labels.shape:
                rank = np.zeros(len(labels), dtype=np.int64)
                for c in np.unique(labels):
                    where = np.flatnonzero(labels == c)
                    rank[where] = np.arange(len(where))
            return Memory(np.ascontiguousarray(nhwc), labels.astype(np.int64), rank.astype(np.int64), path)
    for key, value in state.items():
        if isinstance(value, dict):
            found = find_memory(value, f"{path}.{key}")
            if found is not None:
                return found
    return None
