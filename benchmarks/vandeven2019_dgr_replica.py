"""van de Ven & Tolias's DGR and DGR+distill on split MNIST Class-IL, as their code trains them, written out plainly
without cilearn's loop or its VAE: a second implementation to hold cilearn's ``dgr`` entries of
``configs/published/vandeven2019_split_mnist_class_il.yaml`` against (README, "Published results").

From GMvandeVen/continual-learning, branch ``preprints`` (``train.py`` ``train_cl`` with replay "generative",
``encoder.py`` and ``vae_models.py`` ``train_a_batch``, ``utils.py`` ``loss_fn_kd``), with their split-MNIST
defaults: classifier MLP 784-400-400-10 (ReLU); a separate generator, their ``AutoEncoder`` with the classifier's
layers (encoder 784-400-400, z 100: a Linear to the mean and one without bias to the log-variance; decoder
100-400-400-784, ReLUs, sigmoid pixels); each with its own Adam (lr 0.001, betas 0.9/0.999) for the whole
sequence; batches of 128, 2000 iterations per task; pixels in [0, 1]; digit ``y`` relabelled ``perm[y]``, task k
the labels 2k, 2k + 1; the global torch generator seeded with the seed before the models are built (as their
``main.py``), which also draws the replayed z and the VAE's noise.

Every step of task t ≥ 2: 128 images decoded from z ~ N(0, I) by the generator as it was after task t − 1, scored
by the classifier of that time over the old classes; the classifier minimises (1/t)·CE(y_hat[:, seen], y) +
(1 − 1/t)·L_replay over the seen outputs (DGR: CE with the old scores' argmax; DGR+distill: their loss_fn_kd at
T 2, the old softmax padded with zeros, × T²); then the generator takes a step on (1/t)·VAE(x) + (1 − 1/t)·VAE(x_),
VAE = BCE averaged over the pixels (their ``F.binary_cross_entropy`` on the sigmoid) + KL summed over z and divided
by the pixels, each averaged over the batch.

    CILEARN_DATA=../shared/data python benchmarks/vandeven2019_dgr_replica.py --seeds 1 2 3
    CILEARN_DATA=../shared/data python benchmarks/vandeven2019_dgr_replica.py --distill --seeds 1 2 3

prints, per seed, each task's accuracy after the last task and their task mean (%). About 4 min per seed on one
thread.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vandeven2019_lwf_replica import distill, relabelled, report, task_accuracies, task_batches  # noqa: E402

from cilearn.data import load_dataset  # noqa: E402


class Generator(nn.Module):
    """Their ``AutoEncoder`` as a separate generator (no batch norm, no dropout; its unused classifier left out:
    it gets no gradient, so Adam never moves it)."""

    def __init__(self, pixels: int, hidden: int = 400, z_dim: int = 100) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.to_mean = nn.Linear(hidden, z_dim)
        self.to_logvar = nn.Linear(hidden, z_dim, bias=False)
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, pixels), nn.Sigmoid())

    @torch.no_grad()
    def sample(self, count: int) -> torch.Tensor:
        return self.decoder(torch.randn(count, self.z_dim))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(x)
        mean, logvar = self.to_mean(hidden), self.to_logvar(hidden)
        z = torch.randn_like(mean) * torch.exp(0.5 * logvar) + mean
        reconstruction = F.binary_cross_entropy(self.decoder(z), x, reduction="none").mean(1).mean()
        kl = (-0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(1)).mean()
        return reconstruction + kl / x.shape[1]


def replay_loss(scores: torch.Tensor, old_scores: torch.Tensor, soft: bool, temperature: float) -> torch.Tensor:
    """DGR: CE with the previous model's most likely old class; DGR+distill: their KD, padded with zeros."""
    if soft:
        return distill(scores, old_scores, temperature, pad=True)
    return F.cross_entropy(scores, old_scores.argmax(1))


def run(splits, seed: int, iterations: int, soft: bool, temperature: float = 2.0, per_task: int = 2
        ) -> list[float]:
    num_classes = splits.train.num_classes
    x_train, y_train, x_test, y_test = relabelled(splits, seed)
    torch.manual_seed(seed)
    pixels = x_train.shape[1]
    model = nn.Sequential(nn.Linear(pixels, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(),
                          nn.Linear(400, num_classes))
    generator = Generator(pixels)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.999))
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=0.001, betas=(0.9, 0.999))
    data_order = torch.Generator().manual_seed(seed)
    previous = previous_generator = None
    tasks = num_classes // per_task
    for task in range(1, tasks + 1):
        seen = list(range(per_task * task))
        share = 1.0 / task
        pool = torch.nonzero(y_train // per_task == task - 1).flatten()
        for batch in task_batches(pool, iterations, data_order):
            x, y = x_train[batch], y_train[batch]
            replayed = old_scores = None
            if previous is not None:
                replayed = previous_generator.sample(len(batch))
                with torch.no_grad():
                    old_scores = previous(replayed)[:, : per_task * (task - 1)]
            loss = F.cross_entropy(model(x)[:, seen], y)
            if replayed is not None:
                loss = share * loss + (1 - share) * replay_loss(model(replayed)[:, seen], old_scores, soft,
                                                                temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            generator_loss = generator.loss(x)
            if replayed is not None:
                generator_loss = share * generator_loss + (1 - share) * generator.loss(replayed)
            generator_optimizer.zero_grad()
            generator_loss.backward()
            generator_optimizer.step()
        previous = copy.deepcopy(model).eval()
        previous_generator = copy.deepcopy(generator).eval()
    return task_accuracies(model, x_test, y_test, y_test, tasks, per_task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--distill", action="store_true", help="DGR+distill: soft targets at temperature 2")
    parser.add_argument("--dataset", default="mnist", help="a cilearn dataset name (tests: digits)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.dataset)
    report(args.seeds, lambda seed: run(splits, seed, args.iterations, args.distill))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
