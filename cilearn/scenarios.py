"""Incremental scenarios: a dataset cut into a sequence of tasks.

A scenario is a plain object you can iterate and index (``scenario[0]`` is a :class:`Task`, ``scenario[:3]``
the scenario of the first three tasks); each task holds ordinary :class:`~cilearn.data.ImageData` arrays.
Nothing here knows about models or the training loop, so a scenario serves your own loop too::

    scenario = cilearn.scenarios.create("digits", classes_per_task=2)     # or any DatasetSplits
    for task in scenario:
        loader = DataLoader(task.dataset("train"), batch_size=32, shuffle=True)  # (image, label, task id)
        ...
        test = scenario[:task.index + 1].dataset("test")                   # everything seen so far

Class-incremental labels are remapped to the class order, so task 0 owns labels ``0..k-1``, task 1 the
next ones, and so on; the network's head simply grows by each task's new classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .class_orders import resolve_class_order
from .data import DatasetSplits, ImageData, load_dataset
from .data.adapters import ImageDataset
from .data.base import JoinedData, cache_dir, consecutive_view, file_backed_empty, joined, release_pages
from .errors import ConfigError
from .schema import build_section
from .sections import ScenarioConfig
from .streams import stream_experiences, stream_options


@dataclass
class Task:
    """One step of a scenario."""

    index: int
    new_classes: list[int]          # labels (remapped) introduced by this task
    seen_classes: list[int]         # labels seen up to and including this task
    train: ImageData
    test: ImageData                 # this task's test data (its classes, or its domain)
    task_incremental: bool = False  # True: task ids are known at test time (multi-head evaluation)
    name: str = ""

    def __repr__(self) -> str:
        return (f"Task({self.index}, new_classes={self.new_classes}, train={len(self.train)}, "
                f"test={len(self.test)})")

    def dataset(self, split: str = "train", transform=None, image_format: str = "float"):
        """This task's ``split`` ("train" or "test") as a ``torch.utils.data.Dataset`` of ``(image, label,
        task id)``: see :class:`~cilearn.data.ImageDataset` for ``transform`` and ``image_format``
        (float [0, 1] CHW tensors by default, or uint8 tensors, or PIL images)."""

        return ImageDataset(_split(self, split), self.index, transform, image_format)


@dataclass
class Scenario:
    """A sequence of tasks over one label space."""

    tasks: list[Task]
    class_names: list[str]          # indexed by remapped label
    class_order: list[int]          # original dataset label of each remapped label
    kind: str = "class_incremental"
    mean: tuple[float, ...] = ()    # per-channel training-set statistics in [0, 1], for normalisation
    std: tuple[float, ...] = ()
    dataset_name: str = ""
    extra: dict = field(default_factory=dict)
    # New-class counts of the split's tasks that ``scenario.num_tasks`` left out.  A head with every class's output
    # from the start (iCaRL, DER, ...) still gets theirs, so the tasks that run are the whole run's first tasks,
    # digit for digit (a 2-output head would change the BCE's average and the initialisation).
    cut_task_sizes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, item: int | slice) -> Task | Scenario:
        """``scenario[t]``: task t; ``scenario[:t]``: the scenario of those tasks (iterate it, or take its
        :meth:`dataset`: their data together)."""
        if isinstance(item, slice):
            return dataclasses.replace(self, tasks=self.tasks[item])
        return self.tasks[item]

    def release_pages(self) -> None:
        """With ``data.keep_in_memory: false``, hand the pages of every task's images back to the operating system
        (the runner does so as each task begins: what the task uses is read back, the rest stays out of the
        process); nothing for images in memory."""
        release_pages(*(data.images for task in self.tasks for data in (task.train, task.test)))

    def __repr__(self) -> str:
        return (f"Scenario({self.kind}, {self.dataset_name!r}, {len(self)} tasks, "
                f"{[len(t.new_classes) for t in self.tasks]} new classes each)")

    def dataset(self, split: str = "train", transform=None, image_format: str = "float"):
        """The ``split`` of every task of this scenario (e.g. ``scenario[:t]``) in one
        ``torch.utils.data.Dataset`` of ``(image, label, task id)``; see :meth:`Task.dataset`."""

        if not self.tasks:
            raise ValueError("this scenario slice holds no task.")
        parts = [_split(task, split) for task in self.tasks]
        task_ids = np.concatenate([np.full(len(part), task.index) for part, task in zip(parts, self.tasks)])
        return ImageDataset(concat(parts), task_ids, transform, image_format)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.tasks[0].train.image_shape

    @property
    def task_incremental(self) -> bool:
        return bool(self.tasks) and self.tasks[0].task_incremental

    def task_of_class(self) -> np.ndarray:
        """Task index that introduced each label (-1 for labels no task introduces)."""
        owner = np.full(self.num_classes, -1, dtype=np.int64)
        for task in self.tasks:
            owner[task.new_classes] = task.index
        return owner


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 NHWC images (float64 accumulation, chunked)."""
    channels = images.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    flat = images.reshape(-1, channels)
    step = 1 << 20  # pixels per chunk: float64 temporaries of ~25 MB instead of a copy of the dataset
    for start in range(0, len(flat), step):
        chunk = flat[start:start + step].astype(np.float64)
        total += chunk.sum(0)
        total_sq += (chunk * chunk).sum(0)
    mean = total / len(flat)
    std = np.sqrt(np.maximum(total_sq / len(flat) - mean * mean, 1e-12))
    return tuple(float(m) / 255 for m in mean), tuple(float(s) / 255 for s in std)


