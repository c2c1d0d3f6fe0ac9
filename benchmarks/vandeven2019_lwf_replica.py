"""van de Ven & Tolias's LwF on split MNIST Class-IL (or Domain-IL), as their code trains it, written out plainly
without cilearn's loop: a second implementation to hold cilearn's ``lwf`` entry of
``configs/published/vandeven2019_split_mnist_class_il.yaml`` against (README, "Published results").

From GMvandeVen/continual-learning, branch ``preprints`` (``train.py`` replay_mode "current" with ``--distill``,
``encoder.py`` ``train_a_batch``, ``utils.py`` ``loss_fn_kd``): MLP 784-400-400-10 (ReLU), one Adam (lr 0.001)
for the whole sequence, batches of 128, 2000 iterations per task, pixels in [0, 1], digit ``y`` relabelled
``perm[y]`` (numpy's permutation after ``np.random.seed(seed)``), task k = labels 2k, 2k + 1. Each step:
``(1/t)·CE(y_hat[:, seen], y) + (1 − 1/t)·KD``, where KD replays the same batch through the model of the
previous task: ``−Σ q·log_softmax(y_hat[:, seen] / T)``, ``q`` = softmax(old logits / T) over the old classes
padded with zeros for the new ones, batch mean, × T², T = 2. ``--kd-outputs old`` gives the student's softmax over
the old classes only (Li & Hoiem's form) instead.

``--scenario domain``: their Domain-IL — two outputs shared by every task, the label the digit's place in its task
(``perm[y] mod 2``), the cross-entropy and the KD (the previous model's softmax over the same two outputs) both
over the two outputs; the same loss weights and optimizer. Against cilearn's ``lwf`` entry of
``configs/published/vandeven2019_split_mnist_domain_il.yaml``.

    CILEARN_DATA=../shared/data python benchmarks/vandeven2019_lwf_replica.py --seeds 1 2 3 4 5
    CILEARN_DATA=../shared/data python benchmarks/vandeven2019_lwf_replica.py --scenario domain --seeds 1 2 3

prints, per seed, each task's accuracy after the last task and their task mean (%).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cilearn.data import load_dataset


def distill(scores: torch.Tensor, old_scores: torch.Tensor, temperature: float, pad: bool) -> torch.Tensor:
    if not pad:
        scores = scores[:, : old_scores.shape[1]]
    q = F.softmax(old_scores / temperature, dim=1)
    q = torch.cat([q, q.new_zeros(len(q), scores.shape[1] - q.shape[1])], dim=1)
    return -(q * F.log_softmax(scores / temperature, dim=1)).sum(1).mean() * temperature ** 2


def relabelled(splits, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat [0, 1] pixels and their labels ``perm[y]`` (numpy's permutation after ``np.random.seed(seed)``):
    ``x_train, y_train, x_test, y_test``."""
    np.random.seed(seed)
    perm = np.random.permutation(list(range(splits.train.num_classes)))
    x_train = torch.tensor(splits.train.images, dtype=torch.float32).flatten(1) / 255.0
    x_test = torch.tensor(splits.test.images, dtype=torch.float32).flatten(1) / 255.0
    return x_train, torch.tensor(perm[splits.train.labels]), x_test, torch.tensor(perm[splits.test.labels])


def task_batches(pool: torch.Tensor, iterations: int, generator: torch.Generator, size: int = 128):
    """``iterations`` batches of indices from ``pool``: shuffled passes, each one's last partial batch dropped (their
    data loader, re-created when exhausted)."""
    order, position = pool[torch.randperm(len(pool), generator=generator)], 0
    for _ in range(iterations):
        if position + size > len(order):
            order, position = pool[torch.randperm(len(pool), generator=generator)], 0
        yield order[position:position + size]
        position += size


def task_accuracies(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, targets: torch.Tensor,
                    tasks: int, per_task: int) -> list[float]:
    """Each task's test accuracy of the model's argmax over all its outputs."""
    with torch.no_grad():
        predicted = model(x_test).argmax(1)
    return [float((predicted[y_test // per_task == k] == targets[y_test // per_task == k]).float().mean())
            for k in range(tasks)]


def report(seeds: list[int], per_seed) -> None:
    """Runs ``per_seed(seed)`` (a list of task accuracies) for each seed, prints them and their task mean, then the
    mean ± SEM over the seeds."""
    means = []
    for seed in seeds:
        accuracies = per_seed(seed)
        means.append(100 * float(np.mean(accuracies)))
        print(f"seed {seed}: " + " ".join(f"{100 * a:.1f}" for a in accuracies) + f"  task mean {means[-1]:.2f}",
              flush=True)
    if len(means) > 1:
        sem = np.std(means, ddof=1) / len(means) ** 0.5
        print(f"task mean over seeds {seeds}: {np.mean(means):.2f} ± {sem:.2f} (± SEM)")


def run(splits, seed: int, iterations: int, pad: bool, temperature: float = 2.0, per_task: int = 2,
        domain: bool = False) -> list[float]:
    num_classes = splits.train.num_classes
    x_train, y_train, x_test, y_test = relabelled(splits, seed)
    # Domain-IL: the same two outputs for every task, labelled by the digit's place in its task
    outputs = per_task if domain else num_classes
    t_train, t_test = (y_train % per_task, y_test % per_task) if domain else (y_train, y_test)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x_train.shape[1], 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(),
                          nn.Linear(400, outputs))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.999))
    generator = torch.Generator().manual_seed(seed)
    previous = None
    tasks = num_classes // per_task
    for task in range(1, tasks + 1):
        seen = list(range(outputs if domain else per_task * task))
        old = outputs if domain else per_task * (task - 1)  # the previous model's outputs the KD matches
        pool = torch.nonzero(y_train // per_task == task - 1).flatten()
        for batch in task_batches(pool, iterations, generator):
            y_hat = model(x_train[batch])[:, seen]
            loss = F.cross_entropy(y_hat, t_train[batch])
            if previous is not None:
                with torch.no_grad():
                    old_scores = previous(x_train[batch])[:, :old]
                loss = loss / task + (1 - 1 / task) * distill(y_hat, old_scores, temperature, pad)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        previous = copy.deepcopy(model).eval()
    return task_accuracies(model, x_test, y_test, t_test, tasks, per_task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--dataset", default="mnist", help="a cilearn dataset name (tests: digits)")
    parser.add_argument("--kd-outputs", choices=["seen", "old"], default="seen")
    parser.add_argument("--scenario", choices=["class", "domain"], default="class")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.dataset)
    report(args.seeds, lambda seed: run(splits, seed, args.iterations, args.kd_outputs == "seen",
                                        domain=args.scenario == "domain"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
