"""Domain- (time-) incremental streams: a fixed label space whose input distribution changes.

``stream_experiences(options, splits, seed)`` gives the experiences of a ``domain_incremental``
:class:`~cilearn.scenarios.Scenario` (assembled by :func:`cilearn.scenarios.build_scenario`) from ``scenario.options``:

- ``{stream: rotated, num_tasks: 5, angles: [0, 36, ...]}``: experience ``t`` is the whole dataset
  (train and test) rotated by ``angles[t]`` degrees (bilinear, zero fill);
- ``{stream: permuted, num_tasks: 5}``: experience ``t`` applies one fixed pixel permutation, drawn
  from the run seed, to every image (experience 0 keeps the original images unless
  ``identity_first: false``);
- ``{stream: superclass}``: CIFAR-100's 20 coarse labels are the label space; experience ``t`` brings
  the ``t``-th fine class of every superclass (fine classes in label order, or shuffled per run seed
  with ``fine_order: seed``);
- ``{stream: buckets}``: one experience per bucket (year) of a dataset that carries bucket indices,
  e.g. the ``clear`` dataset (CLEAR-10-style folders, see :mod:`cilearn.data.clear`);
- ``{stream: split, classes_per_task: 2, class_order: vandeven}``: experience ``t`` brings the classes at
  positions ``t·k .. t·k + k − 1`` of the class order, each labelled by its position within the experience
  (van de Ven & Tolias's Domain-IL split MNIST: "first or second digit of the task?", k labels in all).

Rotated and permuted streams accept ``train_samples``: each experience then trains on its own seeded
random subset of that many training images (disjoint while the data lasts), to keep runs small.

Every task has ``seen_classes`` = all labels; the first task's ``new_classes`` are all labels (the
head is built once) and later tasks add none.  The evaluator scores every experience's test set after
every experience, so ``accuracy_matrix`` is full and ``average_accuracy_all_experiences`` is the mean
of each row.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .class_orders import resolve_class_order
from .data import DatasetSplits, ImageData
from .errors import ConfigError
from .registry import Registry
from .schema import option


@dataclasses.dataclass
class RotatedOptions:
    stream: str = option(help="rotated")
    num_tasks: int = option(5, min=1, help="number of experiences (ignored when angles are given)")
    angles: list[float] | None = option(None, help="rotation of each experience in degrees "
                                                   "(default: 0, 180/n, 2·180/n, ...)")
    train_samples: int | None = option(None, min=1, help="training images per experience (default: all)")


@dataclasses.dataclass
class PermutedOptions:
    stream: str = option(help="permuted")
    num_tasks: int = option(5, min=1)
    identity_first: bool = option(True, help="experience 0 keeps the original pixel order")
    train_samples: int | None = option(None, min=1, help="training images per experience (default: all)")


@dataclasses.dataclass
class SuperclassOptions:
    stream: str = option(help="superclass")
    num_tasks: int | None = option(None, min=1, help="experiences (default: fine classes per superclass)")
    fine_order: Literal["sorted", "seed"] = option("sorted", help="order of the fine classes in a superclass")


@dataclasses.dataclass
class BucketsOptions:
    stream: str = option(help="buckets")
    num_tasks: int | None = option(None, min=1, help="use only the first buckets")




@dataclasses.dataclass
class SplitOptions:
    stream: str = option(help="split")
    classes_per_task: int = option(2, min=1, help="classes per experience = the labels of the stream")
    class_order: str | list[int] = option("sorted", help="order of the dataset's classes, as scenario.class_order "
                                                        "('vandeven': van de Ven & Tolias's order for the run seed)")
    num_tasks: int | None = option(None, min=1, help="experiences (default: all the order fills)")


# --- image transforms ---------------------------------------------------------------------------------
def rotate_images(images: np.ndarray, angle: float, chunk: int = 8192) -> np.ndarray:
    """Rotate uint8 NHWC images by ``angle`` degrees counter-clockwise as displayed (like PIL's
    ``Image.rotate``; 90° equals ``np.rot90``) about their centre; bilinear, zeros outside."""
    if angle % 360 == 0:
        return images.copy()
    n, h, w, c = images.shape
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid maps output (x right, y down) coordinates to input ones: the inverse rotation.
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)[None]
    out = np.empty_like(images)
    for start in range(0, n, chunk):
        batch = torch.from_numpy(images[start:start + chunk]).permute(0, 3, 1, 2).float()
        grid = F.affine_grid(matrix.expand(len(batch), 2, 3), list(batch.shape), align_corners=False)
        rotated = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[start:start + chunk] = rotated.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def permute_pixels(images: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Apply one permutation of the H·W pixel positions to every image (all channels alike)."""
    n, h, w, c = images.shape
    return np.ascontiguousarray(images.reshape(n, h * w, c)[:, permutation].reshape(n, h, w, c))


