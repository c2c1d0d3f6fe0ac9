"""Evaluation: one inference pass over the test data seen so far, scored by every classifier."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.fx.experimental.optimization import fuse

from .. import metrics
from ..augment import BatchAugment, nchw_view
from ..data.base import joined
from ..distributed import Distributed
from ..methods.parts.classifiers import top_k_correct
from ..models.net import IncrementalNet
from ..runtime import autocast
from ..scenarios import Scenario


class Inference:
    """Batched, gradient-free feature and logit computation (large batches, ``inference_mode``).

    With ``precision="bf16"`` the network runs under bf16 autocast (the folded copy below is cast to bf16
    once instead); features and logits come back fp32, so herding, class means and every classifier compute
    in fp32.

    With ``fold_batchnorm`` (and more than one batch of images), the features come from an evaluation copy
    of the backbone in which every BatchNorm is folded into the convolution before it (``torch.fx``'s
    conv-BN fusion: the same function, one layer less; features equal to ~1e-5).  The copy is rebuilt
    whenever a weight or a BatchNorm statistic changed since it was made (the tensors' version counters
    tell), so it is always the model as it is now.  A backbone that ``torch.fx`` cannot trace, a model with
    its own ``features`` or a compiled one runs as it is.

    Under torchrun (``distributed``) the batches are dealt out round-robin: each process computes its own
    whole batches (the same batches, of the same size, that one process would run, so each sample's result
    is the same to the bit) and one all-reduce puts them together on every process (the others contribute
    zeros). Evaluation, herding and class means then take 1/N of the time on N processes. Every process
    calls it with the same images, as everything outside the gradient step is replicated."""

    def __init__(self, model: torch.nn.Module, augment: BatchAugment, device: torch.device, batch_size: int,
                 precision: str = "fp32", fold_batchnorm: bool = False, distributed: Distributed | None = None):
        self.model, self.augment, self.device, self.batch_size = model, augment, device, batch_size
        self.precision = precision
        self.fold_batchnorm = fold_batchnorm
        self.distributed = distributed
        self._folded: tuple[tuple, torch.nn.Module | None] | None = None  # (weights' versions, folded copy)

    def folds(self, n: int) -> bool:
        """Whether a pass over ``n`` images computes the features with the folded copy (when it pays: more than
        one batch).  Two passes of the same kind give an image the same features, whatever the other images of
        each pass (to the bit on the CPU, where a sample's result does not depend on its batch): a method may use
        an image's features from one pass in place of another's."""
        return (self.fold_batchnorm and n > self.batch_size
                and type(self.model).features is IncrementalNet.features)

    def _features_fn(self, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """What computes the features of ``n`` images: the folded copy when it pays, else the model."""
        model = self.model
        if not self.folds(n):
            return model.features
        backbone = model.backbone
        key = tuple((id(t), t._version) for t in backbone.state_dict(keep_vars=True).values())
        if self._folded is None or self._folded[0] != key:
            folded = fold_batchnorm(backbone)
            if folded is not None and self.precision == "bf16":
                # Cast once per copy instead of autocast re-casting every weight in every batch: the same bf16
                # products (bit-identical features and logits), a little less work per batch.
                folded = folded.to(torch.bfloat16)
            self._folded = (key, folded)
        folded = self._folded[1]
        if folded is None:
            return model.features
        if self.precision == "bf16":
            return lambda batch: folded(batch.to(torch.bfloat16))
        return folded

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits for uint8 images (NHWC numpy or NCHW tensor); ``flip`` mirrors them first."""
        if isinstance(images, np.ndarray):
            images = nchw_view(images, self.device)  # no NCHW copy: each batch is normalised into the model's layout
        was_training = self.model.training
        self.model.eval()
        features_of = self._features_fn(len(images))
        starts = range(0, len(images), self.batch_size)
        dist = self.distributed
        sharded = dist is not None and len(starts) >= dist.world  # every process has at least one batch
        features, logits = [], []
        for start in (starts[dist.rank::dist.world] if sharded else starts):
            batch = images[start:start + self.batch_size].to(self.device, non_blocking=True)
            if flip:
                batch = batch.flip(3)
            with autocast(self.precision, self.device):
                f = features_of(self.augment.normalize(batch))
                logits.append(self.model.head(f).float())
            features.append(f.float())
        self.model.train(was_training)
        if not features:
            dim = getattr(self.model, "feature_dim", 0)
            return torch.zeros(0, dim, device=self.device), torch.zeros(0, self.model.num_classes, device=self.device)
        if sharded:
            return self._gather(features, logits, len(images))
        return torch.cat(features), torch.cat(logits)

    def _gather(self, features: list[torch.Tensor], logits: list[torch.Tensor], n: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every process's batches in their places (features and logits side by side, one all-reduce)."""
        dist, width = self.distributed, features[0].shape[1]
        rows = torch.zeros(n, width + logits[0].shape[1], device=self.device)
        for i, start in enumerate(range(dist.rank * self.batch_size, n, dist.world * self.batch_size)):
            rows[start:start + len(features[i])] = torch.cat([features[i], logits[i]], dim=1)
        rows = dist.sum(rows)
        return rows[:, :width].contiguous(), rows[:, width:].contiguous()


def fold_batchnorm(backbone: torch.nn.Module) -> torch.nn.Module | None:
    """An evaluation-mode copy of ``backbone`` with each BatchNorm folded into its convolution, or None
    when ``torch.fx`` cannot trace it (or it is compiled)."""
    if hasattr(backbone, "_orig_mod") or getattr(backbone, "_compiled_call_impl", None) is not None:
        return None
    with warnings.catch_warnings():  # importing it imports torch.jit, which warns of its own deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
    try:
        return fuse(copy.deepcopy(backbone).eval(), inplace=True)
    except Exception:  # noqa: BLE001 - any tracing failure: run the backbone as it is
        return None


@dataclass
class TestSet:
    images: torch.Tensor   # uint8 NCHW on the device
    labels: np.ndarray
    segment: np.ndarray    # index of the task each sample belongs to


TOP5_MIN_CLASSES = 10  # top-5 accuracy is reported for datasets with at least this many classes


class Evaluator:
    """Scores a model after each task: accuracy matrix row, accuracy on everything seen, old/new split."""

    def __init__(self, scenario: Scenario, inference: Inference, max_feature_samples: int = 0, seed: int = 0,
                 quick_limit: int = 0,
                 task_context: Callable[[int], contextlib.AbstractContextManager | None] | None = None):
        self.scenario = scenario
        # a task-conditioned network (Method.task_context gives a context, not None): each task's test images are
        # scored in its own context; decided once, the method's answer does not change during a run
        conditioned = scenario.task_incremental and task_context is not None and task_context(0) is not None
        self.task_context = task_context if conditioned else None
        self.inference = inference
        self.all_tasks = scenario.kind == "domain_incremental"  # fixed label space: score every experience
        self.max_feature_samples = max_feature_samples
        self._cache: dict[int, TestSet] = {}
        self._quick: dict[int, TestSet] = {}
        self.seed = seed
        self.quick_limit = quick_limit

    def test_set(self, upto: int) -> TestSet:
        """Test data of tasks 0..upto (or of every task for domain streams), cached on the device."""
        key = len(self.scenario) - 1 if self.all_tasks else upto
        if key not in self._cache:
            tasks = self.scenario[: key + 1]
            images = joined([t.test.images for t in tasks])  # a view of consecutive tasks' test data: no copy
            self._cache = {key: TestSet(
                images=nchw_view(images, self.inference.device),
                labels=joined([t.test.labels for t in tasks]),
                segment=np.concatenate([np.full(len(t.test), t.index) for t in tasks]))}
        return self._cache[key]

    def seen_outputs(self, upto: int) -> int:
        """Outputs a prediction may choose after task ``upto``: the classes seen so far (a network with
        every class's output from the start never predicts a class it has not been taught)."""
        return len(self.scenario[upto].seen_classes)

    def quick_set(self, upto: int) -> TestSet:
        """The per-epoch evaluation's test data: with ``quick_limit``, a fixed sample of the test set of
        :meth:`test_set` with the same number of images from every (task, class) pair, else all of it."""
        data = self.test_set(upto)
        if upto not in self._quick:
            keep = balanced_sample(data.segment * self.scenario.num_classes + data.labels, self.quick_limit,
                                   self.seed)
            self._quick = {upto: data if keep is None else TestSet(
                images=data.images[torch.as_tensor(keep, device=data.images.device)],
                labels=data.labels[keep], segment=data.segment[keep])}
        return self._quick[upto]

    def quick(self, upto: int, sample: bool = True) -> tuple[float, float]:
        """(accuracy on the current task, on everything seen so far) with the network head, for the
        per-epoch log (on :meth:`quick_set`; ``sample=False``: on the whole test set)."""
        data = self.quick_set(upto) if sample else self.test_set(upto)
        _, logits = self._infer(data)
        logits = logits[:, : self.seen_outputs(upto)]
        preds = self._head_predictions(logits, data)
        correct = preds == data.labels
        seen = data.segment <= upto
        return float(correct[data.segment == upto].mean()), float(correct[seen].mean())

    def _infer(self, data: TestSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits of ``data``: one pass, or one per task when the network depends on the task."""
        if self.task_context is None:
            return self.inference(data.images)
        features = logits = None
        for index in np.unique(data.segment):
            rows = torch.as_tensor(np.flatnonzero(data.segment == index), device=data.images.device)
            with self.task_context(int(index)):
                f, z = self.inference(data.images[rows])
            if features is None:
                features = f.new_empty(len(data.labels), f.shape[1])
                logits = z.new_empty(len(data.labels), z.shape[1])
            features[rows.to(f.device)], logits[rows.to(z.device)] = f, z
        return features, logits

    def _head_predictions(self, logits: torch.Tensor, data: TestSet) -> np.ndarray:
        if self.scenario.task_incremental:  # the heads of the tasks seen (a full head has the later ones too)
            slices = [s for s in self.inference.model.head.task_slices if s.stop <= logits.shape[1]]
            return metrics.task_aware_predictions(logits.cpu().numpy(), data.segment, slices)
        return logits.argmax(1).cpu().numpy()

    def evaluate(self, upto: int, classifiers: dict) -> tuple[dict, dict]:
        """Full evaluation after task ``upto``: (JSON-able scores per classifier, arrays to save)."""
        data = self.test_set(upto)
        features, logits = self._infer(data)
        logits = logits[:, : self.seen_outputs(upto)]
        segments = range(len(self.scenario)) if self.all_tasks else range(upto + 1)
        seen = data.segment <= upto
        scores, arrays = {}, {"labels": data.labels, "segment": data.segment}
        predictions = {name: np.asarray(fn(features, logits).cpu()) for name, fn in classifiers.items()}
        if self.scenario.task_incremental:
            predictions["head_task_aware"] = self._head_predictions(logits, data)
        for name, preds in predictions.items():
            correct = preds == data.labels
            old = seen & (data.segment < upto)
            scores[name] = {
                "accuracy_row": [float(correct[data.segment == j].mean()) for j in segments],
                "seen_accuracy": float(correct[seen].mean()),
                "current_accuracy": float(correct[data.segment == upto].mean()),
                "old_accuracy": float(correct[old].mean()) if old.any() else None,
            }
            arrays[f"pred_{name}"] = preds.astype(np.int64)
            ranks = getattr(classifiers.get(name), "scores", None)
            if ranks is not None and self.scenario.num_classes >= TOP5_MIN_CLASSES:
                top5 = top_k_correct(ranks(features, logits), torch.as_tensor(data.labels), 5).cpu().numpy()
                scores[name]["top5_seen_accuracy"] = float(top5[seen].mean())
        if self.max_feature_samples:
            # A fixed seed (not a running RNG) so a resumed run saves the same samples.
            keep = np.sort(np.random.RandomState(self.seed).permutation(len(data.labels))[: self.max_feature_samples])
            arrays["feature_index"] = keep
            kept = features[torch.as_tensor(keep, device=features.device)]
            arrays["features"] = kept.cpu().numpy().astype(np.float32)
        return scores, arrays

    def exemplar_arrays(self, stored: dict | None) -> dict[str, np.ndarray] | None:
        """A method's stored samples (``Method.exemplars()``) with their features under the current model, for
        the report's exemplar grids and t-SNE (nothing is recomputed there); None when it stores none."""
        if not stored or not len(stored["labels"]):
            return None
        features = stored.get("features")  # a method may give them, computed under the current model
        arrays = {key: np.asarray(value) for key, value in stored.items() if key != "features"}
        if features is None:
            features = self.inference(arrays["images"])[0]
        arrays["features"] = torch.as_tensor(features).cpu().numpy().astype(np.float32)
        return arrays


def balanced_sample(groups: np.ndarray, limit: int, seed: int) -> np.ndarray | None:
    """Sorted indices of at most ``limit`` samples, ``limit // number of groups`` (at least 1) from each
    group, drawn by a fixed seeded order; None when ``limit`` is 0 or every sample fits."""
    if not limit or len(groups) <= limit:
        return None
    names = np.unique(groups)
    per_group = max(1, limit // len(names))
    shuffled = np.random.RandomState(seed).permutation(len(groups))
    grouped = shuffled[np.argsort(groups[shuffled], kind="stable")]  # by group, random order inside each
    starts = np.searchsorted(groups[grouped], names)
    ends = np.append(starts[1:], len(grouped))
    return np.sort(np.concatenate([grouped[s:min(s + per_group, e)] for s, e in zip(starts, ends)]))
