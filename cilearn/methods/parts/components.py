"""Option groups and builders shared by methods that compose the same components.

- :class:`DistillationOptions` + :func:`distillation_objective`: a frozen teacher and the
  classification/distillation loss pair (LwF, iCaRL and the study's loss ablation);
- :class:`MemoryOptions` + :class:`ExemplarClassifiers`: iCaRL's fixed exemplar memory and the
  classifiers fitted on it (NME, scikit-learn KNN/SVM/MLP), for any method that keeps exemplars;
- :class:`BufferOptions` + :class:`BufferMethod`: a reservoir buffer sampled every step (ER, DER, ER-ACE),
  the stream batch and its replay minibatch in one forward pass (:func:`forward_with_replay`), the buffer
  in checkpoints and reports.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from ...errors import ConfigError
from ...scenarios import Scenario
from ...schema import option
from ..base import Batch, Method, MethodOptions, Output
from .buffers import ReservoirBuffer
from .classifiers import MEMORY_CLASSIFIERS, SKLEARN_CLASSIFIERS, NearestMean, SklearnClassifier, exemplar_means
from .distill import DistillationObjective, LossSetup
from .memory import ExemplarMemory, SelectionFeatures

VARIANT_LOSSES = {"original": ("ce", "kd"), "icarl": ("bce", "bce")}


@dataclasses.dataclass
class DistillationOptions(MethodOptions):
    variant: Literal["original", "icarl"] = option(
        "original", help="original: CE + KD with temperature (Li & Hoiem); icarl: BCE + BCE on sigmoid targets")
    classification_loss: Literal["ce", "bce", "mse"] | None = option(
        None, help="loss on the current labels (default: the variant's)")
    distillation_loss: Literal["bce", "mse", "kd"] | None = option(
        None, help="loss keeping the old classes' outputs close to the previous model's (default: the variant's)")
    distillation_weight: float = option(1.0, min=0.0, help="λ, the weight of the distillation term (1: Li & Hoiem's "
                                                           "λ_o, their code's keep_response_lambda)")
    temperature: float = option(2.0, min=1e-3, help="temperature of the kd distillation loss (2: Li & Hoiem's T, "
                                                    "their code's _lockkeep_TEMP2)")
    kd_t2_scaling: bool = option(False, help="multiply the kd loss by T² (Hinton et al.); LwF's paper and code do "
                                             "not (their gradient is (softmax_T - target) / T)")
    classification_outputs: Literal["auto", "new", "all"] = option(
        "auto", help="outputs the classification loss uses: the new classes' only, or all seen; auto: new, "
                     "except ce/mse with an exemplar memory (all, so exemplars keep their labels)")
    balance: Literal["auto", "sum", "outputs", "classes", "tasks"] = option(
        "auto", help="sum: cls + λ·dist; outputs: each term weighted by the share of outputs it covers "
                     "(iCaRL's single BCE over all outputs); classes: (n_new/n_seen)·cls + (n_old/n_seen)·λ·dist "
                     "(van de Ven & Tolias's LwF: 1/t and 1 - 1/t for t equal tasks); tasks: (1/t)·cls + "
                     "(1 - 1/t)·λ·dist in task t, as their code's rnt (also where no class is new: Domain-IL); "
                     "auto: outputs for variant icarl, else sum")
    distillation_outputs: Literal["old", "seen"] = option(
        "old", help="kd only: old: the softmax of both models over the old classes (Li & Hoiem); seen: the new "
                    "model's softmax over every seen class against the teacher's over the old ones, padded with 0 "
                    "for the new classes (van de Ven & Tolias's loss_fn_kd with their active classes)")
    head: Literal["auto", "full", "growing"] = option(
        "auto", help="full: every class's output exists from the first task (the original iCaRL network; "
                     "for lwf in task-incremental scenarios van de Ven & Tolias's one layer, each loss over its "
                     "task's outputs); growing: outputs are added per task; auto: full for a BCE classification "
                     "loss in class-incremental scenarios, else growing")
    bce_average: Literal["all_classes", "seen_classes"] = option(
        "all_classes", help="with a growing head, divide the BCE by every class of the scenario (the "
                            "original's gradient per output) or by the classes seen so far (cilearn 0.1)")
    bce_outputs: Literal["all", "seen"] = option(
        "all", help="with a full head, the BCE covers every output (the original iCaRL: classes still to come "
                    "have target 0) or only the classes seen so far (van de Ven & Tolias's active_classes)")
    bce_reduction: Literal["mean", "sum"] = option(
        "mean", help="mean: each BCE averaged over its outputs, weighted as balance says; sum: summed over the "
                     "outputs, averaged over the batch (van de Ven & Tolias's code since May 2019); bce pairs only")
    bce_target_temperature: float = option(
        1.0, min=1e-3, help="T of the old classes' BCE targets sigmoid(teacher logit / T) (1: the original "
                            "iCaRL; van de Ven & Tolias's code divides by its --temp, default 2)")


def resolve_losses(options: DistillationOptions, has_memory: bool) -> LossSetup:
    cls = options.classification_loss or VARIANT_LOSSES[options.variant][0]
    dist = options.distillation_loss or VARIANT_LOSSES[options.variant][1]
    outputs = options.classification_outputs
    if outputs == "auto":
        outputs = "all" if has_memory and cls != "bce" else "new"
    balance = options.balance
    if balance == "auto":
        balance = "outputs" if options.variant == "icarl" else "sum"
    return LossSetup(cls, dist, outputs, balance)


def uses_full_head(options: DistillationOptions, setup: LossSetup, scenario: Scenario) -> bool:
    if options.head != "auto":
        return options.head == "full"
    return setup.classification == "bce" and scenario.kind == "class_incremental"


def distillation_objective(options: DistillationOptions, setup: LossSetup, scenario: Scenario,
                           full_head: bool) -> DistillationObjective:
    if full_head:
        normaliser = None  # every output exists: average over them
    elif options.bce_average == "all_classes":
        normaliser = scenario.num_classes
    else:
        normaliser = None  # the outputs that exist = the classes seen so far
    slices = None
    if scenario.task_incremental:
        slices = [slice(int(min(t.new_classes)), int(max(t.new_classes)) + 1) for t in scenario]
    if options.bce_reduction == "sum" and (setup.classification, setup.distillation) != ("bce", "bce"):
        raise ConfigError(f"method.bce_reduction: sum sums a binary cross-entropy over its outputs; this "
                          f"objective is {setup.classification} + {setup.distillation}. Use bce_reduction: mean, "
                          f"or classification_loss and distillation_loss bce.")
    if options.distillation_outputs == "seen" and (setup.distillation != "kd" or scenario.task_incremental):
        raise ConfigError(f"method.distillation_outputs: seen pads the teacher's softmax over the old classes with "
                          f"zeros for the new ones: a kd distillation in a class-incremental scenario only (this "
                          f"one: {setup.distillation}, {scenario.kind}). Use distillation_outputs: old.")
    return DistillationObjective(setup, options.distillation_weight, options.temperature, options.kd_t2_scaling,
                                 normaliser, slices, seen_outputs_only=full_head and options.bce_outputs == "seen",
                                 bce_sum=options.bce_reduction == "sum",
                                 bce_target_temperature=options.bce_target_temperature,
                                 distill_seen_outputs=options.distillation_outputs == "seen")


@dataclasses.dataclass
class TaughtOutput(Output):
    """The student's output with the frozen teacher's logits on the same inputs (None: no teacher yet)."""

    teacher_logits: torch.Tensor | None = None


def forward_teacher_first(method, batch: Batch) -> TaughtOutput:
    """The teacher's logits, then the student's forward (LwF, iCaRL).  In this order the teacher's
    intermediate tensors are freed before the student's activations exist, so they never lie above them
    in the allocator's heap (on CPU, ResNet-32 at batch 128: ~90 MB less peak resident memory; the values
    are the same in either order)."""
    teacher_logits = method.teacher.logits(batch.inputs) if method.teacher else None
    out = Method.forward(method, batch)
    return TaughtOutput(out.features, out.logits, teacher_logits)


def distillation_loss(method, out: Output, batch: Batch) -> torch.Tensor:
    """The objective of a method holding ``teacher`` and ``objective`` on one batch (LwF, iCaRL); the
    teacher's logits come with the output of :func:`forward_teacher_first`, or are computed here (an
    output from another forward)."""
    if isinstance(out, TaughtOutput):
        teacher_logits = out.teacher_logits
    else:
        teacher_logits = method.teacher.logits(batch.inputs) if method.teacher else None
    mask = method.head_mask(batch.labels)
    return method.objective(out.logits, batch.labels, teacher_logits, method.num_seen,
                            None if mask is None else mask[:, : method.num_seen], task_number=method.task.index + 1)


def check_full_head(options: MethodOptions, scenario: Scenario) -> None:
    """Refuse ``head: full`` of iCaRL and L2 in a task-incremental scenario (LwF's is van de Ven & Tolias's layer)."""
    if options.head == "full" and scenario.task_incremental:
        raise ConfigError("method.head: full gives every class an output from the start; task-incremental "
                          "scenarios need one head per task. Use head: growing (or auto).")


@dataclasses.dataclass
class MemoryOptions(MethodOptions):
    memory_size: int = option(2000, min=1, help="K, total exemplars kept (K // classes seen per class; 2000: "
                                                "iCaRL's CIFAR-100 budget, 20 per class × 100)")
    per_class: Literal["floor", "ceil"] = option(
        "floor", help="exemplars per class: floor(K / classes), never more than K; ceil(K / classes) as iCaRL's "
                      "Theano code, up to classes - 1 more than K")
    selection: Literal["herding", "random"] = option("herding", help="how exemplars are chosen")
    nme_flip: bool | None = option(None, help="average exemplar features with the mirrored image's for the "
                                              "class means (default: for colour images)")


def check_memory(options: MemoryOptions, scenario: Scenario) -> None:
    classes = max((len(t.seen_classes) for t in scenario), default=0)
    if options.memory_size < classes:
        raise ConfigError(
            f"method.memory_size: {options.memory_size} exemplars is smaller than the number of "
            f"classes in this scenario ({classes}): the memory must hold at least one exemplar per "
            f"class. Raise memory_size to {classes} or more.")


class ExemplarClassifiers:
    """The classifiers fitted on an exemplar memory's features after each task: ``nme`` (class means of
    L2-normalised features, averaged with the mirror image's when ``flip``) and scikit-learn ``knn`` /
    ``svm`` / ``mlp`` on the L2-normalised features."""

    def __init__(self, names: list[str], infer, flip: bool, seed: int):
        self.names, self.infer, self.flip, self.seed = list(names), infer, flip, seed
        self.nme = NearestMean()
        self.fitted: dict[str, SklearnClassifier] = {}
        self.memory_features: torch.Tensor | None = None  # of the memory as last fitted, under that model

    def fit(self, memory: ExemplarMemory, fresh: bool = False) -> None:
        """Fit on ``memory``'s exemplars under the current model.  ``fresh``: the memory's last update ran under
        this same model, so the features herding computed for the exemplars it added are theirs (not computed
        again)."""
        self.memory_features = None
        wanted = [c for c in self.names if c in MEMORY_CLASSIFIERS]
        if not wanted or len(memory) == 0:
            return
        features = self.memory_features = self.exemplar_features(memory, memory.selection_features if fresh else {})
        labels = torch.as_tensor(memory.labels)
        if "nme" in wanted:
            flipped = self.infer(memory.images, flip=True)[0] if self.flip else None
            classes = memory.classes
            self.nme.fit_means(exemplar_means(features, labels, classes, flipped), classes)
        self.fitted = {name: SklearnClassifier(name, self.seed).fit(features, labels)
                       for name in wanted if name in SKLEARN_CLASSIFIERS}

    def exemplar_features(self, memory: ExemplarMemory, known: dict[int, SelectionFeatures]) -> torch.Tensor:
        """Features of every exemplar under the current model, in the memory's order.  The exemplars of the
        classes in ``known`` take herding's features (computed under this model a moment ago) when every pass
        involved computes features as one pass over the whole memory would (:meth:`Inference.folds
        <cilearn.engine.evaluate.Inference.folds>`): the result is then the same as that pass's."""
        reused = np.isin(memory.labels, list(known))
        rest = np.flatnonzero(~reused)
        passes = [s.pass_size for s in known.values()] + ([len(rest)] if len(rest) else [])
        folds = getattr(self.infer, "folds", None)
        if not reused.any() or (folds is not None and any(folds(n) != folds(len(memory)) for n in passes)):
            return self.infer(memory.images)[0]
        sample = next(iter(known.values())).features
        features = sample.new_empty((len(memory), sample.shape[1]))
        if len(rest):
            consecutive = rest[-1] - rest[0] + 1 == len(rest)  # the old classes come first: a view, no copy
            images = memory.images[rest[0]:rest[-1] + 1] if consecutive else memory.images[rest]
            features[torch.as_tensor(rest, device=features.device)] = self.infer(images)[0].to(features)
        for label, selected in known.items():
            rows = np.flatnonzero(memory.labels == label)
            ranks = torch.as_tensor(memory.rank[rows], device=features.device)
            features[torch.as_tensor(rows, device=features.device)] = selected.features[ranks]
        return features

    def available(self) -> dict:
        return {"nme": self.nme, **self.fitted}

    def state_dict(self) -> dict:
        return self.nme.state_dict()

    def load_state_dict(self, state: dict) -> None:
        # scikit-learn models are not checkpointed (weights_only): end_task refits them before they are used
        self.nme.load_state_dict(state or {})
        self.fitted, self.memory_features = {}, None