def pixel_permutations(num_tasks: int, num_pixels: int, seed: int, identity_first: bool = True) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    perms = [rng.permutation(num_pixels) for _ in range(num_tasks)]
    if identity_first:
        perms[0] = np.arange(num_pixels)
    return perms


def _train_subsets(n: int, num_tasks: int, size: int | None, seed: int) -> list[np.ndarray | None]:
    """Per-experience training subsets: disjoint slices of one seeded permutation while the data lasts,
    then fresh permutations."""
    if size is None:
        return [None] * num_tasks
    size = min(size, n)
    rng = np.random.RandomState(seed + 7919)
    order, subsets = rng.permutation(n), []
    for t in range(num_tasks):
        if (t + 1) * size > len(order):
            order = np.concatenate([order, rng.permutation(n)])
        subsets.append(np.sort(order[t * size:(t + 1) * size]))
    return subsets


# --- the streams --------------------------------------------------------------------------------------
def _transformed_stream(splits: DatasetSplits, transforms: list, names: list[str],
                        train_samples: int | None, seed: int) -> list[tuple[ImageData, ImageData, str]]:
    subsets = _train_subsets(len(splits.train), len(transforms), train_samples, seed)
    out = []
    for transform, name, subset in zip(transforms, names, subsets):
        train = splits.train if subset is None else splits.train.subset(subset)
        out.append((ImageData(transform(train.images), train.labels, splits.class_names),
                    ImageData(transform(splits.test.images), splits.test.labels, splits.class_names), name))
    return out


def _rotated(opts: RotatedOptions, splits: DatasetSplits, seed: int):
    angles = opts.angles if opts.angles is not None else [i * 180.0 / opts.num_tasks for i in range(opts.num_tasks)]
    if not angles:
        raise ConfigError("scenario.options.angles: give at least one angle.")
    return _transformed_stream(splits, [lambda x, a=a: rotate_images(x, a) for a in angles],
                               [f"rotated {a:g}°" for a in angles], opts.train_samples, seed)


def _permuted(opts: PermutedOptions, splits: DatasetSplits, seed: int):
    _, h, w, _ = splits.train.images.shape
    perms = pixel_permutations(opts.num_tasks, h * w, seed, opts.identity_first)
    names = [f"permutation {t}" + (" (identity)" if t == 0 and opts.identity_first else "")
             for t in range(opts.num_tasks)]
    return _transformed_stream(splits, [lambda x, p=p: permute_pixels(x, p) for p in perms], names,
                               opts.train_samples, seed)


def _superclass(opts: SuperclassOptions, splits: DatasetSplits, seed: int):
    if splits.train_coarse_labels is None or splits.test_coarse_labels is None or not splits.coarse_class_names:
        raise ConfigError(f"scenario.options.stream: 'superclass' needs a dataset with superclass (coarse) labels, "
                          f"such as cifar100; {splits.display_name} has none.")
    coarse_names = list(splits.coarse_class_names)
    fine_train, coarse_train = splits.train.labels, np.asarray(splits.train_coarse_labels, dtype=np.int64)
    fine_of = {}  # superclass -> its fine classes in stream order
    for c in range(len(coarse_names)):
        fine = sorted(int(f) for f in np.unique(fine_train[coarse_train == c]))
        if opts.fine_order == "seed":
            fine = [fine[i] for i in np.random.RandomState(seed + c).permutation(len(fine))]
        fine_of[c] = fine
    available = min(len(v) for v in fine_of.values())
    num_tasks = opts.num_tasks or available
    if num_tasks > available or available == 0:
        short = min(fine_of, key=lambda c: len(fine_of[c]))
        raise ConfigError(f"scenario.options.num_tasks: {num_tasks} experiences need {num_tasks} fine classes in "
                          f"every superclass, but '{coarse_names[short]}' has {len(fine_of[short])}.")
    fine_task = np.full(splits.num_classes, -1, dtype=np.int64)  # experience of each fine class
    for c, fine in fine_of.items():
        for t, f in enumerate(fine[:num_tasks]):
            fine_task[f] = t
    out = []
    for t in range(num_tasks):
        parts = []
        for data, coarse in ((splits.train, coarse_train), (splits.test, splits.test_coarse_labels)):
            keep = fine_task[data.labels] == t
            parts.append(ImageData(data.images[keep], np.asarray(coarse, dtype=np.int64)[keep], coarse_names))
        fine_names = ", ".join(splits.class_names[fine_of[c][t]] for c in range(min(3, len(coarse_names))))
        out.append((parts[0], parts[1], f"fine classes #{t} ({fine_names}, ...)"))
    return out, coarse_names


