"""Test-time classifiers: the network head and those built on a method's exemplar memory.

Each is a callable ``(features, logits) -> predicted labels`` (the shape ``Method.classifiers()``
returns).  A classifier that can rank every class also has ``scores(features, logits) -> (N, C)`` (higher =
more likely; column ``c`` = label ``c``, ``-inf`` for a class it cannot predict); the evaluation then
reports its top-5 accuracy beside the top-1.

- :class:`HeadClassifier` (``head``): the network's own output layer, ranking classes by their logits;
- :class:`NearestMean` (``nme``, iCaRL): the class whose (L2-normalised) exemplar mean is closest,
  ranking classes by negative distance (the ordering iCaRL's code uses for its scores);
- :class:`SklearnClassifier` (``knn``, ``svm``, ``mlp``): scikit-learn models trained on the
  L2-normalised exemplar features (top-1 only).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...schema import unknown_choice

CLASSIFIERS = ("nme", "head", "knn", "svm", "mlp")
MEMORY_CLASSIFIERS = ("nme", "knn", "svm", "mlp")  # fitted on exemplars: need a memory
SKLEARN_CLASSIFIERS = ("knn", "svm", "mlp")


def check_classifiers(names: list[str], has_memory: bool, method: str, where: str = "method.classifiers") -> None:
    """Refuse unknown names, an empty list, repeats, and memory-based classifiers without a memory."""
    if not names:
        raise ConfigError(f"{where}: give at least one classifier, e.g. [head].")
    for name in names:
        if name not in CLASSIFIERS:
            raise unknown_choice("classifier", name, CLASSIFIERS, where)
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: {names} names a classifier twice.")
    needs = [n for n in names if n in MEMORY_CLASSIFIERS]
    if needs and not has_memory:
        what = ("the nearest-mean-of-exemplars classifier (nme)" if "nme" in needs
                else f"the {'/'.join(needs)} classifier")
        raise ConfigError(f"{where}: {what} needs an exemplar memory, which {method} does not keep; "
                          f"use icarl (or a method with a memory), or classifiers: [head].")


class HeadClassifier:
    """The network's output layer: predicts the largest logit, ranks classes by their logits."""

    def __call__(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1)

    def scores(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def __repr__(self) -> str:
        return "HeadClassifier()"


def top_k_correct(scores: torch.Tensor, labels: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Whether each sample's label is among the ``k`` highest scores of its row (bool, shape N)."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top == labels.to(top.device)[:, None]).any(1)


class NearestMean:
    """Nearest-mean-of-exemplars: predict the class whose mean is closest to the L2-normalised feature."""

    def __init__(self) -> None:
        self.means: torch.Tensor | None = None   # (classes, d), L2-normalised
        self.classes: torch.Tensor | None = None  # label of each row

    def fit_means(self, means: torch.Tensor, classes: torch.Tensor | list[int]) -> NearestMean:
        self.means = F.normalize(means.float(), dim=1)
        self.classes = torch.as_tensor(classes, dtype=torch.long, device=means.device)
        return self

    def __call__(self, features: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        if self.means is None:
            raise RuntimeError("NearestMean used before its class means were computed")
        f = F.normalize(features.float(), dim=1)
        distance = torch.cdist(f, self.means.to(f.device))
        return self.classes.to(f.device)[distance.argmin(1)]

    def scores(self, features: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Negative distance to each class mean; ``-inf`` for labels without a mean."""
        if self.means is None:
            raise RuntimeError("NearestMean used before its class means were computed")
        f = F.normalize(features.float(), dim=1)
        classes = self.classes.to(f.device)
        scores = torch.full((len(f), int(classes.max()) + 1), float("-inf"), device=f.device)
        scores[:, classes] = -torch.cdist(f, self.means.to(f.device))
        return scores

    def state_dict(self) -> dict:
        return {} if self.means is None else {"means": self.means.cpu(), "classes": self.classes.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if state:  # the saved means are normalised already: normalising again can move their last bit
            self.means = state["means"].float()
            self.classes = torch.as_tensor(state["classes"], dtype=torch.long)


def exemplar_means(features: torch.Tensor, labels: torch.Tensor, classes: list[int],
                   flipped: torch.Tensor | None = None) -> torch.Tensor:
    """iCaRL's class means: each exemplar's L2-normalised feature (averaged with its mirror image's,
    when ``flipped`` is given) averaged per class, then re-normalised.  Returns (len(classes), d)."""
    f = F.normalize(features.float(), dim=1)
    if flipped is not None:
        f = (f + F.normalize(flipped.float(), dim=1)) / 2
    labels = labels.to(f.device)
    means = torch.stack([f[labels == c].mean(0) for c in classes])
    return F.normalize(means, dim=1)


def make_sklearn(name: str, seed: int = 0, n_samples: int | None = None):
    """An unfitted scikit-learn estimator for ``knn`` (k=5), ``svm`` (RBF, C=1) or ``mlp``."""
    if name == "knn":
        from sklearn.neighbors import KNeighborsClassifier
        k = 5 if n_samples is None else max(1, min(5, n_samples))
        return KNeighborsClassifier(n_neighbors=k)
    if name == "svm":
        from sklearn.svm import SVC
        return SVC(kernel="rbf", C=1.0)
    if name == "mlp":
        from sklearn.neural_network import MLPClassifier
        return MLPClassifier(hidden_layer_sizes=(100,), solver="adam", learning_rate_init=1e-3,
                             max_iter=200, random_state=seed)
    raise ValueError(f"unknown scikit-learn classifier {name!r}; use one of {SKLEARN_CLASSIFIERS}")


class SklearnClassifier:
    """A scikit-learn model on L2-normalised features, refitted on the exemplars after every task."""

    def __init__(self, name: str, seed: int = 0) -> None:
        self.name, self.seed = name, seed
        self.model = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor | np.ndarray) -> SklearnClassifier:
        x = F.normalize(features.float(), dim=1).cpu().numpy()
        y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        self.model = make_sklearn(self.name, self.seed, len(y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLP ConvergenceWarning at max_iter: expected, not news
            self.model.fit(x, y)
        return self

    def __call__(self, features: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError(f"{self.name} classifier used before it was fitted")
        x = F.normalize(features.float(), dim=1).cpu().numpy()
        return torch.as_tensor(self.model.predict(x), dtype=torch.long)
