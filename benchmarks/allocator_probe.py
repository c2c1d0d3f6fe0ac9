"""How much of a CPU run's peak memory is glibc holding freed activation memory, and what giving it back costs.

Trains the protocol's network (iCaRL's ResNet-32, channels_last, batch 128, SGD with momentum, fp32) on random
data in a fresh subprocess per allocator setting, and prints the peak resident-memory growth over the network's
own start (``ru_maxrss``) and the seconds per step, each setting run ``--rounds`` times, interleaved (the machine's
speed drifts).  The settings are glibc's environment variables:

* ``default``: glibc's dynamic mmap threshold.  After the first large tensor is freed the threshold rises to its
  size, so later activations come from the heap, whose freed chunks stay resident;
* ``mmap_128k``: ``MALLOC_MMAP_THRESHOLD_=131072`` fixes the threshold: every tensor over 128 KiB is its own
  mapping, returned to the system when freed (the peak is the live set), at the price of page faults on every
  new activation;
* ``mmap_1m`` / ``mmap_4m``: ``MALLOC_MMAP_THRESHOLD_=1048576`` / ``4194304``: only the tensors over 1 / 4 MiB;
* ``arena_1``: ``MALLOC_ARENA_MAX=1``: one heap for all threads (whether the second thread's arena holds memory);
* ``thp`` / ``mmap_1m_thp`` / ``mmap_4m_thp``: glibc's transparent-huge-page tunable (``GLIBC_TUNABLES=
  glibc.malloc.hugetlb=1``, glibc 2.35+; the kernel's THP mode ``madvise`` or ``always``) alone and with the fixed
  thresholds: fewer page faults for each new mapping;
* ``trim_0``: ``MALLOC_TRIM_THRESHOLD_=0`` (which, as any of these, also fixes the mmap threshold at 128 KiB);
* ``jemalloc`` / ``tcmalloc``: the process run with another allocator (``LD_PRELOAD``), where one is installed.

    python benchmarks/allocator_probe.py --threads 2 --steps 8 --rounds 2
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = {"default": {}, "mmap_128k": {"MALLOC_MMAP_THRESHOLD_": "131072"},
            "mmap_1m": {"MALLOC_MMAP_THRESHOLD_": "1048576"}, "mmap_4m": {"MALLOC_MMAP_THRESHOLD_": "4194304"},
            "arena_1": {"MALLOC_ARENA_MAX": "1"},
            "thp": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
            "mmap_1m_thp": {"MALLOC_MMAP_THRESHOLD_": "1048576", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
            "mmap_4m_thp": {"MALLOC_MMAP_THRESHOLD_": "4194304", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
            "trim_0": {"MALLOC_TRIM_THRESHOLD_": "0"}}
# Other allocators, where installed (Debian: apt install libjemalloc2 libtcmalloc-minimal4), preloaded
PRELOADS = {"jemalloc": "jemalloc", "tcmalloc": "tcmalloc_minimal"}


def available_settings() -> dict[str, dict[str, str]]:
    settings = dict(SETTINGS)
    for name, library in PRELOADS.items():
        found = ctypes.util.find_library(library)
        if found:
            settings[name] = {"LD_PRELOAD": found}
    return settings


def probe(threads: int, steps: int, batch: int) -> dict:
    """One setting, in this process: the peak RSS growth (MiB) over the model's start and the median seconds per
    step after two warm-up steps."""
    import torch  # imported here: the parent only starts subprocesses
    import torch.nn.functional as F

    from cilearn.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model("resnet32", 3, 32, shortcut="A", last_relu=False)
    net.add_classes(10)
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    targets = F.one_hot(torch.randint(0, 10, (batch,)), 10).float()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = []
    for _ in range(steps + 2):
        began = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(net(x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - began)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start
    return {"peak_growth_mib": growth, "seconds_per_step": statistics.median(seconds[2:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(probe(args.threads, args.steps, args.batch)))
        return 0
    settings = available_settings()
    results: dict[str, list[dict]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, env in settings.items():
            out = subprocess.run([sys.executable, __file__, "--child", "--threads", str(args.threads), "--steps",
                                  str(args.steps), "--batch", str(args.batch)], env={**os.environ, **env},
                                 capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(r["seconds_per_step"] for r in results["default"])
    print(f"resnet32 fp32 batch {args.batch}, {args.threads} threads, {args.steps} steps, {args.rounds} rounds "
          f"(medians)")
    print(f"{'setting':<10} {'peak growth MiB':>15} {'s/step':>8} {'× default':>9}")
    for name, runs in results.items():
        growth = statistics.median(r["peak_growth_mib"] for r in runs)
        step = statistics.median(r["seconds_per_step"] for r in runs)
        print(f"{name:<10} {growth:>15.0f} {step:>8.3f} {step / base:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