# --- the output layer of methods that train on the classification loss alone (and a penalty or replay) ----
@dataclasses.dataclass
class OutputLayerOptions(MethodOptions):
    head: Literal["growing", "full"] = option(
        "growing", help="growing: outputs added per task (in task-incremental scenarios a head per task); full: "
                        "every class's output from the first task, one layer that the optimizer steps from the "
                        "start, as van de Ven & Tolias's and Hsu et al.'s 10-output layer (the losses still use the "
                        "classes seen so far, in task-incremental scenarios each sample's own task's outputs)")


# --- replay buffers sampled at every step (ER, DER, ER-ACE, A-GEM) ---------------------------------------
@dataclasses.dataclass
class StepReplayOptions(MethodOptions):
    replay_sampling: Literal["without_replacement", "with_replacement"] = option(
        "without_replacement", help="how each step's replay minibatch is drawn from the buffer: distinct samples "
        "(as Mammoth; a buffer holding fewer than the minibatch gives all it holds) or independent draws with "
        "replacement (cilearn 0.1)")
    classification_outputs: Literal["all", "seen"] = option(
        "all", help="outputs the cross-entropies cover: all (every class has an output from the first task, also "
                    "the classes not seen yet, as Mammoth's ER, A-GEM and DER and the ER-ACE authors' code) or seen "
                    "(outputs added per task, losses over the classes seen so far: cilearn 0.1)")

    @property
    def replacement(self) -> bool:
        return self.replay_sampling == "with_replacement"


