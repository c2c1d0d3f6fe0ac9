"""A run's model after a given task, rebuilt from its folder (config + checkpoint), without training.

Everything around the model comes from what the run saved (:class:`~cilearn.rundir.RunDir`): the
normalisation, image shape and class names from ``run.json``, the exemplars (with their features) from
``exemplars/task_XX.npz``, Grad-CAM's test images from ``samples.npz`` — the dataset is never reloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..augment import BatchAugment, to_tensor_images
from ..config import Config, load_yaml, parse_stored_config
from ..engine.assembly import model_with_head
from ..engine.checkpoints import load_checkpoint
from ..errors import CilearnError
from ..rundir import RunDir
from . import ReportError


@dataclass
class RunInfo:
    """What the model needs around it, from the run's ``run.json``: the normaliser and the class names."""

    info: dict = field(repr=False)
    normalizer: BatchAugment = field(repr=False)
    task_index: int = 0

    @property
    def image_size(self) -> int:
        return int(self.info["image_shape"][0])

    @property
    def channels(self) -> int:
        return int(self.info["image_shape"][2])

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    def normalize(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC numpy images → normalised float NCHW tensor (as at evaluation time)."""
        return self.normalizer.normalize(to_tensor_images(images))


def read_config(run_dir: Path) -> Config:
    path = RunDir(run_dir).config
    if not path.is_file():
        raise ReportError(f"'{path}' is missing: '{run_dir}' is not a cilearn run directory.")
    return parse_stored_config(load_yaml(path))


def read_run_info(run_dir: Path) -> dict:
    info = RunDir(run_dir).read_info()
    if info is None:
        raise ReportError(f"'{RunDir(run_dir).info}' is missing or unreadable; it is written when a run starts "
                          f"(runs of cilearn 0.1 lack it: run them again to report them).")
    return info


def load_model_from_checkpoint(checkpoint_path: str | Path, run_dir: str | Path | None = None
                               ) -> tuple[torch.nn.Module, Config, RunInfo]:
    """Model, config and run info from a checkpoint inside a run directory (``RUN/checkpoints/x.pt``
    unless ``run_dir`` is given).  The model is on the CPU, in eval mode."""
    checkpoint_path = Path(checkpoint_path)
    files = RunDir(run_dir) if run_dir is not None else RunDir.of_checkpoint(checkpoint_path)
    run_dir = files.path
    if not checkpoint_path.is_file():
        raise ReportError(f"checkpoint '{checkpoint_path}' does not exist (the run may have been made with "
                          f"output.save_checkpoints: false).")
    if not files.config.is_file():
        raise ReportError(f"no config.yaml next to checkpoint '{checkpoint_path}' (looked in '{run_dir}'); "
                          f"give a checkpoint inside a run directory, e.g. RUN/checkpoints/task_00.pt.")
    cfg = read_config(run_dir)
    info = read_run_info(run_dir)
    state = load_checkpoint(checkpoint_path)
    if not isinstance(state, dict) or "model" not in state or "head_sizes" not in state:
        raise ReportError(f"'{checkpoint_path}' is not a cilearn run checkpoint (no model/head_sizes).")
    height, _, channels = info["image_shape"]
    model = model_with_head(cfg, channels, height)  # the head the run's method trained (cosine, ...)
    for size in state["head_sizes"]:
        model.add_classes(int(size))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ReportError(f"'{checkpoint_path}' does not match the model in '{files.config}': "
                          f"{str(exc).splitlines()[0]}") from None
    model.eval()
    normalizer = BatchAugment.from_mode(info.get("augment", cfg.train.augment), info["mean"], info["std"], channels)
    return model, cfg, RunInfo(info=info, normalizer=normalizer, task_index=int(state.get("task", 0)))


def load_run_model(run_dir: str | Path, task_index: int) -> tuple[torch.nn.Module, Config, RunInfo]:
    """The model of ``run_dir`` after task ``task_index`` (0-based), rebuilt from its config and
    ``checkpoints/task_XX.pt``: ``(model in eval mode on the CPU, config, run info)``."""
    run_dir = Path(run_dir)
    try:
        return load_model_from_checkpoint(RunDir(run_dir).task_checkpoint(task_index), run_dir)
    except ReportError:
        raise
    except CilearnError as exc:  # the dataset moved, a config no longer validates, ...
        raise ReportError(f"cannot rebuild the model of '{run_dir}' after task {task_index + 1}: {exc}") from None


@torch.inference_mode()
def compute_features(model: torch.nn.Module, info: RunInfo, images: np.ndarray, batch: int = 256
                     ) -> np.ndarray:
    out = [model.features(info.normalize(images[i:i + batch])).float().numpy()
           for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, getattr(model, "feature_dim", 0)), np.float32)



# --- the stored samples a run saved after a task ------------------------------------------------------
@dataclass
class Memory:
    images: np.ndarray    # uint8 NHWC
    labels: np.ndarray    # int64
    rank: np.ndarray      # position in the class's selection order (0 = most representative)
    features: np.ndarray | None = None  # under the model after the same task
    kind: np.ndarray | None = None      # per sample: what it is (e.g. collage, synthetic), when the method says

    def __len__(self) -> int:
        return len(self.labels)

    def kinds(self) -> np.ndarray:
        """What every sample is (strings; "real" where the method did not say)."""
        if self.kind is None:
            return np.full(len(self.labels), "real")
        return np.asarray(self.kind).astype(str)

    def description(self) -> str:
        """What the samples are, for titles: "" for real images only, else e.g. "collages"."""
        names = {"real": "real images", "collage": "collages", "synthetic": "synthetic images"}
        order = list(names)
        present = sorted(set(self.kinds().tolist()), key=lambda k: (order.index(k) if k in order else len(order), k))
        return "" if present in ([], ["real"]) else " and ".join(names.get(k, k) for k in present)


def read_memory(run_dir: Path, task: int) -> Memory | None:
    """The exemplars the run saved after ``task`` (``exemplars/task_XX.npz``), or None."""
    data = RunDir(run_dir).read_npz(RunDir(run_dir).exemplars(task))
    if data is None or "images" not in data or "labels" not in data:
        return None
    labels = data["labels"].astype(np.int64)
    rank = data.get("rank")
    if rank is None:
        rank = np.zeros(len(labels), dtype=np.int64)
    return Memory(data["images"], labels, rank.astype(np.int64), data.get("features"), data.get("kind"))