def _buckets(opts: BucketsOptions, splits: DatasetSplits, seed: int):
    train_buckets = getattr(splits, "train_buckets", None)
    test_buckets = getattr(splits, "test_buckets", None)
    names = getattr(splits, "bucket_names", None)
    if train_buckets is None or test_buckets is None or not names:
        raise ConfigError(f"scenario.options.stream: 'buckets' needs a dataset with buckets (e.g. data.name: clear "
                          f"with a folder of <bucket>/<class>/ images); {splits.display_name} has none.")
    count = len(names) if opts.num_tasks is None else opts.num_tasks
    if count > len(names):
        raise ConfigError(f"scenario.options.num_tasks: {count} is more than the {len(names)} buckets.")
    return [(splits.train.subset(train_buckets == b), splits.test.subset(test_buckets == b), f"bucket {names[b]}")
            for b in range(count)]


def _split_by_position(opts: SplitOptions, splits: DatasetSplits, seed: int):
    k = opts.classes_per_task
    order = resolve_class_order(opts.class_order, splits.num_classes, seed)
    available = len(order) // k
    count = available if opts.num_tasks is None else opts.num_tasks
    if count > available or available == 0:
        need = k * max(count, 1)
        raise ConfigError(f"scenario.options: {max(count, 1)} experience(s) of {k} classes need {need} classes; "
                          f"{splits.display_name} has {len(order)}. Lower classes_per_task or num_tasks.")
    position = np.full(splits.num_classes, -1, dtype=np.int64)  # each class's place within its experience
    experience = np.full(splits.num_classes, -1, dtype=np.int64)
    for i, c in enumerate(order[: count * k]):
        position[c], experience[c] = i % k, i // k
    names = [f"class {i + 1} of the experience" for i in range(k)]
    owners = [experience[data.labels] for data in (splits.train, splits.test)]  # each sample's experience, once
    out = []
    for t in range(count):
        parts = [ImageData(data.images[owner == t], position[data.labels[owner == t]], names)
                 for data, owner in zip((splits.train, splits.test), owners)]
        classes = ", ".join(splits.class_names[c] for c in order[t * k:(t + 1) * k])
        out.append((parts[0], parts[1], f"classes {classes}"))
    return out, names


# Each stream: (options, splits, seed) -> ([(train, test, name) per experience], label names)
STREAMS = Registry("stream", "scenario.options.stream")
STREAMS.add("rotated", lambda o, splits, seed: (_rotated(o, splits, seed), list(splits.class_names)), RotatedOptions,
            "every experience the whole dataset rotated by its angle (bilinear, zero fill)")
STREAMS.add("permuted", lambda o, splits, seed: (_permuted(o, splits, seed), list(splits.class_names)),
            PermutedOptions, "every experience one fixed pixel permutation, drawn from the run seed")
STREAMS.add("superclass", _superclass, SuperclassOptions,
            "CIFAR-100's 20 superclasses as labels; experience t brings the t-th fine class of each")
STREAMS.add("buckets", lambda o, splits, seed: (_buckets(o, splits, seed), list(splits.class_names)),
            BucketsOptions, "one experience per time bucket of a dataset with buckets (e.g. clear)")
STREAMS.add("split", _split_by_position, SplitOptions,
            "a class split whose labels are each class's position within its experience (Domain-IL split MNIST)")
STREAM_OPTIONS = {name: component.options for name, component in STREAMS.components().items()}


def stream_options(values: dict | None) -> Any:
    """``scenario.options`` of a domain-incremental scenario parsed into its stream's options dataclass."""
    values = dict(values or {})
    kind = values.get("stream")
    if kind is None:
        raise ConfigError(f"scenario.options.stream: required for domain_incremental scenarios; one of "
                          f"{', '.join(STREAMS.components())} (e.g. options: {{stream: rotated, num_tasks: 5}}).")
    return STREAMS.parse_options(str(kind), values, "scenario.options")


def stream_experiences(options: Any, splits: DatasetSplits, seed: int
                       ) -> tuple[list[tuple[ImageData, ImageData, str]], list[str]]:
    """The experiences ``(train, test, name)`` of the stream ``options`` describes, and its label names."""
    return STREAMS.get(options.stream).factory(options, splits, seed)