@dataclasses.dataclass
class BufferOptions(StepReplayOptions):
    buffer_size: int = option(200, min=1, help="samples the replay buffer holds (200: the smallest of the DER "
                                               "paper's 200, 500, 5120)")
    replay_batch_size: int | None = option(None, min=1, help="samples replayed per step (default: the stream "
                                                             "batch size, as Chaudhry et al.'s ER script; the DER "
                                                             "paper tunes it per method and buffer, Mammoth's "
                                                             "utils/best_args.py: Seq-MNIST, buffer 200: ER and DER "
                                                             "10, DER++ 128)")
    reservoir_draws: Literal["per_sample", "per_batch"] = option(
        "per_sample", help="how the reservoir keeps stream samples: per_sample, Vitter's algorithm R (sample i kept "
                           "with probability buffer_size / (i + 1)); per_batch, every sample of a batch with "
                           "buffer_size / (samples seen before the batch), as Caccia et al.'s code (pclucas14/AML)")


def forward_with_replay(model: torch.nn.Module, batch: Batch, separate: bool = False) -> Output:
    """The stream batch and its replay minibatch through the network, the stream rows first, then the replayed
    ones: one forward pass (BatchNorm, if any, sees them together) or, with ``separate``, one pass each (BatchNorm
    sees each alone).  The head acts row by row, so it runs once on the concatenated features either way."""
    if batch.replay is None:
        features = model.features(batch.inputs)
    elif separate:
        features = torch.cat([model.features(batch.inputs), model.features(batch.replay.inputs)])
    else:
        features = model.features(torch.cat([batch.inputs, batch.replay.inputs]))
    return Output(features, model.head(features))


