"""Avalanche 0.6.0's own ICaRL strategy on cilearn's benchmark protocol (``configs/bench_protocol.yaml``), one seed per
invocation, to measure Avalanche's seed-to-seed spread of NME accuracy with as many seeds as wanted.

Runs in its own virtual environment, not the project's (Avalanche pins its own dependencies)::

    python3 -m venv /work/avl/venv
    /work/avl/venv/bin/pip install torch==2.14.1 torchvision==0.29.1 avalanche-lib==0.6.0
    /work/avl/venv/bin/python benchmarks/avalanche_icarl.py --data ../shared/data --seed 0 --threads 1 \\
        --out runs/avalanche/seed0/metrics.json
    /work/avl/venv/bin/python benchmarks/avalanche_icarl.py --data ../shared/data --seed 0 --threads 1 \\
        --out /tmp/avl_smoke.json --smoke          # a quick check of the pipeline, not a measurement

The JSON holds ``seed``, ``seen_accuracy`` (NME accuracy over the test images of every class seen so far, after
each task, as fractions), ``average_incremental_accuracy`` (their mean), ``last_accuracy``, times and versions; it
also has the shape of a cilearn ``metrics.json`` (``complete``, ``classifiers.nme``), so a folder per seed with
``--out DIR/seedS/metrics.json`` can be compared directly:
``python benchmarks/seed_spread.py 'cilearn=RUNS/protocol/seed*' 'avalanche=DIR/seed*'``.

What is Avalanche's and what is cilearn's here
----------------------------------------------
Avalanche's: the benchmark (``nc_benchmark``), the strategy (``avalanche.training.supervised.ICaRL``: its training
loop, ``ICaRLLossPlugin``'s BCE + distillation, its herding, exemplar memory and class means), the network
(``make_icarl_net(num_classes=10)``: iCaRL's ResNet-32, option-A shortcuts, no ReLU after the last block, 10
outputs from the start) and its evaluation classifier (``NCMClassifier(normalize=True)``). cilearn's: only the
decoded images and their normalisation, so that the two libraries see the same pixels:

- Images: ``cilearn.data.imagefolder.load_cifar10_jpeg`` (imported from this checkout), i.e. exactly the uint8
  arrays ``cilearn run`` trains on (Pillow's decode of ``cifar10-jpeg/cifar10-jpeg.tar.gz``, labels in
  ``classes.json``'s order, which is what the class order [4, 2, 7, 6, 0, 3, 5, 8, 9, 1] refers to), read from or
  written to cilearn's decode cache (``CILEARN_CACHE`` or ``~/.cache/cilearn``; nothing is written to the repo).
- Normalisation: cilearn's for ``cifar10_jpeg``: per-channel mean/std standardisation with the mean and std of all
  50,000 training images (``cilearn.scenarios.channel_stats``, as ``class_incremental`` computes them), after
  scaling to [0, 1] by ``x * (1/255)`` as ``cilearn.augment.BatchAugment.normalize`` does.
- Augmentation (training images): cilearn's ``crop_flip``: a random 32×32 window of the image zero-padded by 4
  pixels (black: padded *before* normalisation, as cilearn pads the uint8 image), then a horizontal flip with
  probability 0.5; torchvision's ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()`` applied per image by
  Avalanche's dataset transforms (torch's global generator). Test images: scaling and normalisation only.
- ``buffer_transform`` (what Avalanche's ICaRL applies to replayed exemplars): the same augmentation. Avalanche
  stores exemplars *after* the eval transform (normalised tensors), so a plain ``RandomCrop(padding=4)`` there
  would pad with 0 in normalised units (the mean colour, not black); the buffer transform therefore undoes the
  normalisation, crops with black padding, flips and normalises again (equal to the new data's augmentation up to
  float rounding).

Other choices:

- Seeding: ``RNGManager.set_random_seeds(seed)`` (Avalanche's way: Python ``random``, numpy and torch, CPU and
  CUDA) once, before the benchmark and the network are built; ``nc_benchmark(seed=seed)`` too (unused with a
  fixed class order). Class labels stay the dataset's (``class_ids_from_zero_*`` left False): with 10 outputs from
  the start, which output a class has does not matter.
- Network initialisation: ``--init pytorch`` (default) is ``make_icarl_net`` as it comes (PyTorch's default layer
  initialisation); ``--init icarl`` applies ``initialize_icarl_net`` afterwards, as Avalanche's iCaRL example
  and tests do.
- Optimiser: ``SGD(lr 0.1, momentum 0.9, weight_decay 2e-4)`` over every parameter (biases and BatchNorm
  included, as cilearn's protocol), constant lr, no scheduler plugin. One optimiser for the whole run, as
  Avalanche's template does: its momentum buffers carry over from one experience to the next (cilearn makes a
  fresh optimiser per task).
- Loaders: ``num_workers=0`` everywhere (training, herding, evaluation); Avalanche's default training loader
  (shuffled, last partial batch kept). No evaluation during training (``eval_every=-1``).
- Evaluation after each task: the network's eval path (``TrainEvalModel`` in eval mode → ``NCMClassifier``) on
  every test experience seen so far through Avalanche's own eval datasets (``exp.dataset.eval()``), batch 256,
  counted over the union of those test images (correct / total, not a mean of per-experience accuracies).
  ``seen_accuracy`` is Avalanche's NME as it is: the argmax over all 10 outputs. Avalanche's ICaRL gives every
  class not seen yet a zero class mean, at distance 1 from any L2-normalised feature, so a test image farther
  than that (cosine < 0.5) from every seen class's mean is predicted as an unseen class and counted wrong.
  ``classifiers.nme_seen_classes`` (diagnostic) is the argmax over the seen classes only, as cilearn's NME, and
  ``unseen_predictions`` counts the images that went to an unseen class; ``classifiers.head`` (diagnostic) is the
  training head's argmax over the seen classes (cilearn's ``head`` classifier). ``--smoke`` also runs Avalanche's
  ``strategy.eval`` with its ``accuracy_metrics(stream=True)`` and checks the stream accuracy equals ours.
- ``exemplars_per_class``: how many exemplars each seen class has after each task. Avalanche's herding loop stops
  after 1000 iterations and an iteration that lands on an image already chosen adds nothing, so a class can get
  fewer than ``ceil(memory_size / classes seen)`` (1000 after the first task); the quota is a ceiling, so the
  memory can exceed 2000 (6 classes × 334).
- ``--smoke``: the first 150 training and 100 test images of each class (in cilearn's order), 1 epoch, memory 200
  (so that the memory's selection and shrinking are exercised); not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CLASS_ORDER = [4, 2, 7, 6, 0, 3, 5, 8, 9, 1]
N_EXPERIENCES = 5


class ArrayImages(torch.utils.data.Dataset):
    """uint8 NHWC images + labels as (uint8 CHW tensor, label); ``targets`` for Avalanche's benchmark."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.targets = [int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1), self.targets[index]


