"""PODNet, pooled outputs distillation (Douillard, Cord, Ollion, Robert & Valle, ECCV 2020).

On the exemplar memory with a cosine head whose old classes stay fixed while a task trains
(:class:`~cilearn.methods.parts.rehearsal.CosineRehearsal`):

- POD-spatial: for the output map ``h`` (C×H×W) of every stage of the backbone, pool the squared
  activations over the width (C×H values) and over the height (C×W values), concatenate, L2-normalise,
  and take the L2 distance between the student's and the teacher's vector; averaged over the batch and
  over the stages (:func:`pod_spatial`);
- POD-flat: ``1 - cos(h, h_old)`` on the final embedding;
- both weighted by ``λ · sqrt(classes seen / new classes)`` (λ_spatial 3, λ_flat 1 on CIFAR-100);
- local similarity classifier (LSC): K proxies per class, the class similarity ``ŷ_c = Σ_k softmax_k(s_c,k)
  · s_c,k`` (:class:`~cilearn.models.heads.CosineHead` with ``proxies=K``) of ``s_c,k = -‖f̂ - ŵ_c,k‖² =
  2·cos - 2`` (the official config's ``distance: neg_stable_cosine_distance``; ``classifier_distance: cosine``
  takes the cosines, as cilearn did before, so the softmaxes run at half the scale), trained with an NCA loss
  on ``z_c = η ŷ_c``, ``z_y = η(ŷ_y - δ)`` (η learnable, from 1) in the form ``nca_form`` names (below):
  ``official`` (default), ``log(exp(max_c z_c) + Σ_{c≠y} exp z_c) - z_y``, what the authors' code computes;
  ``plain``, the paper's ``-log(exp(z_y) / Σ_{c≠y} exp z_c)``; ``hinge``, that clipped at 0 (the paper's
  ``[·]_+``);
- the new classes' proxies are imprinted before a task: k-means (K clusters) of each class's normalised
  features, scaled to the old vectors' mean norm;
- after training (from the second task on) a class-balanced fine-tuning stage: the memory, already updated
  with the new classes' exemplars, trains only the classifier's vectors (20 epochs at lr 0.05, the backbone
  frozen, η fixed: the official ``tuning: classifier``; ``finetune_scale: true`` also trains η).

Evaluation: the network's head (the paper's "CNN" on CIFAR-100) and NME.  On an MLP every hidden layer is a
"stage" of size C×1×1: POD-spatial then compares the L2-normalised squared activations.  Departures: the
authors' code subtracts the margin from every class's similarity (so it cancels) and clips gradients at ±5;
here the margin applies to the ground truth as the paper writes it, and gradients are not clipped.  The
memory keeps ``memory_size`` in total (iCaRL's rule), not a fixed number per class.

The margin: the paper writes δ = 0.6 on the ground truth's similarity; the authors' code subtracts it from
every class's similarity, where it cancels, so their results were obtained with no margin.  With a margin
on the ground truth only, ``∂L/∂η = δ - (ŷ_y - E[ŷ_c])`` is positive while a task's features are still
untrained, η can fall below zero and the classifier then learns the wrong way round: on the Seq-MNIST
protocol the head ended at 0.1 % (NME 37.3 %, 3 seeds) against 76.6 % (NME 69.2 %) without the margin
(``cilearn run configs/methods_mnist/podnet.yaml --set method.nca_margin=0.6``, measured with the earlier
``classifier_distance: cosine``, the hinged loss and ``finetune_scale: true``).  So ``nca_margin`` defaults to
the code's effective 0; ``nca_margin: 0.6`` gives the paper's formula.

The NCA's form.  The authors' ``nca`` (arthurdouillard/incremental_learning.pytorch,
``inclearn/lib/losses/base.py`` lines 72-95 at c09fc54), as the official ``podnet_cnn_cifar100.yaml`` calls
it (``exclude_pos_denominator: true``; ``hinge_proxynca`` not set, so false; no ``class_weights_config``, so
no class weights; ``scale`` the learned factor, ``postprocessor_config: learned_scaling`` from 1, passed in
``inclearn/models/podnet.py`` lines 313-324), scales ``η(ŷ - δ)``, subtracts each row's maximum (over every
class, the ground truth included), sets the ground truth's entry of the denominator to 0 and exponentiates,
so ``exp(0) = 1`` stays in the sum: per sample ``log(1 + Σ_{c≠y} exp(z_c - m)) - (z_y - m)`` with ``m =
max_c z_c``, which is ``nca_form: official``.  It is never negative, and it is the softmax cross-entropy over
``z`` once the ground truth has the largest ``z``: for a correctly classified sample ``∂L/∂η = E_softmax[ŷ] -
ŷ_y`` goes to 0 as η grows.  The paper's NCA without the hinge (``plain``, cilearn 0.2's default) falls without
bound instead (``∂L/∂η = E_{c≠y}[ŷ_c] - ŷ_y + δ`` stays below 0 while the ground truth wins by more than δ),
and only weight decay holds η back (the official config has 5e-4 on every parameter, η included).  On the
Seq-MNIST protocol (no weight decay; 3 seeds, η from each run's last checkpoint) η ended at 1137 ± 13 with
``plain`` and its head at 32.0 %, against η 13.1 ± 0.5 and 80.7 % with ``official`` and η 4.7 ± 0.3 and 77.9 %
with ``hinge`` (README, "Methods on Seq-MNIST").
With δ > 0 ``official`` keeps cilearn's margin on the ground truth only; the authors' code (δ on every
class) computes ``official`` at δ = 0 whatever δ is.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ImageData
from ..errors import ConfigError
from ..log import get_logger
from ..models.heads import CosineHead
from ..scenarios import Scenario, Task
from ..schema import option
from .base import Batch, Output, Stage
from .parts.rehearsal import CosineRehearsal, RehearsalOptions, feature_distillation

NCAForm = Literal["official", "plain", "hinge"]


@dataclasses.dataclass
class PODNetOptions(RehearsalOptions):
    proxies: int = option(10, min=1, help="K, proxies (weight vectors) per class of the local similarity classifier "
                                          "(10: the official configs' proxy_per_class)")
    nca_margin: float = option(0.0, min=0.0, help="δ, the NCA loss's margin on the ground-truth similarity (the "
                                                  "paper writes 0.6, the authors' code cancels it: see the docs)")
    pod_spatial: float = option(3.0, min=0.0, help="λ_spatial (scaled by sqrt(classes seen / new classes); 3: the "
                                                   "official CIFAR-100 config, ImageNet 8)")
    pod_flat: float = option(1.0, min=0.0, help="λ_flat (scaled by sqrt(classes seen / new classes); 1: the official "
                                                "CIFAR-100 config, ImageNet 10)")
    finetune_epochs: int = option(20, min=0, help="epochs of the class-balanced classifier fine-tuning (0: none; 20: "
                                                  "the official configs)")
    finetune_lr: float = option(0.05, min=0.0, help="learning rate of the class-balanced fine-tuning (0.05: the "
                                                    "official CIFAR-100 config, ImageNet 0.01)")
    imprint: bool = option(True, help="imprint the new classes' proxies (k-means of their features) before a task")
    classifier_distance: Literal["neg_squared", "cosine"] = option(
        "neg_squared", help="the proxies' similarity: neg_squared, -‖f̂ - ŵ‖² = 2·cos - 2 (the official config's "
                            "neg_stable_cosine_distance); cosine (cilearn's earlier default: half the softmax scale)")
    nca_form: NCAForm = option(
        "official", help="the NCA loss per sample: official, the authors' nca with hinge_proxynca false (max-shifted, "
                         "the ground truth's exp(0) kept in the denominator: never below 0); plain, the paper's "
                         "NCA unclipped (below 0 once the ground truth wins; cilearn 0.2's default); hinge, the "
                         "paper's [·]_+ (cilearn 0.1's)")
    nca_hinge: bool | None = option(None, help="deprecated, read as nca_form: true → hinge, false → plain (what it "
                                               "meant before nca_form)")
    finetune_scale: bool = option(False, help="the balanced fine-tuning also trains η (the official tuning: "
                                              "classifier keeps it fixed; true: cilearn's earlier default)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nca_hinge is None:
            return
        form = "hinge" if self.nca_hinge else "plain"
        if self.nca_form not in ("official", form):
            raise ConfigError(f"method.nca_hinge: {str(self.nca_hinge).lower()} (deprecated) means nca_form: {form}, "
                              f"but nca_form is {self.nca_form}. Remove nca_hinge.")
        warn_nca_hinge(form)
        self.nca_form, self.nca_hinge = form, None


@functools.cache  # once per process: an experiment parses its config once per run
def warn_nca_hinge(form: str) -> None:
    get_logger(__name__).warning(f"method.nca_hinge is deprecated: read as nca_form: {form} (the NCA loss's default "
                                 f"is now nca_form: official). Write nca_form instead.")


def pod_spatial(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """POD-spatial over a list of stage outputs (N×C×H×W, or N×C for 1×1 'maps')."""
    losses = []
    for a, b in zip(student, teacher):
        if a.dim() == 2:
            a, b = a[:, :, None, None], b[:, :, None, None]
        a, b = a.pow(2), b.to(a.dtype).pow(2)
        pooled_a = torch.cat([a.sum(3).flatten(1), a.sum(2).flatten(1)], dim=1)  # width-, height-pooled
        pooled_b = torch.cat([b.sum(3).flatten(1), b.sum(2).flatten(1)], dim=1)
        losses.append((F.normalize(pooled_a, dim=1) - F.normalize(pooled_b, dim=1)).norm(dim=1).mean())
    return torch.stack(losses).mean()


def nca_loss(similarities: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, margin: float,
             form: NCAForm = "official") -> torch.Tensor:
    """The mean over the batch of PODNet's NCA loss per sample, with ``z_c = η ŷ_c`` and ``z_y = η(ŷ_y - δ)``:

    - ``official``: ``log(exp(max_c z_c) + Σ_{c≠y} exp z_c) - z_y`` (``max`` over every class, the ground truth
      included), what the authors' ``nca`` computes with ``hinge_proxynca: false``: it subtracts the row's
      maximum, then zeroes the ground truth's entry of the denominator before ``exp``, so ``exp(0)`` stays in
      the sum.  Never negative; the softmax cross-entropy over ``z`` when the ground truth has the largest ``z``;
    - ``plain``: ``log Σ_{c≠y} exp z_c - z_y``, the NCA as the paper writes it, unclipped (below 0 once the ground
      truth wins);
    - ``hinge``: ``plain`` clipped at 0 (the paper's ``[·]_+``, the authors' ``hinge_proxynca: true``).
    """
    scaled = scale * similarities
    positive = scaled.gather(1, labels[:, None])[:, 0] - scale * margin
    negatives = scaled.scatter(1, labels[:, None], float("-inf"))
    log_negatives = torch.logsumexp(negatives, dim=1)
    if form == "plain":
        return (log_negatives - positive).mean()
    if form == "hinge":
        return F.relu(log_negatives - positive).mean()
    largest = torch.maximum(positive, negatives.max(dim=1).values)
    return (torch.logaddexp(largest, log_negatives) - positive).mean()


class PODNet(CosineRehearsal):
    name = "podnet"
    description = "PODNet: pooled (width/height) distillation of every stage + local similarity classifier, " \
                  "class-balanced fine-tuning"
    paper = ("Douillard, Cord, Ollion, Robert & Valle, PODNet: Pooled Outputs Distillation for Small-Tasks "
             "Incremental Learning, ECCV 2020")
    Options = PODNetOptions
    primary_classifier = "head"

    @classmethod
    def make_head(cls, options: PODNetOptions, in_features: int) -> torch.nn.Module:
        return CosineHead(in_features, proxies=options.proxies, scale=1.0, distance=options.classifier_distance)

    def check(self, scenario: Scenario) -> None:
        super().check(scenario)
        if not hasattr(self.model.backbone, "forward_stages"):
            raise ConfigError(f"method podnet distils every stage's output; model backbone "
                              f"{type(self.model.backbone).__name__} does not expose them (forward_stages). "
                              f"Use a cilearn ResNet or the MLP.")

    @property
    def imprint(self) -> bool:
        return self.options.imprint

    def directions(self, features: torch.Tensor, proxies: int, label: int) -> torch.Tensor:
        """``proxies`` k-means centres of the class's normalised features (seeded per run and class),
        normalised; with fewer samples than proxies the centres repeat."""
        points = features.cpu().numpy()
        clusters = min(proxies, len(points))
        from sklearn.cluster import KMeans  # here: importing scikit-learn costs ~100 MB and 1.5 s

        kmeans = KMeans(n_clusters=clusters, n_init=1, random_state=self.context.seed * 1_000_003 + label)
        centres = torch.from_numpy(kmeans.fit(points).cluster_centers_).to(features)
        return F.normalize(centres, dim=1)[torch.arange(proxies) % clusters]

    def factor(self) -> float:
        return math.sqrt(len(self.task.seen_classes) / len(self.task.new_classes))

    # --- the balanced fine-tuning stage ---
    def stages(self, task: Task) -> list[Stage]:
        if task.index == 0 or not self.options.finetune_epochs:
            return [Stage()]
        # only the classifier trains (η too with finetune_scale), on the memory; the backbone is fixed (its
        # BatchNorm statistics too); the plain forward and the NCA loss alone: nothing to distil
        head = self.model.head
        finetune = Stage("finetune", epochs=self.options.finetune_epochs, lr=self.options.finetune_lr,
                         overrides={"milestones": [], "scheduler": "constant"}, data=self.balanced_data,
                         trains=[p for p in head.parameters() if self.options.finetune_scale or p is not head.scale],
                         forward=super().forward, loss=self.classifier_loss)
        return [Stage(), finetune]

    def balanced_data(self) -> ImageData:
        """The fine-tuning stage's data: the memory, given the new classes' exemplars first (selected with
        the network stage 1 trained)."""
        if not self.memory_has(self.task.new_classes):
            self.update_memory(self.task, self.task.train)
        return self.memory.as_data(self.task.train.class_names)

    def memory_has(self, classes) -> bool:
        return bool(np.isin(classes, self.memory.labels).all())

    def end_task(self, task: Task, train_data) -> None:
        if not self.memory_has(task.new_classes):
            self.update_memory(task, task.train)
        self.fitted.fit(self.memory)

    # --- the objective ---
    _stages: list[torch.Tensor] | None = None  # the stage outputs of the step's forward, for its loss

    def forward(self, batch: Batch) -> Output:
        if not self.teacher:
            return super().forward(batch)
        features, self._stages = self.model.features(batch.inputs, return_stages=True)
        return Output(features, self.model.head(features))

    def classifier_loss(self, out: Output, batch: Batch) -> torch.Tensor:
        """The local similarity classifier's NCA loss (the whole loss of the first task and of the fine-tuning)."""
        head = self.model.head
        return nca_loss(head.similarities(out.features), batch.labels, head.scale, self.options.nca_margin,
                        self.options.nca_form)

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        loss = self.classifier_loss(out, batch)
        if not self.teacher:
            return loss
        with torch.no_grad():
            teacher_features, teacher_stages = self.teacher.model.features(batch.inputs, return_stages=True)
        factor = self.factor()
        if self.options.pod_flat:
            loss = loss + self.options.pod_flat * factor * feature_distillation(out.features, teacher_features)
        if self.options.pod_spatial:
            loss = loss + self.options.pod_spatial * factor * pod_spatial(self._stages, teacher_stages)
        self._stages = None
        return loss
