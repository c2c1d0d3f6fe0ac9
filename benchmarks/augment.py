"""Time cilearn's batch augmentation: milliseconds per batch of 128 CIFAR-sized (3×32×32 uint8) images, CPU,
one thread, median of repeated runs.  Rerun with

    PYTHONPATH=. python benchmarks/augment.py [--threads 1] [--batches 200] [--repeats 5]

Each pipeline is a ``train.augment`` value.  ``--baseline FILE`` (an older ``cilearn/augment.py``, e.g.
``git show REV:cilearn/augment.py > /tmp/old_augment.py``) also times that file's crop_flip, interleaved
repeat by repeat with today's, so that a busy machine slows both alike."""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch

from cilearn.augment import BatchAugment

PIPELINES = {
    "none": "none",
    "crop_flip": "crop_flip",
    "[crop, flip] (list form)": ["crop", "flip"],
    "color_jitter": [{"color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4}}],
    "crop, flip, color_jitter": ["crop", "flip", {"color_jitter": {"brightness": 0.4, "contrast": 0.4,
                                                                    "saturation": 0.4}}],
    "randaugment": ["randaugment"],
    "crop, flip, randaugment": ["crop", "flip", "randaugment"],
    "crop, flip, cutmix": ["crop", "flip", "cutmix"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--baseline", help="an older cilearn/augment.py whose crop_flip is timed beside today's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.batch_size,))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}×3×32×32, "
          f"{args.batches} batches × {args.repeats} repeats; ms per batch (median)")
    if args.baseline:
        compare(args, images, mean, std)
        return
    for name, mode in PIPELINES.items():
        try:
            aug = BatchAugment.from_mode(mode, mean, std, channels=3, channels_last=True)
        except Exception as error:  # an older cilearn: the string modes only
            print(f"  {name:28s}  not available ({type(error).__name__})")
            continue
        mixes = getattr(aug, "mixes", False)

        def step(aug=aug, mixes=mixes):
            out = aug(images)
            if mixes:
                aug.cutmix(out, labels)

        for _ in range(10):
            step()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(args.batches):
                step()
            times.append((time.perf_counter() - start) / args.batches * 1000)
        print(f"  {name:28s}  {statistics.median(times):7.3f} ms  (min {min(times):.3f}, max {max(times):.3f})")


def compare(args, images, mean, std) -> None:
    """crop_flip of the baseline file and of today's cilearn, alternating per repeat."""
    spec = importlib.util.spec_from_file_location("baseline_augment", args.baseline)
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    augments = {"baseline crop_flip": baseline.BatchAugment.from_mode("crop_flip", mean, std, 3, True),
                "today's crop_flip": BatchAugment.from_mode("crop_flip", mean, std, channels=3, channels_last=True)}
    times = {name: [] for name in augments}
    for aug in augments.values():
        for _ in range(10):
            aug(images)
    for repeat in range(args.repeats):  # alternate which goes first
        for name, aug in list(augments.items())[::1 if repeat % 2 else -1]:
            start = time.perf_counter()
            for _ in range(args.batches):
                aug(images)
            times[name].append((time.perf_counter() - start) / args.batches * 1000)
    torch.manual_seed(1)
    a = augments["baseline crop_flip"](images)
    torch.manual_seed(1)
    same = torch.equal(a, augments["today's crop_flip"](images))
    for name, t in times.items():
        print(f"  {name:28s}  {statistics.median(t):7.3f} ms  (min {min(t):.3f}, max {max(t):.3f})")
    print(f"  same output under the same seed: {same}")


if __name__ == "__main__":
    main()