class StoredReplay(Method):
    """A method whose replayed samples live in ``self.replay`` (a buffer or store): they go into its
    checkpoints and are what the report shows as its exemplars.  Its cross-entropies cover the outputs
    ``classification_outputs`` names (:meth:`ce_logits`); with ``all`` the network has every class's output from
    the first task (``full_head``; in task-incremental scenarios the outputs still come per task)."""

    def __init__(self, options: StepReplayOptions, model: torch.nn.Module, context):
        super().__init__(options, model, context)
        self.full_head = options.classification_outputs == "all" and not context.scenario.task_incremental

    def ce_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits a cross-entropy covers: all outputs, or those of the classes seen so far."""
        return logits if self.options.classification_outputs == "all" else self.seen_logits(logits)

    def exemplars(self) -> dict | None:
        return self.replay.exemplars()

    def state_dict(self) -> dict:
        return {"buffer": self.replay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.replay.load_state_dict(state["buffer"])


class BufferMethod(StoredReplay):
    """A method replaying a minibatch of a reservoir buffer (``self.replay``) at every step: one forward
    pass over the stream batch and the replayed samples, the buffer in checkpoints and in the report.
    Subclasses fill the buffer (``after_step``) and say what the loss does with the replayed rows."""

    Options = BufferOptions

    def __init__(self, options: BufferOptions, model: torch.nn.Module, context):
        super().__init__(options, model, context)
        self.replay = ReservoirBuffer(options.buffer_size, context.device, options.replacement,
                                      options.reservoir_draws)
        self.replay_batch_size = options.replay_batch_size  # None: the loop uses the stream batch size

    def forward(self, batch: Batch) -> Output:
        return forward_with_replay(self.model, batch)
