"""torchrun on CPU or GPU: cilearn's one all-reduce per step against DistributedDataParallel on fine-tuning
(where DDP applies), and sharded against replicated inference.

Run under torchrun, e.g. on a CPU (gloo):

    torchrun --standalone --nproc_per_node 2 benchmarks/torchrun_bench.py --threads 1
    torchrun --standalone --nproc_per_node 2 benchmarks/torchrun_bench.py --device cuda   # NCCL, 2 GPUs

Both variants train the same network (ResNet-32 by default, channels_last) on the same global batch of
random CIFAR-sized images, each process computing its share, with SGD: ``allreduce`` is cilearn's loop
(forward and backward of the share, then ``Distributed.average_gradients``: one flattened all-reduce of
every gradient weighted by the share), ``ddp`` wraps the network in ``DistributedDataParallel`` (gradients
bucketed and all-reduced while the backward pass runs). The two are timed in alternating rounds (the
machine's speed drifts) and rank 0 prints the median global images per second of each and their ratio.
Before timing, one step of each from the same weights checks that both give the same gradients.

It then times inference (what evaluation, herding and class means run) over ``--eval-images`` images at
batch 128 with BatchNorm folded: ``replicated`` (every process computes every batch, as before the passes
were sharded) against ``sharded`` (each process its own batches, one all-reduce), interleaved the same way.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from cilearn.distributed import Distributed
from cilearn.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch (every process a share)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-images", type=int, default=4096)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    dist = Distributed.from_environment(device, 300)
    if dist is None:
        raise SystemExit("run it under torchrun (see the module's docstring)")

    torch.manual_seed(0)
    base = build_model(args.model, 3, 32)
    base.add_classes(10)
    base = base.to(device).to(memory_format=torch.channels_last)
    inputs = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    part = dist.shard(args.batch_size)
    x, y = inputs[part], targets[part]
    share = len(y)

    mine = copy.deepcopy(base)
    ddp = DistributedDataParallel(copy.deepcopy(base))
    params = [p for p in mine.parameters() if p.requires_grad]
    opt_mine = torch.optim.SGD(mine.parameters(), lr=0.01, momentum=0.9)
    opt_ddp = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)

    def step_allreduce():
        loss = F.cross_entropy(mine(x), y)
        opt_mine.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(params, share, args.batch_size)
        opt_mine.step()

    def step_ddp():
        # DDP averages over processes; weighting the loss by world × share / batch makes it the batch's mean
        loss = F.cross_entropy(ddp(x), y) * (dist.world * share / args.batch_size)
        opt_ddp.zero_grad(set_to_none=True)
        loss.backward()
        opt_ddp.step()

    # Same weights, same batch: the same gradients (up to the order of float sums)
    loss = F.cross_entropy(mine(x), y)
    loss.backward()
    dist.average_gradients(params, share, args.batch_size)
    (F.cross_entropy(ddp(x), y) * (dist.world * share / args.batch_size)).backward()
    worst = max((a.grad - b.grad).abs().max().item() for a, b in zip(params, ddp.module.parameters()))
    opt_mine.zero_grad(set_to_none=True)
    opt_ddp.zero_grad(set_to_none=True)

    timings: dict[str, list[float]] = {"allreduce": [], "ddp": []}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, step in (("allreduce", step_allreduce), ("ddp", step_ddp)):
            dist.barrier()
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dist.barrier()
            if round_:
                timings[name].append(args.steps * args.batch_size / (time.perf_counter() - started))
    inference = time_inference(base, dist, device, args)
    if dist.main:
        one, other = statistics.median(timings["allreduce"]), statistics.median(timings["ddp"])
        print(f"{dist.world} processes ({dist.backend}), {args.model}, global batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads each; largest gradient difference {worst:.1e}")
        print(f"images/s (median of {args.rounds} rounds of {args.steps} steps): one all-reduce {one:.0f}, "
              f"DDP {other:.0f}; all-reduce / DDP = {one / other:.2f}")
        print(f"inference over {args.eval_images} images (images/s of the job, median of {args.rounds}): "
              f"replicated {inference['replicated']:.0f}, sharded {inference['sharded']:.0f}; "
              f"sharded / replicated = {inference['sharded'] / inference['replicated']:.2f}")


def time_inference(model, dist: Distributed, device: torch.device, args) -> dict[str, float]:
    import numpy as np

    from cilearn.augment import BatchAugment
    from cilearn.engine.evaluate import Inference

    images = np.random.RandomState(0).randint(0, 256, (args.eval_images, 32, 32, 3), dtype=np.uint8)
    augment = BatchAugment((0.5,) * 3, (0.25,) * 3)
    variants = {"replicated": Inference(model, augment, device, 128, fold_batchnorm=True),
                "sharded": Inference(model, augment, device, 128, fold_batchnorm=True, distributed=dist)}
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds + 1):
        for name, infer in variants.items():
            dist.barrier()
            started = time.perf_counter()
            infer(images)
            dist.barrier()
            if round_:
                timings[name].append(args.eval_images / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in timings.items()}


if __name__ == "__main__":
    main()