def _remap(data: ImageData, order: list[int], names: list[str]) -> ImageData:
    """Relabel so that ``order[k]`` becomes label ``k``."""
    mapping = np.empty(len(order), dtype=np.int64)
    mapping[np.asarray(order)] = np.arange(len(order))
    return ImageData(images=data.images, labels=mapping[data.labels], class_names=names)


def _sorted_by_label(data: ImageData, file_backed: bool = False) -> ImageData:
    """``data`` in label order (stable), as one new array: in memory, or ``file_backed`` (see
    :func:`~cilearn.data.base.file_backed_empty`; copied in chunks, so that no second copy is ever resident)."""
    order = np.argsort(data.labels, kind="stable")
    if not file_backed:
        return data.subset(order)
    try:
        images = file_backed_empty(data.images.shape, data.images.dtype, cache_dir())
    except OSError as exc:
        raise ConfigError(f"data.keep_in_memory: false needs {data.images.nbytes / 2**20:.0f} MiB of disk in the "
                          f"cache folder {cache_dir()} ({exc.strerror or exc}); free space there, set CILEARN_CACHE "
                          "to a folder with room, or keep the images in memory.") from None
    step = 4096
    for start in range(0, len(order), step):
        images[start:start + step] = data.images[order[start:start + step]]
    release_pages(images)
    return ImageData(images, data.labels[order], list(data.class_names))


def check_class_split(num_classes: int, classes_per_task: int, initial_classes: int | None, name: str) -> None:
    """``initial_classes`` (default ``classes_per_task``) and then tasks of ``classes_per_task`` must use up the
    dataset's ``num_classes`` exactly."""
    initial = classes_per_task if initial_classes is None else initial_classes
    if initial > num_classes:
        raise ConfigError(f"scenario.initial_classes: {initial} is more than the {num_classes} classes of "
                          f"{name}.")
    if (num_classes - initial) % classes_per_task:
        raise ConfigError(f"scenario.classes_per_task: {classes_per_task} does not divide the "
                          f"{num_classes - initial} classes left after the first task's {initial} "
                          f"({name} has {num_classes}). Pick a divisor.")


