"""``cilearn bench``: how much cilearn adds on top of a bare PyTorch training step.

In one invocation, on one machine, it measures
1. the hardware line: a bare ResNet-32 SGD step (batch 128) on random data, default and channels_last;
2. cilearn end to end (fine-tuning, LwF, iCaRL by default) on CIFAR-10 (JPEG) 5×2, each method in its own
   subprocess so that its peak resident memory is its own: training throughput, time per task, time
   spent outside the gradient steps (evaluation, herding/class means, checkpoints), peak memory.
3. with ``--synthesis``: the time DeepInversion takes to synthesize one class's exemplars on the bench model
   (plain and adaptive, one chunk of classes, the study's 300 iterations by default), and the time to build
   one class's collages.
It prints a table with the ratio end-to-end / bare step and writes everything to a JSON file.
Timings are never asserted in tests: this is the reproducible place for speed claims.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import CilearnError
from .log import get_logger

log = get_logger(__name__)


def bare_step_throughput(model_name: str, batch_size: int, steps: int, channels_last: bool, device: str,
                         image_size: int = 32, channels: int = 3, num_classes: int = 10,
                         teacher: bool = False) -> float:
    """Images per second of plain ``forward + cross-entropy + backward + SGD step`` on random data (with
    ``teacher``: plus one no-grad forward of a frozen copy, the floor for distillation methods)."""
    import torch

    from .models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, channels, image_size).to(device)
    model.add_classes(num_classes)
    frozen = None
    if teacher:
        import copy
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if frozen is not None:
        frozen = frozen.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    inputs = torch.randn(batch_size, channels, image_size, image_size, device=device).contiguous(memory_format=fmt)
    targets = torch.randint(0, num_classes, (batch_size,), device=device)

    def step():
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        if frozen is not None:
            with torch.no_grad():
                old = frozen(inputs)
            loss = loss + (logits - old).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: allocator, kernel selection
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - started)


def synthesis_seconds_per_class(model_name: str, device: str, classes: int, per_class: int, iterations: int,
                                image_size: int = 32, channels: int = 3) -> dict:
    """Seconds per class to build exemplars of ``classes`` classes (``per_class`` each) in one chunk:
    DeepInversion plain and adaptive (from noise; the cost does not depend on the weights or the start)
    and collages (from random uint8 images, 4 per collage)."""
    import numpy as np
    import torch

    from .exemplars.collage import CollageBuilder
    from .exemplars.deepinversion import DeepInversionBuilder, DeepInversionOptions
    from .memory import ClassPool
    from .models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, channels, image_size).to(device)
    model.add_classes(classes)
    model = model.to(memory_format=torch.channels_last).eval()
    rng = np.random.RandomState(0)
    pools = [ClassPool(c, rng.randint(0, 256, (4 * per_class, image_size, image_size, channels)).astype(np.uint8))
             for c in range(classes)]
    result = {"classes": classes, "per_class": per_class, "iterations": iterations}
    for name, adaptive in (("deepinversion", False), ("adaptive_deepinversion", True)):
        options = DeepInversionOptions(iterations=iterations, adaptive=adaptive, class_chunk=classes)
        builder = DeepInversionBuilder(options, model, (0.5,) * channels, (0.25,) * channels, device,
                                       log=lambda _: None)
        started = time.perf_counter()
        builder.build(pools, per_class, None)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        result[f"{name}_seconds_per_class"] = (time.perf_counter() - started) / classes
    started = time.perf_counter()
    CollageBuilder("resized", log=lambda _: None).build(pools, per_class, None)
    result["collage_seconds_per_class"] = (time.perf_counter() - started) / classes
    return result


def worker(spec: dict) -> dict:
    """Run one method end to end in this process and report its timings and peak memory."""
    import torch

    from .config import load_runs
    from .runner import Run

    _, runs = load_runs(spec["config"], spec["overrides"])
    label, cfg = runs[0]
    started = time.perf_counter()
    result = Run(cfg, spec["out"], label).execute()
    wall = time.perf_counter() - started
    timing = result["timing"]
    samples = sum(t["train_samples"] for t in result["task_timing"])
    import resource  # POSIX only, like this measurement; imported here so that cilearn imports on Windows

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "method": label,
        "wall_seconds": wall,
        "train_seconds": timing["train_seconds"],
        "train_images_per_second": samples / max(timing["train_seconds"], 1e-9),
        "outside_gradient_steps_seconds": {k: timing[k]
                                           for k in ("eval_seconds", "end_task_seconds", "checkpoint_seconds")},
        "setup_and_other_seconds": wall - sum(timing.values()),
        "per_task": [{"task": i, "train_samples": t["train_samples"], "train_seconds": t["train_seconds"],
                      "images_per_second": t["train_samples"] / max(t["train_seconds"], 1e-9),
                      "end_task_seconds": t["end_task_seconds"], "eval_seconds": t["eval_seconds"]}
                     for i, t in enumerate(result["task_timing"])],
        "peak_rss_mib": peak_kib / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None,
        "last_accuracy": result["last_accuracy"],
    }


def run_bench(args) -> dict:
    import torch  # here, not at import time: `cilearn --help` must stay fast

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
                    "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None},
        "settings": {"config": args.config, "epochs": args.epochs, "batch_size": args.batch_size,
                     "model": args.model, "methods": args.methods, "extra": args.set},
    }
    from .config import load_runs
    for method in args.methods:  # fail on a bad config or method name now, not after the bare-step timing
        load_runs(args.config, [f"method={{name: {method}}}", f"model.name={args.model}"] + list(args.set))
    log.info(f"bare {args.model} step, batch {args.batch_size}, {args.steps} steps on {device} ...")
    bare = {}
    for layout, last in (("default", False), ("channels_last", True)):
        bare[layout] = bare_step_throughput(args.model, args.batch_size, args.steps, last, device,
                                            args.image_size, args.channels)
    bare["channels_last_with_teacher"] = bare_step_throughput(args.model, args.batch_size, args.steps, True, device,
                                                              args.image_size, args.channels, teacher=True)
    report["bare_step_images_per_second"] = bare
    if args.synthesis:
        log.info(f"exemplar synthesis: {args.synthesis_classes} classes x {args.synthesis_per_class} images, "
                 f"{args.synthesis_iterations} DeepInversion iterations ...")
        report["synthesis"] = synthesis_seconds_per_class(args.model, device, args.synthesis_classes,
                                                          args.synthesis_per_class, args.synthesis_iterations,
                                                          args.image_size, args.channels)
    results = []
    with tempfile.TemporaryDirectory(prefix="cilearn-bench-") as tmp:
        runs_root = Path(args.keep_runs) if args.keep_runs else Path(tmp)
        for method in args.methods:
            overrides = [f"method={{name: {method}}}", f"train.epochs={args.epochs}",
                         f"train.batch_size={args.batch_size}", f"model.name={args.model}",
                         f"train.device={device}", "train.progress=false"] + list(args.set)
            spec = {"config": args.config, "overrides": overrides, "out": str(runs_root / method)}
            log.info(f"end to end: {method} ...")
            proc = subprocess.run([sys.executable, "-m", "cilearn.bench", "--worker", json.dumps(spec)],
                                  capture_output=True, text=True)
            lines = proc.stdout.strip().splitlines()
            result = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
            if result is None or "error" in result:
                if result is not None:  # a user mistake (data missing, bad option): one line, exit 2
                    raise CilearnError(f"bench ({method}): {result['error']}")
                raise RuntimeError(f"bench worker for {method} failed:\n{proc.stderr[-3000:]}")
            results.append(result)
    reference = bare["channels_last"]
    for r in results:
        r["ratio_to_bare_channels_last"] = r["train_images_per_second"] / reference
        r["ratio_to_bare_with_teacher"] = r["train_images_per_second"] / bare["channels_last_with_teacher"]
    report["end_to_end"] = results
    report["projection"] = project_icarl_cifar100(results)
    return report


def project_icarl_cifar100(results: list[dict]) -> dict | None:
    """Training time of iCaRL's CIFAR-100 protocol (10 tasks × 70 epochs, ResNet-32, batch 128, memory
    2000) at the iCaRL throughput just measured: task 1 trains on 5000 images, each later task on 5000 new
    ones plus the 2000 exemplars. Evaluation and herding are left out (they were ~25 % on top here)."""
    icarl = next((r for r in results if r["method"] == "icarl"), None)
    if icarl is None:
        return None
    images = 70 * (5000 + 9 * (5000 + 2000))
    seconds = images / icarl["train_images_per_second"]
    return {"protocol": "CIFAR-100 10x10, 70 epochs, memory 2000", "training_images": images,
            "at_images_per_second": icarl["train_images_per_second"], "training_hours": seconds / 3600}


def print_table(report: dict) -> None:
    bare = report["bare_step_images_per_second"]
    machine = report["machine"]
    print(f"\nmachine: {machine['device']} {machine['gpu'] or ''} torch {machine['torch']}, "
          f"{machine['torch_threads']} threads")
    print(f"bare step (img/s): default {bare['default']:.0f}, channels_last {bare['channels_last']:.0f}, "
          f"channels_last + frozen teacher forward {bare['channels_last_with_teacher']:.0f}")
    header = (f"{'method':<10} {'train img/s':>11} {'÷ bare':>7} {'÷ bare+teacher':>14} {'train s':>8} "
              f"{'eval s':>7} {'end-task s':>10} {'ckpt s':>7} {'peak MiB':>9} {'last acc':>8}")
    if report["end_to_end"]:
        print(header)
        print("-" * len(header))
    for r in report["end_to_end"]:
        out = r["outside_gradient_steps_seconds"]
        print(f"{r['method']:<10} {r['train_images_per_second']:>11.0f} {r['ratio_to_bare_channels_last']:>7.2f} "
              f"{r['ratio_to_bare_with_teacher']:>14.2f} {r['train_seconds']:>8.1f} {out['eval_seconds']:>7.1f} "
              f"{out['end_task_seconds']:>10.1f} {out['checkpoint_seconds']:>7.1f} {r['peak_rss_mib']:>9.0f} "
              f"{100 * r['last_accuracy']:>7.1f}%")
    for r in report["end_to_end"]:
        speeds = " ".join(f"{t['images_per_second']:.0f}" for t in r["per_task"])
        print(f"  {r['method']}: train img/s per task: {speeds}")
    synthesis = report.get("synthesis")
    if synthesis:
        print(f"exemplars of one class ({synthesis['per_class']} images, {synthesis['classes']} classes per chunk): "
              f"DeepInversion {synthesis['deepinversion_seconds_per_class']:.1f} s, adaptive "
              f"{synthesis['adaptive_deepinversion_seconds_per_class']:.1f} s ({synthesis['iterations']} iterations); "
              f"collages {1000 * synthesis['collage_seconds_per_class']:.1f} ms")
    projection = report.get("projection")
    if projection:
        print(f"projected training time of iCaRL's {projection['protocol']} at "
              f"{projection['at_images_per_second']:.0f} img/s: {projection['training_hours']:.1f} h "
              f"({projection['training_images']:,} training images)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/bench_cifar10jpeg.yaml", help="scenario and data to run")
    parser.add_argument("--methods", nargs="*", default=["finetune", "lwf", "icarl"],
                        help="methods run end to end (none: only the bare step and, with --synthesis, exemplars)")
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per task")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps timed for the bare-step line")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--synthesis", action="store_true", help="also time DeepInversion and collage exemplars "
                        "per class (on --model)")
    parser.add_argument("--synthesis-classes", type=int, default=4, help="classes per DeepInversion chunk")
    parser.add_argument("--synthesis-per-class", type=int, default=20,
                        help="exemplars per class (20: CIFAR-100's last task with K=2000)")
    parser.add_argument("--synthesis-iterations", type=int, default=300, help="DeepInversion iterations (study: 300)")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    parser.add_argument("--keep-runs", metavar="DIR", help="keep each method's run directory under DIR (default: "
                        "a temporary folder, removed afterwards)")


def cmd_bench(args) -> int:
    report = run_bench(args)
    from .rundir import write_json
    write_json(Path(args.json), report)
    print_table(report)
    print(f"\nwritten: {args.json}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmark cilearn against a bare PyTorch training step")
    add_arguments(parser)
    parser.set_defaults(handler=cmd_bench)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        try:
            print(json.dumps(worker(json.loads(sys.argv[2]))))
        except CilearnError as exc:
            print(json.dumps({"error": str(exc)}))
    else:
        parser = argparse.ArgumentParser(prog="python -m cilearn.bench")
        add_arguments(parser)
        sys.exit(cmd_bench(parser.parse_args()))
