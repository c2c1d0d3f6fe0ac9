"""iCaRL on Seq-MNIST as the DER paper's code ran it (Mammoth, 2020): the ablation behind the README's
"iCaRL is 3.6 above the paper" row.

Mammoth's ``models/icarl.py`` from its first public commit (7ab9db9, October 2020) to the "Reproduced iCaRL"
rewrite (eec9466, November 2024) differs from iCaRL (and from cilearn) in two ways that touch Seq-MNIST:

- ``--raw-features``: herding and the nearest-mean classifier use the features as they are: herding's cost
  ``‖μ − (S + f_i)/k‖`` on unnormalised features, class means of unnormalised features, prediction by squared
  Euclidean distance to them (iCaRL and cilearn L2-normalise features and means);
- ``--truncated-replay``: the exemplars that join a task's training data pass through
  ``buffer.examples[i].type(torch.uint8)`` (the MNIST branch of ``begin_task``; the CIFAR branch multiplies by
  255 first): pixels stored as floats in [0, 1] become 0, or 1 for a pixel of 255, i.e. a near-black image
  (at most 1/255) with the old class's label.  The class means still use the real exemplars.

This script applies either or both to cilearn's iCaRL (by replacing the functions involved, for this process
only) and runs ``configs/methods_mnist/icarl.yaml``; it prints the same table as ``cilearn run``:

    CILEARN_DATA=../shared/data python benchmarks/mammoth2020_icarl.py --raw-features --truncated-replay \\
        --seeds 0 1 2 3 4 5 6 7 8 9 --out runs/mammoth2020_icarl
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from cilearn.cli import main as cilearn_main
from cilearn.methods.parts import classifiers, components, memory, rehearsal
from cilearn.scenarios import concat

ROOT = Path(__file__).resolve().parents[1]


def raw_herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Mammoth 2020's herding: ``argmin_i ‖μ − (S + f_i)/k‖`` on the unnormalised features."""
    f = features.double()
    mu, chosen_sum = f.mean(0), torch.zeros(f.shape[1], dtype=f.dtype, device=f.device)
    taken = torch.zeros(len(f), dtype=torch.bool, device=f.device)
    picks = []
    for k in range(1, min(int(m), len(f)) + 1):
        cost = (mu - (f + chosen_sum) / k).norm(dim=1).masked_fill(taken, float("inf"))
        i = int(cost.argmin())
        picks.append(i)
        taken[i] = True
        chosen_sum += f[i]
    return torch.as_tensor(picks, dtype=torch.long, device=f.device)


def raw_means(features, labels, classes, flipped=None):
    labels = labels.to(features.device)
    return torch.stack([features.float()[labels == c].mean(0) for c in classes])


def use_raw_features() -> None:
    memory.herding = raw_herding
    components.exemplar_means = raw_means

    def fit_means(self, means, classes):
        self.means = means.float()
        self.classes = torch.as_tensor(classes, dtype=torch.long, device=means.device)
        return self

    def scores(self, features, logits=None):
        distance = torch.cdist(features.float(), self.means.to(features.device)).square()
        out = torch.full((len(features), int(self.classes.max()) + 1), float("-inf"), device=features.device)
        out[:, self.classes.to(features.device)] = -distance
        return out

    def predict(self, features, logits=None):
        distance = torch.cdist(features.float(), self.means.to(features.device))
        return self.classes.to(features.device)[distance.argmin(1)]

    classifiers.NearestMean.fit_means = fit_means
    classifiers.NearestMean.scores = scores
    classifiers.NearestMean.__call__ = predict


def use_truncated_replay() -> None:
    def training_data(self, task):
        if len(self.memory) == 0:
            return task.train
        stored = self.memory.as_data(task.train.class_names)
        truncated = dataclasses.replace(stored, images=(stored.images == 255).astype(stored.images.dtype))
        return concat([task.train, truncated])

    rehearsal.Rehearsal.training_data = training_data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-features", action="store_true", help="herding and NME on unnormalised features")
    parser.add_argument("--truncated-replay", action="store_true",
                        help="exemplars join the training data truncated to uint8 from [0, 1]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(ROOT / "configs/methods_mnist/icarl.yaml"))
    args = parser.parse_args()
    if args.raw_features:
        use_raw_features()
    if args.truncated_replay:
        use_truncated_replay()
    return cilearn_main(["run", args.config, "--seeds", *map(str, args.seeds), "--out", args.out])


if __name__ == "__main__":
    raise SystemExit(main())