def class_incremental(splits: DatasetSplits, classes_per_task: int, initial_classes: int | None = None,
                      class_order: str | Sequence[int] = "seed", seed: int = 0,
                      task_incremental: bool = False, num_tasks: int | None = None,
                      class_order_seed: int | None = None, keep_in_memory: bool = True) -> Scenario:
    """Split a dataset by classes: ``initial_classes`` first (B0 style when equal to classes_per_task,
    B50 style with ``initial_classes=50``), then ``classes_per_task`` per task.  The class order is
    resolved by :func:`resolve_class_order` (``class_order_seed`` fixes the ``seed`` order).
    ``keep_in_memory=False`` puts the class-ordered copy in a temporary file (:meth:`Scenario.release_pages`)."""
    num_classes = splits.train.num_classes
    initial = classes_per_task if initial_classes is None else initial_classes
    check_class_split(num_classes, classes_per_task, initial_classes, splits.display_name)
    order = resolve_class_order(class_order, num_classes, seed, class_order_seed)
    names = [splits.train.class_names[c] for c in order]
    train, test = _remap(splits.train, order, names), _remap(splits.test, order, names)
    sizes = [initial] + [classes_per_task] * ((num_classes - initial) // classes_per_task)
    if num_tasks is not None:
        if num_tasks > len(sizes):
            raise ConfigError(f"scenario.num_tasks: {num_tasks} is more than the {len(sizes)} tasks this "
                              f"split has.")
        sizes, cut = sizes[:num_tasks], sizes[num_tasks:]
    else:
        cut = []
    # Each split is copied once in class order (a stable sort: within a class, the dataset's order); a task's
    # data is then a view of one contiguous block, so the tasks together hold one copy of the dataset, not
    # two (the loaded splits are freed once the run has built its scenario).
    train, test = _sorted_by_label(train, not keep_in_memory), _sorted_by_label(test, not keep_in_memory)
    train_bounds = np.searchsorted(train.labels, np.arange(num_classes + 1))
    test_bounds = np.searchsorted(test.labels, np.arange(num_classes + 1))
    tasks, start = [], 0
    for index, size in enumerate(sizes):
        new = list(range(start, start + size))
        tasks.append(Task(
            index=index, new_classes=new, seen_classes=list(range(start + size)),
            train=train.subset(slice(train_bounds[start], train_bounds[start + size])),
            test=test.subset(slice(test_bounds[start], test_bounds[start + size])),
            task_incremental=task_incremental,
            name=f"classes {start}-{start + size - 1}"))
        start += size
    for task in tasks:
        if len(task.train) == 0:
            raise ConfigError(f"task {task.index + 1} has no training images: check the dataset's labels.")
    mean, std = channel_stats(splits.train.images)
    return Scenario(tasks=tasks, class_names=names, class_order=order,
                    kind="task_incremental" if task_incremental else "class_incremental",
                    mean=mean, std=std, dataset_name=splits.display_name, cut_task_sizes=cut)


def _split(task: Task, split: str) -> ImageData:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    return task.train if split == "train" else task.test


def concat(datasets: Sequence[ImageData]) -> ImageData:
    """Concatenate datasets that share a label space, without copying images: consecutive tasks' data is one view
    (:func:`~cilearn.data.base.consecutive_view`), other datasets (a task's and a memory) are a
    :class:`~cilearn.data.base.JoinedData`, which joins its images only when asked for one array."""
    if len(datasets) == 1:
        return datasets[0]
    images = consecutive_view([d.images for d in datasets])
    if images is None:
        return JoinedData(datasets)
    return ImageData(images=images, labels=joined([d.labels for d in datasets]), class_names=datasets[0].class_names)


def build_scenario(cfg, splits: DatasetSplits, seed: int, keep_in_memory: bool = True) -> Scenario:
    """Scenario described by a :class:`~cilearn.config.ScenarioConfig` (its ``options`` parsed: a domain stream's
    options dataclass, or empty for class splits); ``keep_in_memory`` is ``data.keep_in_memory``."""
    if cfg.type in ("class_incremental", "task_incremental"):
        unknown = set(cfg.options) if isinstance(cfg.options, dict) else {cfg.options.stream}
        if unknown:
            raise ConfigError(f"scenario.options: {sorted(unknown)} are not used by {cfg.type} scenarios.")
        return class_incremental(splits, cfg.classes_per_task, cfg.initial_classes, cfg.class_order, seed,
                                 task_incremental=cfg.type == "task_incremental", num_tasks=cfg.num_tasks,
                                 class_order_seed=cfg.class_order_seed, keep_in_memory=keep_in_memory)
    if not keep_in_memory:
        raise ConfigError("data.keep_in_memory: false applies to class- and task-incremental scenarios (their "
                          "tasks are blocks of one class-ordered copy); domain_incremental streams keep their "
                          "experiences in memory: remove the setting.")
    return domain_incremental(cfg, splits, seed)


def domain_incremental(cfg, splits: DatasetSplits, seed: int) -> Scenario:
    """A fixed label space whose inputs change: the experiences of the stream ``cfg.options`` names
    (:mod:`cilearn.streams`); every task sees every label, the first one adds them all."""
    for key in ("classes_per_task", "initial_classes"):
        if getattr(cfg, key) is not None:
            raise ConfigError(f"scenario.{key}: not used by domain_incremental streams (the label space is fixed); "
                              f"remove it.")
    options = cfg.options if not isinstance(cfg.options, dict) else stream_options(cfg.options)
    experiences, class_names = stream_experiences(options, splits, seed)
    if cfg.num_tasks is not None:
        experiences = experiences[: cfg.num_tasks]
    everything = list(range(len(class_names)))
    tasks = []
    for index, (train, test, name) in enumerate(experiences):
        if len(train) == 0 or len(test) == 0:
            raise ConfigError(f"experience {index + 1} ({name}) has no {'training' if len(train) == 0 else 'test'} "
                              f"images; check the data.")
        tasks.append(Task(index=index, new_classes=everything if index == 0 else [], seen_classes=everything,
                          train=train, test=test, name=name))
    mean, std = channel_stats(splits.train.images)
    return Scenario(tasks=tasks, class_names=class_names, class_order=everything, kind="domain_incremental",
                    mean=mean, std=std, dataset_name=f"{splits.display_name} ({options.stream} stream)",
                    extra={"stream": options.stream})


def create(data, type: str = "class_incremental", seed: int = 0, **options) -> Scenario:
    """A scenario without a config file: ``data`` is a dataset name (``"digits"``, ``"cifar100"``, ...;
    loaded with :func:`~cilearn.data.load_dataset`) or :class:`~cilearn.data.DatasetSplits`
    (e.g. :func:`cilearn.data.from_torch`); the other arguments are the keys of a config's ``scenario``
    section, checked the same way::

        create("digits", classes_per_task=2)
        create(splits, classes_per_task=10, initial_classes=50, class_order="pycil")
        create("digits", type="domain_incremental", options={"stream": "rotated", "experiences": 3})

    ``seed`` draws the class order (``class_order: seed``) and the random parts of domain streams."""
    cfg = build_section(ScenarioConfig, {"type": type, **options}, "scenario")
    if cfg.type != "domain_incremental" and cfg.classes_per_task is None:
        raise ConfigError("scenario.classes_per_task: required for class- and task-incremental scenarios, e.g. "
                          "create('digits', classes_per_task=2).")
    splits = data if isinstance(data, DatasetSplits) else load_dataset(str(data))
    return build_scenario(cfg, splits, seed)