class ToUnit:
    """uint8 → float32 in [0, 1], as cilearn's ``BatchAugment.normalize`` scales (``x * (1/255)``)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(1.0 / 255)


def transforms_for(mean: tuple[float, ...], std: tuple[float, ...]):
    """(train, eval, buffer) transforms: cilearn's crop_flip and normalisation (see the module docstring)."""
    from torchvision import transforms as T

    normalize = T.Normalize(mean, std)
    augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    train = T.Compose([ToUnit(), *augment, normalize])
    evaluate = T.Compose([ToUnit(), normalize])
    # exemplars are stored normalised: back to [0, 1] so the padding is black, as for the new data
    unnormalize = T.Normalize([-m / s for m, s in zip(mean, std)], [1 / s for s in std])
    buffer = T.Compose([unnormalize, *augment, normalize])
    return train, evaluate, buffer


def load_data(root: Path, smoke: bool, workers: int):
    """cilearn's decoded CIFAR-10 (JPEG) and its normalisation statistics (over all 50,000 training images)."""
    sys.path.insert(0, str(ROOT))
    from cilearn.data.imagefolder import load_cifar10_jpeg
    from cilearn.scenarios import channel_stats

    splits = load_cifar10_jpeg(root, workers=workers)
    mean, std = channel_stats(splits.train.images)
    train, test = splits.train, splits.test
    if smoke:
        def first(labels: np.ndarray, k: int) -> np.ndarray:
            return np.concatenate([np.flatnonzero(labels == c)[:k] for c in range(10)])
        keep_train, keep_test = first(train.labels, 150), first(test.labels, 100)
        return (ArrayImages(train.images[keep_train], train.labels[keep_train]),
                ArrayImages(test.images[keep_test], test.labels[keep_test]), mean, std)
    return ArrayImages(train.images, train.labels), ArrayImages(test.images, test.labels), mean, std


