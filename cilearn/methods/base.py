"""The method interface: a method adds its idea to the shared training loop through a few hooks.

Required: nothing — the base class is plain fine-tuning.  A method overrides what makes it different.

Per step (the training loop, :mod:`cilearn.engine.train`, owns the forward/backward/step and calls):

- ``forward(batch) -> Output``: features and logits of a :class:`Batch` (default: the model);
- ``loss(out, batch) -> Tensor``: the training objective (the hook almost every method changes);
- ``before_step(optimizer)``: after ``backward``, before ``optimizer.step()`` (gradient projection);
- ``after_step(batch, out)``: after the step (fill a reservoir buffer, accumulate an importance).

Per epoch / task / run:

- ``begin_task(task)`` / ``end_task(task, train_data)``: before/after training a task (freeze a teacher,
  update the exemplar memory, estimate a Fisher matrix ...);
- ``begin_epoch(epoch)`` / ``end_epoch(epoch)``;
- ``training_data(task)``: what the loop trains on (the task's data plus a memory, say);
- ``stages(task)``: the training stages of a task, run one after the other by the same loop and
  checkpointed like any epoch (default: one stage; BiC adds a bias-correction stage).  A :class:`Stage`
  declares its schedule, data, what it trains (the rest fixed, in eval mode) and its objective;
- ``parameter_groups()``: what the optimizer trains (a method may ask for its own groups);
- ``make_head(options, in_features)`` (class method): the classifier head the method needs instead of the
  linear one (a cosine classifier, say), installed before the first task and when a run is rebuilt;
- ``classifiers()``: how to predict at test time (the network head, nearest-mean-of-exemplars, ...);
- ``exemplars()``: the stored samples (for the report), or None;
- ``task_context(task_index)``: a context in which the network computes that task's outputs (XdG's gate), for
  task-incremental scenarios whose network depends on the task; None (default) when it does not;
- ``state_dict()`` / ``load_state_dict()``: everything needed to resume (tensors and plain values only).

A method that replays stored samples every step sets ``self.replay`` to a sampler
(:mod:`cilearn.methods.parts.buffers`); the loop then attaches a same-device, augmented minibatch of it to every
batch as ``batch.replay``, drawn from :meth:`Method.replay_source` (``self.replay`` unless the method draws from
part of it).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import torch

from ..data import ImageData
from ..losses import classification_loss
from ..scenarios import Scenario, Task
from ..schema import option
from .parts.classifiers import HeadClassifier

if TYPE_CHECKING:
    from ..distributed import Distributed
    from .parts.buffers import ReplaySampler

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (features, logits) -> predicted labels


@dataclasses.dataclass
class Batch:
    """One training step's data, on the training device.

    ``inputs`` are augmented and normalised (what the network sees); ``images`` are the same samples
    as stored (uint8 NCHW, un-augmented); ``indices`` are their positions in the stage's training data;
    ``task_ids`` the task that introduced each label (the experience index in domain streams).
    ``extras`` carries what a replay buffer stored beside the samples (e.g. DER's logits); ``replay`` the
    step's replayed minibatch and ``second_replay`` an independent second one, for a method whose
    ``replay_draws`` is 2 (DER++); ``mix`` is set when a cutmix step mixed the batch
    (:class:`~cilearn.augment.Mix`: the loop weighs two losses).

    Under torchrun, ``loss`` sees this process's share of every part and ``after_step`` the whole batch
    (the same on every process), with the whole stream batch's outputs."""

    inputs: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    task_ids: torch.Tensor
    indices: torch.Tensor
    replay: "Batch | None" = None
    second_replay: "Batch | None" = None
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    mix: Any = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class Output:
    """What the forward pass produced: penultimate features (N, d) and logits (N, classes)."""

    features: torch.Tensor
    logits: torch.Tensor


# What a stage trains (:attr:`Stage.trains`): "all", a submodule's path in the model ("head", "head.chunks.2"),
# modules and parameters (one or a list), or a function returning one of these when the stage starts.
Trainable = (str | torch.nn.Module | torch.nn.Parameter | Iterable[torch.nn.Module | torch.nn.Parameter]
             | Callable[[], Any])


@dataclasses.dataclass
class Stage:
    """A training stage of a task, run by the shared loop; between stages the run is checkpointed.

    A stage declares what differs from the method's ordinary training, and the loop applies it, so that the
    method's hooks need not ask which stage runs:

    - ``name``: shown in ``log.csv`` and the progress lines;
    - ``epochs``, ``lr``: the stage's own number of epochs and learning rate (None: the run's ``train``
      values); ``overrides``: any other ``train`` settings of the stage (e.g. ``{"milestones": [],
      "scheduler": "constant"}``; ``epochs`` and ``lr`` may also be given here, as before, but not twice).  A
      stage that sets ``epochs`` counts epochs even when the run counts ``train.iterations``;
    - ``data``: what the stage trains on — an :class:`ImageData`, or a function returning one, called when
      the stage starts (after ``begin_stage``), for data that depends on what earlier stages did; None: the
      method's ``training_data(task)``;
    - ``trains``: what the optimizer trains.  ``"all"`` (the default): the method's ``parameter_groups()``,
      and the loop changes nothing else.  Otherwise the stage trains only these parameters, in one group, in
      the order given: a submodule's path in the model (``"head"``, ``"head.chunks.2"``), modules or
      parameters (one or a list; a module stands for its parameters), or a function returning one of these,
      called when the stage starts.  While the stage runs, every other parameter of the model is fixed:
      ``requires_grad`` is off (no gradient, no graph through a frozen backbone) and restored afterwards.
      Parameters the model itself keeps frozen (``requires_grad`` False: a linear probe's backbone) stay so;
    - ``frozen_in_eval`` (with ``trains`` other than ``"all"``): the modules that hold none of the trained
      parameters run in eval mode every epoch (BatchNorm normalises with, and keeps, its running statistics;
      dropout is off), and go back to training mode when the stage ends; False: they stay in training mode;
    - ``forward``, ``loss``: the stage's own ``forward(batch) -> Output`` and ``loss(out, batch)``, when its
      objective differs from the method's (None: the method's hooks).

    E.g. BiC's bias correction: ``Stage("bias", epochs=200, data=held_out, trains=[alpha, beta],
    loss=cross_entropy)``; the method's ``begin_stage`` still receives every stage (``self.stage``)."""

    name: str = "train"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: ImageData | Callable[[], ImageData] | None = None
    epochs: int | None = None
    lr: float | None = None
    trains: Trainable = "all"
    frozen_in_eval: bool = True
    forward: Callable[["Batch"], "Output"] | None = None
    loss: Callable[["Output", "Batch"], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        for key in ("epochs", "lr"):
            if getattr(self, key) is not None and key in self.overrides:
                raise ValueError(f"stage {self.name!r}: {key} is given twice (as a field and in overrides)")

    def train_overrides(self) -> dict[str, Any]:
        """The ``train`` settings this stage changes: ``overrides`` with ``epochs`` and ``lr`` when set."""
        typed = {key: getattr(self, key) for key in ("epochs", "lr") if getattr(self, key) is not None}
        return {**self.overrides, **typed} if typed else self.overrides

    def training_data(self, method: "Method", task: Task) -> ImageData:
        """What the stage trains on: its ``data`` (called when a function), else the method's."""
        if self.data is None:
            return method.training_data(task)
        return self.data() if callable(self.data) else self.data

    def parameter_groups(self, method: "Method") -> list[dict]:
        """The optimizer's parameter groups: the method's, or the one group of what the stage ``trains``."""
        if not self.trains_part:
            return method.parameter_groups()
        return [{"params": self._selected_parameters(method.model)}]

    def _selected_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The parameters ``trains`` names, each once, in the order given."""
        selection = self.trains
        if callable(selection) and not isinstance(selection, torch.nn.Module):
            selection = selection()
        if isinstance(selection, str):
            try:
                selection = model.get_submodule(selection)
            except AttributeError as error:
                raise ValueError(f"stage {self.name!r} trains {self.trains!r}: the model has no such "
                                 f"submodule ({error})") from None
        if isinstance(selection, (torch.nn.Module, torch.nn.Parameter)):
            selection = [selection]
        parameters: dict[int, torch.nn.Parameter] = {}
        for item in selection:
            for parameter in item.parameters() if isinstance(item, torch.nn.Module) else [item]:
                parameters.setdefault(id(parameter), parameter)
        return list(parameters.values())

    @property
    def trains_part(self) -> bool:
        """Whether the stage trains only part of the model (the loop then fixes the rest)."""
        return not (isinstance(self.trains, str) and self.trains == "all")


@dataclasses.dataclass
class MethodOptions:
    name: str = option(help="method name (cilearn list)")
    label: str | None = option(None, help="name of this run in tables and folders (default: the method name)")
    classification_loss: Literal["ce", "bce", "mse"] = option("ce", help="loss on the current labels")
    # Options added with a new default, and what their absence meant before: a run folder's config.yaml (every
    # option written out) that lacks one was written then, and resumes and is reported with this value.
    absent_from_old_runs: ClassVar[dict[str, Any]] = {}


@dataclasses.dataclass
class MethodContext:
    """What a method may use besides the model: shared, read-only for the method."""

    scenario: Scenario
    device: torch.device
    seed: int
    infer: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # infer(images uint8 NHWC, flip=False) -> features, logits
    augment: Callable[[torch.Tensor], torch.Tensor]          # uint8 NCHW batch -> augmented float batch
    build_model: Callable[[], torch.nn.Module] | None = None  # a freshly initialised copy of the architecture
    distributed: Distributed | None = None  # torchrun: the job this process belongs to (None: one process)


def task_mask(class_task: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, C) bool: the outputs each sample may use in multi-head (task-incremental) training — those
    of the task that owns its label.  ``class_task[c]`` is the task that introduced class ``c``."""
    return class_task[None, :] == class_task[labels][:, None]


class Method:
    """Fine-tuning: train on each new task's data alone; the baseline every method improves on."""

    name: ClassVar[str] = "finetune"
    description: ClassVar[str] = "fine-tuning: train on each task in turn (lower bound)"
    paper: ClassVar[str] = ""  # the reference the method follows (shown by the docs and `cilearn list`)
    Options: ClassVar[type] = MethodOptions
    primary_classifier: ClassVar[str] = "head"
    # True: the network has every class's output from the first task on (iCaRL's fixed 100-way layer);
    # evaluation still only compares the classes seen so far.
    full_head: ClassVar[bool] = False
    # True: the objective is the classification loss of the batch alone (no replay, no other term, labels kept
    # by nothing), so a cutmix step can train on λ·L(y_a) + (1 - λ)·L(y_b); other methods refuse cutmix.
    mixes_labels: ClassVar[bool] = False

    def __init__(self, options: MethodOptions, model: torch.nn.Module, context: MethodContext):
        self.options = options
        self.model = model
        self.context = context
        self.task: Task | None = None
        self.stage: Stage = Stage()
        self.replay: ReplaySampler | None = None
        self.replay_draws = 1  # minibatches the loop draws from self.replay every step (DER++: 2)
        self.class_task: torch.Tensor | None = None  # task of each class, set for task-incremental scenarios

    # --- hooks -------------------------------------------------------------------------------------
    def replay_source(self) -> ReplaySampler | None:
        """What the loop draws this step's replayed minibatch from (default: ``self.replay``; an empty one:
        no replay this step)."""
        return self.replay

    @classmethod
    def make_head(cls, options: MethodOptions, in_features: int) -> torch.nn.Module | None:
        """The classifier head this method trains instead of the default linear
        :class:`~cilearn.models.IncrementalHead` (None: the default).  It must grow like one (``grow``,
        ``chunks``, ``task_slices``); the run installs it before anything else sees the model, and
        reports rebuild it the same way."""
        return None

    def check(self, scenario: Scenario) -> None:
        """Refuse option combinations that cannot work on this scenario (raise ConfigError) before
        any training starts."""

    def grow_head(self, task: Task) -> None:
        """Add ``task``'s new classes to the model's head (the run calls it first for each task, not when it
        resumes inside one).  With ``full_head`` every class's output exists from the first task on (one chunk
        per task, tasks that ``scenario.num_tasks`` left out included); domain streams add no classes after the
        first experience."""
        if self.full_head:
            if self.model.num_classes == 0:
                scenario = self.context.scenario
                sizes = [len(later.new_classes) for later in scenario if later.new_classes]
                for size in sizes + scenario.cut_task_sizes:
                    self.model.add_classes(size, scenario.num_classes)
        elif task.new_classes:
            self.model.add_classes(len(task.new_classes))

    def begin_task(self, task: Task) -> None:
        """Called after the head has grown for ``task`` and before its training starts."""
        self.task = task
        if task.task_incremental:
            owner = torch.as_tensor(self.context.scenario.task_of_class(), device=self.context.device)
            self.class_task = owner[: self.model.num_classes]

    def stages(self, task: Task) -> list[Stage]:
        """The task's training stages, run in order by the shared loop (default: one)."""
        return [Stage()]

    def begin_stage(self, stage: Stage) -> None:
        """Called before each stage; ``self.stage`` tells hooks which stage runs."""
        self.stage = stage

    def training_data(self, task: Task) -> ImageData:
        """What a stage without its own data trains on (default: the task's training data)."""
        return task.train

    def begin_epoch(self, epoch: int) -> None:
        """Called at the start of every epoch, after the model was put in training mode."""

    def forward(self, batch: Batch) -> Output:
        """Features and logits of the batch.  A forward that also runs ``batch.replay`` puts the stream
        batch's rows first (the loop's training accuracy reads them)."""
        features = self.model.features(batch.inputs)
        return Output(features, self.model.head(features))

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        """The batch objective (default: the classification loss on the classes seen so far)."""
        return self.classification_loss(self.seen_logits(out.logits), batch.labels)

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After ``backward``, before ``optimizer.step()``: the gradients can be changed here."""

    def after_step(self, batch: Batch, out: Output) -> None:
        """After ``optimizer.step()``; ``out`` still carries the graph: ``.detach()`` what you keep."""

    def end_epoch(self, epoch: int) -> None:
        """Called at the end of every epoch, before the learning-rate schedule steps."""

    def end_task(self, task: Task, train_data: ImageData) -> None:
        """Called after the last stage of ``task``, before it is evaluated."""

    def classifiers(self) -> dict[str, Classifier]:
        """Test-time classifiers ``{name: fn(features, logits) -> labels}``; the primary one is reported."""
        return {"head": head_classifier}

    def parameter_groups(self) -> list[dict]:
        """The optimizer's parameter groups (default: every trainable parameter of the model, one group)."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def exemplars(self) -> dict[str, Any] | None:
        """Stored samples for reports: ``{"images": uint8 NHWC, "labels", "rank"}`` (+ ``"kind"``; + ``"features"``
        when the method already computed them under the current model, else the run computes them), or None."""
        return None

    def task_context(self, task_index: int) -> contextlib.AbstractContextManager | None:
        """What the network needs to compute task ``task_index``'s outputs (a task-conditioned network such as
        XdG's gates), as a context the evaluation scores that task's test images in; None (the default): the
        network is the same for every task, and the test images of all tasks go through it in one pass."""
        return None

    def state_dict(self) -> dict:
        """Everything a resumed run needs besides the model: tensors and plain values only."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (called after ``begin_task`` when resuming inside a task)."""

    # --- helpers for subclasses ---------------------------------------------------------------------
    @property
    def memory_size(self) -> int:
        """Exemplars the method keeps (0: none); used to validate classifier choices."""
        return 0

    @property
    def num_seen(self) -> int:
        """Classes seen up to the current task (the outputs a loss may use, also with a full head)."""
        return len(self.task.seen_classes) if self.task is not None else self.model.num_classes

    def seen_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, : self.num_seen] if logits.shape[1] > self.num_seen else logits

    def head_mask(self, labels: torch.Tensor) -> torch.Tensor | None:
        """The multi-head mask of :func:`task_mask` in task-incremental scenarios, else None."""
        if self.class_task is None:
            return None
        return task_mask(self.class_task, labels)

    def classification_loss(self, logits: torch.Tensor, targets: torch.Tensor,
                            kind: str | None = None) -> torch.Tensor:
        """The configured classification loss; with task ids (multi-head), each sample only uses its
        own task's head."""
        mask = self.head_mask(targets)
        if mask is not None:
            mask = mask[:, : logits.shape[1]]
        return classification_loss(kind or self.options.classification_loss, logits, targets, mask)


METHOD_HOOKS = ("make_head", "check", "begin_task", "stages", "begin_stage", "training_data", "parameter_groups",
                "begin_epoch", "forward", "loss", "before_step", "after_step", "end_epoch", "end_task", "classifiers",
                "exemplars", "state_dict", "load_state_dict")


head_classifier = HeadClassifier()  # (features, logits) -> argmax of the logits; ranks by them (top-5)
