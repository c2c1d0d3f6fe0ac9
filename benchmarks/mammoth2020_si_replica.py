"""The DER paper's SI on Seq-MNIST, as Mammoth's code of the paper's date trains it, written out plainly without
cilearn's loop: a second implementation to hold ``configs/methods_mnist/si.yaml`` against (README, "Methods on
Seq-MNIST": cilearn's row sits 1.0 above the paper's 19.27).

From aimagelab/mammoth at its first public commit (7ab9db9, October 2020): ``models/si.py``, ``utils/training.py``,
``backbone/MNISTMLP.py``, ``datasets/seq_mnist.py``, ``utils/best_args.py`` (seq-mnist, si: lr 0.1, c 1.0, xi 0.9,
batch 10, one epoch). MNIST in 5 tasks of 2 digits in order, pixels in [0, 1]; MLP 784-100-100-10 (ReLU),
Xavier-uniform weights and zero biases; one plain SGD for the whole sequence. Each step: ``CE(all 10 outputs) +
c·Σ Ω (θ − θ*)²`` (no penalty in the first task), every gradient clipped to [−1, 1], an SGD step, then ``ω += lr·g²``
with ``g`` the clipped gradient of the whole objective. At a task's end ``Ω += ω / ((θ − θ*)² + ξ)``, ``θ* ← θ``,
``ω ← 0``. Accuracy after the last task: per task, the argmax over all 10 outputs; their mean (Mammoth's
``mean_acc``). ``--c 0`` is fine-tuning at the same lr.

    CILEARN_DATA=../shared/data python benchmarks/mammoth2020_si_replica.py --seeds 0 1 2 3 4 5 6 7 8 9

prints, per seed, each task's accuracy after the last task and their task mean (%), then the mean ± std (ddof 1,
as the paper's ± over its runs).
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from cilearn.data import load_dataset
from cilearn.models.mlp import xavier_uniform_zero_bias


def xavier_mlp(inputs: int, outputs: int) -> nn.Sequential:
    """Mammoth's MNISTMLP: every Linear initialised by its ``xavier()`` (cilearn's copy of that rule, tested in
    tests/test_models.py; the loop, not the initialisation, is what this script checks)."""
    model = nn.Sequential(nn.Linear(inputs, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, outputs))
    return model.apply(xavier_uniform_zero_bias)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def consolidate(big_omega: torch.Tensor | None, small_omega: torch.Tensor, now: torch.Tensor, checkpoint: torch.Tensor,
                xi: float) -> torch.Tensor:
    """Mammoth's ``end_task``: ``Ω += ω / ((θ − θ*)² + ξ)`` (Ω starts at zero)."""
    delta = small_omega / ((now - checkpoint).square() + xi)
    return delta if big_omega is None else big_omega + delta


def run(splits, seed: int, c: float, xi: float, lr: float, batch: int, per_task: int = 2) -> list[float]:
    torch.manual_seed(seed)
    x_train = torch.tensor(splits.train.images, dtype=torch.float32).flatten(1) / 255.0
    y_train = torch.tensor(splits.train.labels, dtype=torch.long)
    x_test = torch.tensor(splits.test.images, dtype=torch.float32).flatten(1) / 255.0
    y_test = torch.tensor(splits.test.labels, dtype=torch.long)
    classes = int(y_train.max()) + 1
    model = xavier_mlp(x_train.shape[1], classes)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr)
    checkpoint = flat(params).detach().clone()
    big_omega, small_omega = None, torch.zeros_like(checkpoint)
    generator = torch.Generator().manual_seed(seed)
    for task in range(classes // per_task):
        pool = torch.nonzero(y_train // per_task == task).flatten()
        order = pool[torch.randperm(len(pool), generator=generator)]  # one epoch, shuffled, the last batch kept
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            if big_omega is not None:
                loss = loss + c * (big_omega * (flat(params) - checkpoint).square()).sum()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_value_(params, 1)
            optimizer.step()
            small_omega += lr * flat(p.grad for p in params).square()
        with torch.no_grad():
            now = flat(params)
            big_omega = consolidate(big_omega, small_omega, now, checkpoint, xi)
            checkpoint, small_omega = now.clone(), torch.zeros_like(now)
    with torch.no_grad():
        predicted = model(x_test).argmax(1)
    task_of = y_test // per_task
    return [100.0 * float((predicted[task_of == t] == y_test[task_of == t]).float().mean())
            for t in range(classes // per_task)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--c", type=float, default=1.0)
    parser.add_argument("--xi", type=float, default=0.9)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", default="mnist", help="mnist (the paper's); digits for a quick check")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.dataset)
    means = []
    for seed in args.seeds:
        accuracies = run(splits, seed, args.c, args.xi, args.lr, args.batch)
        means.append(statistics.mean(accuracies))
        print(f"seed {seed}: tasks " + " ".join(f"{a:.2f}" for a in accuracies) + f" -> task mean {means[-1]:.2f}",
              flush=True)
    spread = statistics.stdev(means) if len(means) > 1 else 0.0
    print(f"task mean over seeds {args.seeds}: {statistics.mean(means):.2f} ± {spread:.2f} (std)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