@torch.no_grad()
def nme_accuracy(strategy, experiences, seen: list[int], batch_size: int) -> dict:
    """The network's eval path (NCM) over the union of the experiences' test images."""
    model = strategy.model
    was_training = model.training
    model.eval()
    seen_mask = torch.full((10,), float("-inf"))
    seen_mask[seen] = 0.0
    correct = correct_seen = correct_head = unseen = total = 0
    for exp in experiences:
        loader = torch.utils.data.DataLoader(exp.dataset.eval(), batch_size=batch_size, shuffle=False, num_workers=0)
        for x, y, _ in loader:
            features = model.feature_extractor(x.to(strategy.device))
            out = model.eval_classifier(features).cpu()  # what model(x) returns in eval mode
            head = model.train_classifier(features).cpu()
            correct_head += int(((head[:, :10] + seen_mask).argmax(1) == y).sum())
            pred = out.argmax(1)
            correct += int((pred == y).sum())
            unseen += int((~torch.isin(pred, torch.tensor(seen))).sum())
            correct_seen += int(((out[:, :10] + seen_mask).argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    return {"accuracy": correct / total, "accuracy_seen_classes": correct_seen / total,
            "head_accuracy": correct_head / total,
            "unseen_predictions": unseen, "images": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="data root holding cifar10-jpeg/ (CILEARN_DATA)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and image decoding processes)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--init", choices=("pytorch", "icarl"), default="pytorch",
                        help="pytorch: make_icarl_net as built; icarl: then initialize_icarl_net")
    parser.add_argument("--tasks", type=int, default=N_EXPERIENCES, choices=range(1, N_EXPERIENCES + 1),
                        metavar=f"1..{N_EXPERIENCES}", help="stop after this many tasks (the network keeps its 10 "
                                                           "outputs: the tasks run is the whole run's beginning)")
    parser.add_argument("--smoke", action="store_true", help="150 train / 100 test images per class, 1 epoch, "
                                                             "memory 200: a quick check, not a measurement")
    args = parser.parse_args()

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="no QP solver found")  # qpsolvers, imported by avalanche (GEM)
    import avalanche
    import torchvision
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.models import initialize_icarl_net, make_icarl_net
    from avalanche.training.determinism.rng_manager import RNGManager
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import ICaRL

    epochs, memory_size = (1, 200) if args.smoke else (2, 2000)
    train_data, test_data, mean, std = load_data(args.data, args.smoke, workers=max(1, min(args.threads, 2)))
    loaded = time.perf_counter()

    RNGManager.set_random_seeds(args.seed)
    train_tf, eval_tf, buffer_tf = transforms_for(mean, std)
    benchmark = nc_benchmark(train_data, test_data, n_experiences=N_EXPERIENCES, task_labels=False,
                             seed=args.seed, fixed_class_order=CLASS_ORDER,
                             train_transform=train_tf, eval_transform=eval_tf)
    net = make_icarl_net(num_classes=10)
    if args.init == "icarl":
        net.apply(initialize_icarl_net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[])
    strategy = ICaRL(feature_extractor=net.feature_extractor, classifier=net.classifier, optimizer=optimizer,
                     memory_size=memory_size, buffer_transform=buffer_tf, fixed_memory=True, train_mb_size=128,
                     train_epochs=epochs, eval_mb_size=256, device="cpu", evaluator=evaluator, eval_every=-1)
    icarl_plugin = next(p for p in strategy.plugins if type(p).__name__ == "_ICaRLPlugin")

    seen_accuracy, seen_only, head_accuracy, unseen_predictions, exemplars, train_s, eval_s = [], [], [], [], [], [], []
    for t, experience in enumerate(benchmark.train_stream[:args.tasks]):
        t0 = time.perf_counter()
        strategy.train(experience, num_workers=0)
        t1 = time.perf_counter()
        seen = CLASS_ORDER[:2 * (t + 1)]
        result = nme_accuracy(strategy, benchmark.test_stream[:t + 1], seen, batch_size=256)
        if args.smoke:  # Avalanche's own metric over the same images must agree
            metrics = strategy.eval(benchmark.test_stream[:t + 1], num_workers=0)
            stream = next(v for k, v in metrics.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream"))
            if not math.isclose(stream, result["accuracy"], abs_tol=1e-9):
                raise SystemExit(f"task {t + 1}: Avalanche's stream accuracy {stream} != ours {result['accuracy']}")
        t2 = time.perf_counter()
        counts = {int(y[0]): len(y) for y in icarl_plugin.y_memory}
        seen_accuracy.append(result["accuracy"])
        seen_only.append(result["accuracy_seen_classes"])
        head_accuracy.append(result["head_accuracy"])
        unseen_predictions.append(result["unseen_predictions"])
        exemplars.append({str(c): counts.get(c, 0) for c in seen})
        train_s.append(round(t1 - t0, 2))
        eval_s.append(round(t2 - t1, 2))
        print(f"task {t + 1}: NME {100 * result['accuracy']:.2f} % over {result['images']} test images "
              f"(seen classes only {100 * result['accuracy_seen_classes']:.2f} %, {result['unseen_predictions']} "
              f"to unseen classes), memory {sum(counts.values())}, train {t1 - t0:.1f} s, eval {t2 - t1:.1f} s",
              flush=True)

    wall = time.perf_counter() - start

    def entry(curve: list[float]) -> dict:
        return {"seen_accuracy": curve, "average_incremental_accuracy": float(np.mean(curve)),
                "last_accuracy": curve[-1]}

    report = {
        "library": "avalanche", "strategy": "ICaRL", "complete": True, "smoke": args.smoke, "seed": args.seed,
        "threads": args.threads, "init": args.init, "tasks": args.tasks, "epochs": epochs, "memory_size": memory_size,
        "class_order": CLASS_ORDER, "normalization": {"mean": list(mean), "std": list(std)},
        **entry(seen_accuracy),
        "classifiers": {"nme": entry(seen_accuracy), "nme_seen_classes": entry(seen_only),
                        "head": entry(head_accuracy)},
        "unseen_predictions": unseen_predictions, "exemplars_per_class": exemplars,
        "train_seconds": train_s, "eval_seconds": eval_s, "load_seconds": round(loaded - start, 2),
        "wall_seconds": round(wall, 2),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "avalanche": avalanche.__version__, "python": sys.version.split()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"NME average incremental {100 * report['average_incremental_accuracy']:.2f} %, last "
          f"{100 * report['last_accuracy']:.2f} %, wall {wall:.0f} s → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
