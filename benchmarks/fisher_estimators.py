"""EWC's Fisher on the MNIST MLP: the closed form for Linear layers against per-sample gradients with vmap.

Times ``per_sample_gradient_mean`` (squared gradients of the log-likelihood of the predicted label, as EWC's
``fisher: predicted``) both ways on random 28×28 images through cilearn's MLP (784-400-400-10), alternating the
two ``--rounds`` times (the machine's speed drifts), and prints the median seconds of each, their ratio and the
largest relative difference between the two estimates.

    python benchmarks/fisher_estimators.py --samples 12000 --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from cilearn.methods.parts import importance
from cilearn.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=12000, help="images (12 000: one split-MNIST task)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("mlp", 1, 28, hidden=[400, 400])
    model.add_classes(10)
    images = np.random.RandomState(0).randint(0, 256, (args.samples, 28, 28, 1), dtype=np.uint8)
    labels = torch.randint(0, 10, (args.samples,))

    def log_likelihood(logits, target):
        return -F.cross_entropy(logits, target)

    def estimate():
        return importance.per_sample_gradient_mean(model, images, labels, log_likelihood, lambda x: x.float() / 255,
                                                   "square", 64, torch.device("cpu"))

    linear_layers = importance._trained_linear_layers
    times: dict[str, list[float]] = {"closed_form": [], "vmap": []}
    results = {}
    for _ in range(args.rounds):
        for name in times:
            importance._trained_linear_layers = linear_layers if name == "closed_form" else (lambda model: None)
            started = time.perf_counter()
            results[name] = estimate()
            times[name].append(time.perf_counter() - started)
    importance._trained_linear_layers = linear_layers
    gap = max(((results["closed_form"][n] - results["vmap"][n]).abs().max() / results["vmap"][n].abs().max()).item()
              for n in results["vmap"])
    closed, vmapped = statistics.median(times["closed_form"]), statistics.median(times["vmap"])
    print(f"{args.samples} samples, {args.threads} thread(s), median of {args.rounds}: closed form {closed:.2f} s, "
          f"vmap {vmapped:.2f} s, ratio {vmapped / closed:.0f}x; largest relative difference {gap:.1e}")


if __name__ == "__main__":
    main()
