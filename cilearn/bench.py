"""``cilearn bench``: how much cilearn adds on top of a bare PyTorch training step.

In one invocation, on one machine, it measures
1. the hardware line: a bare SGD step (the config's network, batch and optimizer) on random data, default
   and channels_last layout, with and without a frozen teacher's forward (the floor of distillation
   methods), in fp32 and, when the run trains in bf16, in bf16;
2. cilearn end to end, each run in its own subprocess so that its memory is its own: wall time, training
   throughput per task, time outside the gradient steps (evaluation, end of task, checkpoints), peak
   resident memory per phase (data load, train, eval, end of task, checkpoint) and accuracy;
3. with ``--synthesis``: the time DeepInversion takes to synthesize one class's exemplars on the bench model
   (plain and adaptive, one chunk of classes, the study's 300 iterations by default), and the time to build
   one class's collages.

``--protocol`` runs the identical protocol of issue 16 (``configs/bench_protocol.yaml``: iCaRL on
CIFAR-10 (JPEG) B0 Inc2, 2 epochs per task) and reports its wall seconds × the bare fp32 channels_last
step's img/s — a unit that carries across machines, since both scale with the hardware.  The bare step is
timed right before and right after every end-to-end run and the two are averaged, because the machines
this runs on are often shared and their speed drifts.  ``--repeat N`` runs everything N times and prints
the min and median.  Timings are never asserted in tests: this is the reproducible place for speed claims.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .config import load_runs
from .engine.evaluate import fold_batchnorm
from .engine.runner import Run
from .errors import CilearnError
from .log import get_logger
from .methods.parts.exemplars.collage import CollageBuilder
from .methods.parts.exemplars.deepinversion import DeepInversionBuilder, DeepInversionOptions
from .methods.parts.memory import ClassPool
from .models import build_model
from .rundir import write_json
from .runtime import autocast, native_bf16, resolve_device, resolve_precision
from .schema import to_dict

log = get_logger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/bench_cifar10jpeg.yaml"
PROTOCOL_CONFIG = "configs/bench_protocol.yaml"
PHASES = ("data", "train", "eval", "end_task", "checkpoint")


def bare_step_throughput(model_name: str, batch_size: int, steps: int, channels_last: bool, device: str,
                         image_size: int = 32, channels: int = 3, num_classes: int = 10,
                         teacher: bool = False, model_options: dict | None = None, precision: str = "fp32",
                         lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4) -> float:
    """Images per second of plain ``forward + cross-entropy + backward + SGD step`` on random data (with
    ``teacher``: plus one no-grad forward of a frozen copy, the floor for distillation methods)."""



    torch.manual_seed(0)
    device = torch.device(device)
    model = build_model(model_name, channels, image_size, **(model_options or {})).to(device)
    model.add_classes(num_classes)
    frozen = copy.deepcopy(model).eval().requires_grad_(False) if teacher else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if frozen is not None:
        frozen = frozen.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    inputs = torch.randn(batch_size, channels, image_size, image_size, device=device).contiguous(memory_format=fmt)
    targets = torch.randint(0, num_classes, (batch_size,), device=device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None  # as the loop steps in fp16

    def step():
        with autocast(precision, device):
            logits = model(inputs).float()
            loss = torch.nn.functional.cross_entropy(logits, targets)
            if frozen is not None:
                with torch.no_grad():
                    old = frozen(inputs).float()
                loss = loss + (logits - old).square().mean()
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()

    for _ in range(3):  # warm-up: allocator, kernel selection
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - started)


def inference_throughput(setup: dict, device: str, images: int = 1024, repeats: int = 5) -> dict:
    """Images per second of evaluation-mode feature extraction (``inference_mode``, channels_last) on random
    data: the network as trained at batch 256 (0.1's evaluation) and at the eval batch 128, and with its
    BatchNorms folded (:func:`~cilearn.engine.evaluate.fold_batchnorm`) at 128, as evaluation and herding run now,
    and that copy cast to bf16 (``train.inference_precision: bf16``) at batch 128 and 256 where the device
    computes bf16 natively.
    Median of ``repeats`` timings, the variants interleaved (the machine's speed drifts)."""


    torch.manual_seed(0)
    model = build_model(setup["model"], setup["channels"], setup["image_size"], **setup["model_options"])
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    folded = fold_batchnorm(model.backbone)
    x = torch.randn(images, setup["channels"], setup["image_size"], setup["image_size"], device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    variants = {"plain_batch_256": (model.features, 256), "plain_batch_128": (model.features, 128)}
    if folded is not None:
        variants["folded_batch_128"] = (folded, 128)
        if native_bf16(torch.device(device))[0]:
            folded_bf16 = fold_batchnorm(model.backbone).to(torch.bfloat16)  # cast once, as Inference does

            def features_bf16(batch: torch.Tensor) -> torch.Tensor:
                return folded_bf16(batch.to(torch.bfloat16))
            variants["folded_batch_128_bf16"] = (features_bf16, 128)
            variants["folded_batch_256_bf16"] = (features_bf16, 256)
    timings: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up (discarded)
            for name, (fn, batch) in variants.items():
                started = time.perf_counter()
                for start in range(0, images, batch):
                    fn(x[start:start + batch])
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                timings[name].append(images / (time.perf_counter() - started))
    return {name: statistics.median(values[1:]) for name, values in timings.items()}


def bare_steps(setup: dict, steps: int, device: str, precision: str, unit_batch: int | None = None) -> dict:
    """The hardware line: every bare step the report compares against.  ``unit_batch``: the batch of the
    protocol's unit (wall × bare) when the run's own batch differs (a recipe at another batch is measured in the
    protocol's unit, as the peers were), timed as ``unit_channels_last``."""
    common = dict(model_name=setup["model"], batch_size=setup["batch_size"], steps=steps, device=device,
                  image_size=setup["image_size"], channels=setup["channels"], model_options=setup["model_options"],
                  lr=setup["lr"], momentum=setup["momentum"], weight_decay=setup["weight_decay"])
    bare = {"default": bare_step_throughput(channels_last=False, **common),
            "channels_last": bare_step_throughput(channels_last=True, **common),
            "channels_last_with_teacher": bare_step_throughput(channels_last=True, teacher=True, **common)}
    if unit_batch is not None and unit_batch != setup["batch_size"]:
        bare["unit_channels_last"] = bare_step_throughput(channels_last=True, **{**common, "batch_size": unit_batch})
    if precision in ("bf16", "fp16"):
        bare[f"{precision}_channels_last"] = bare_step_throughput(channels_last=True, precision=precision, **common)
        bare[f"{precision}_channels_last_with_teacher"] = bare_step_throughput(channels_last=True, teacher=True,
                                                                               precision=precision, **common)
    return bare


def synthesis_seconds_per_class(model_name: str, device: str, classes: int, per_class: int, iterations: int,
                                image_size: int = 32, channels: int = 3) -> dict:
    """Seconds per class to build exemplars of ``classes`` classes (``per_class`` each) in one chunk:
    DeepInversion plain and adaptive (from noise; the cost does not depend on the weights or the start)
    and collages (from random uint8 images, 4 per collage)."""


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
    """Run one config end to end in this process and report its timings, memory and accuracy."""
    started = time.perf_counter()

    _, runs = load_runs(spec["config"], spec["overrides"])
    label, cfg = runs[0]
    run = Run(cfg, spec["out"], label)
    result = run.execute()
    wall = time.perf_counter() - started
    timing = result["timing"]
    samples = sum(t["train_samples"] for t in result["task_timing"])
    classifiers = {name: {"average_incremental_accuracy": s["average_incremental_accuracy"],
                          "last_accuracy": s["last_accuracy"]} for name, s in result["classifiers"].items()}
    return {
        "method": label,
        "precision": result.get("precision"),
        "inference_precision": result.get("inference_precision"),
        "uses_teacher": bool(getattr(run.method, "teacher", None) is not None),
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
        "peak_rss_mib": result["memory"]["overall_peak_rss_mib"],
        "peak_rss_mib_per_phase": result["memory"]["peak_rss_mib"],
        "peak_cuda_mib": _peak_cuda_mib(),
        "last_accuracy": result["last_accuracy"],
        "classifiers": classifiers,
    }


def _peak_cuda_mib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None


def floor_ratio(result: dict, bare: dict) -> float:
    """Training throughput ÷ the bare step in the same precision, task by task: a task that runs a
    teacher (every task after the first, for LwF and iCaRL) is compared with the bare step plus the
    teacher's forward.  1.0 = the loop costs nothing beyond the network's own work."""
    prefix = f"{result['precision']}_" if result.get("precision") in ("bf16", "fp16") else ""
    plain, with_teacher = bare[f"{prefix}channels_last"], bare[f"{prefix}channels_last_with_teacher"]
    floor_seconds = sum(t["train_samples"] / (with_teacher if result["uses_teacher"] and t["task"] > 0 else plain)
                        for t in result["per_task"])
    return floor_seconds / max(result["train_seconds"], 1e-9)


def bench_setup(config: str, overrides: list[str]) -> dict:
    """The network, batch, optimizer and precision the bare step copies from the (overridden) config; also
    checks the config (a bad one fails now, not after the bare-step timing)."""

    _, runs = load_runs(config, overrides)
    cfg = runs[0][1]
    precision, note = resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))
    return {"model": cfg.model.name, "model_options": to_dict(cfg.model.options), "batch_size": cfg.train.batch_size,
            "lr": cfg.train.lr, "momentum": cfg.train.momentum, "weight_decay": cfg.train.weight_decay,
            "precision": precision, "precision_note": note}


def run_bench(args) -> dict:

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = args.config or (PROTOCOL_CONFIG if args.protocol else DEFAULT_CONFIG)
    if not Path(config).is_file() and (ROOT / config).is_file():
        config = str(ROOT / config)  # the shipped configs work from any folder
    # --methods with no names: only the bare step (and, with --synthesis, the exemplar synthesis)
    methods = args.methods if args.methods is not None else ([None] if args.protocol else ["finetune", "lwf", "icarl"])
    seeds = args.seeds or [None]  # None: the config's own seed
    overrides = [f"train.device={device}", "train.progress=false"]
    for key, value in (("train.epochs", args.epochs), ("train.batch_size", args.batch_size)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.model is not None:  # another network: the config's model options are not its options
        overrides.append(f"model={{name: {args.model}}}")
    if args.threads:
        overrides.append(f"train.num_threads={args.threads}")
    overrides += list(args.set)

    def method_overrides(method: str | None) -> list[str]:
        return ([f"method={{name: {method}}}"] if method else []) + overrides

    setups = [bench_setup(config, method_overrides(m)) for m in methods or [None]]  # every config checked first
    setup = {**setups[0], "image_size": args.image_size, "channels": args.channels}
    # --protocol's unit is the protocol's own bare step (batch 128), whatever batch the config trains at
    unit_batch = bench_setup(str(ROOT / PROTOCOL_CONFIG), [])["batch_size"] if args.protocol else None
    precision = setup["precision"]
    overrides.append(f"train.precision={precision}")  # the runs train in the precision the bare step was timed in
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
                    "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                    # another allocator (tcmalloc, jemalloc) changes peak memory and speed, never the numbers
                    "ld_preload": os.environ.get("LD_PRELOAD") or None},
        "settings": {"config": config, "protocol": args.protocol, "methods": methods, "overrides": overrides,
                     "repeat": args.repeat, "seeds": args.seeds, "precision": precision,
                     "precision_note": setup["precision_note"],
                     "bare_step": {k: setup[k] for k in ("model", "model_options", "batch_size", "lr", "momentum",
                                                         "weight_decay")}},
    }
    log.info(f"bare {setup['model']} step, batch {setup['batch_size']}, {args.steps} steps on {device} "
             f"({precision}) ...")
    results, bares = [], [bare_steps(setup, args.steps, device, precision, unit_batch)]
    report["inference_images_per_second"] = inference_throughput(setup, device)
    if args.synthesis:
        log.info(f"exemplar synthesis: {args.synthesis_classes} classes x {args.synthesis_per_class} images, "
                 f"{args.synthesis_iterations} DeepInversion iterations ...")
        report["synthesis"] = synthesis_seconds_per_class(setup["model"], device, args.synthesis_classes,
                                                          args.synthesis_per_class, args.synthesis_iterations,
                                                          args.image_size, args.channels)
    with tempfile.TemporaryDirectory(prefix="cilearn-bench-") as tmp:
        runs_root = Path(args.keep_runs) if args.keep_runs else Path(tmp)
        for repeat, seed, method in ((r, s, m) for r in range(args.repeat) for s in seeds for m in methods):
            name = method or "protocol"
            folder = "/".join([name] + ([f"seed{seed}"] if seed is not None else [])
                              + ([f"repeat{repeat + 1}"] if args.repeat > 1 else []))
            seed_override = [f"seed={seed}"] if seed is not None else []
            spec = {"config": config, "overrides": method_overrides(method) + seed_override,
                    "out": str(runs_root / folder)}
            log.info(f"end to end: {name}" + (f", seed {seed}" if seed is not None else "")
                     + f" (repeat {repeat + 1}/{args.repeat}) ...")
            result = _run_worker(spec, name)
            bares.append(bare_steps(setup, args.steps, device, precision, unit_batch))
            # The bare step right before and right after this run, averaged: the machine's speed drifts.
            bare = {k: (bares[-2][k] + bares[-1][k]) / 2 for k in bares[-1]}
            result["repeat"] = repeat + 1
            result["seed"] = seed
            result["bare_step_images_per_second"] = bare
            result["ratio_to_bare_channels_last"] = result["train_images_per_second"] / bare["channels_last"]
            result["ratio_to_bare_with_teacher"] = (result["train_images_per_second"]
                                                    / bare["channels_last_with_teacher"])
            result["ratio_to_floor_same_precision"] = floor_ratio(result, bare)
            unit = bare.get("unit_channels_last", bare["channels_last"])
            result["wall_x_bare_images"] = result["wall_seconds"] * unit
            outside = result["outside_gradient_steps_seconds"]
            result["eval_and_end_task_share"] = ((outside["eval_seconds"] + outside["end_task_seconds"])
                                                 / result["wall_seconds"])
            results.append(result)
    report["bare_step_images_per_second"] = {k: statistics.mean(b[k] for b in bares) for k in bares[0]}
    report["bare_step_samples"] = bares
    report["end_to_end"] = results
    report["aggregate"] = aggregate(results)
    if args.seeds:
        report["over_seeds"] = over_seeds(results)
    report["projection"] = project_icarl_cifar100(results)
    return report


def _run_worker(spec: dict, name: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "cilearn.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    if result is None or "error" in result:
        if result is not None:  # a user mistake (data missing, bad option): one line, exit 2
            raise CilearnError(f"bench ({name}): {result['error']}")
        raise RuntimeError(f"bench worker for {name} failed:\n{proc.stderr[-3000:]}")
    return result


AGGREGATED = ("wall_seconds", "wall_x_bare_images", "train_images_per_second", "ratio_to_floor_same_precision",
              "eval_and_end_task_share", "peak_rss_mib")


def aggregate(results: list[dict]) -> dict:
    """Min and median over the repeats of every method."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in results):
        mine = [r for r in results if r["method"] == method]
        out[method] = {key: {"min": min(r[key] for r in mine), "median": statistics.median(r[key] for r in mine),
                             "max": max(r[key] for r in mine)} for key in AGGREGATED}
    return out


def over_seeds(results: list[dict]) -> dict:
    """Per method and classifier: each seed's average incremental and last accuracy (the first repeat's), their
    mean and sample standard deviation (ddof 1), and the mean wall seconds -- the figures a precision or recipe
    comparison is made of, since one seed decides nothing on a protocol this noisy."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in results):
        mine = [r for r in results if r["method"] == method and r["repeat"] == 1]
        classifiers = {}
        for classifier in mine[0]["classifiers"]:
            entry = {}
            for key in ("average_incremental_accuracy", "last_accuracy"):
                values = [r["classifiers"][classifier][key] for r in mine]
                entry[key] = {"per_seed": dict(zip((r["seed"] for r in mine), values)),
                              "mean": statistics.mean(values),
                              "std": statistics.stdev(values) if len(values) > 1 else 0.0}
            classifiers[classifier] = entry
        out[method] = {"seeds": [r["seed"] for r in mine], "classifiers": classifiers,
                       "wall_seconds_mean": statistics.mean(r["wall_seconds"] for r in mine),
                       "wall_x_bare_images_mean": statistics.mean(r["wall_x_bare_images"] for r in mine),
                       "peak_rss_mib_max": max(r["peak_rss_mib"] for r in mine),
                       "eval_and_end_task_share_mean": statistics.mean(r["eval_and_end_task_share"] for r in mine)}
    return out


def project_icarl_cifar100(results: list[dict]) -> dict | None:
    """Training time of iCaRL's CIFAR-100 protocol (10 tasks × 70 epochs, ResNet-32, batch 128, memory
    2000) at the iCaRL throughput just measured: task 1 trains on 5000 images, each later task on 5000 new
    ones plus the 2000 exemplars. Evaluation and herding are left out."""
    icarl = [r for r in results if r["method"] == "icarl"]
    if not icarl:
        return None
    speed = statistics.median(r["train_images_per_second"] for r in icarl)
    images = 70 * (5000 + 9 * (5000 + 2000))
    return {"protocol": "CIFAR-100 10x10, 70 epochs, memory 2000", "training_images": images,
            "at_images_per_second": speed, "training_hours": images / speed / 3600}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def print_table(report: dict) -> None:
    bare = report["bare_step_images_per_second"]
    machine, settings = report["machine"], report["settings"]
    print(f"\nmachine: {machine['device']} {machine['gpu'] or ''} torch {machine['torch']}, "
          f"{machine['torch_threads']} threads; precision {settings['precision']} ({settings['precision_note']})"
          + (f"; LD_PRELOAD={machine['ld_preload']}" if machine.get("ld_preload") else "")
          + "".join(sorted({f"; inference in {r['inference_precision']}" for r in report["end_to_end"]
                            if r.get("inference_precision") not in (None, settings["precision"])})))
    line = (f"bare step (img/s, mean of {len(report['bare_step_samples'])} timings): default {bare['default']:.0f}, "
            f"channels_last {bare['channels_last']:.0f}, + frozen teacher forward "
            f"{bare['channels_last_with_teacher']:.0f}")
    for reduced in ("bf16", "fp16"):
        if f"{reduced}_channels_last" in bare:
            line += (f"; {reduced} channels_last {bare[f'{reduced}_channels_last']:.0f}, + teacher "
                     f"{bare[f'{reduced}_channels_last_with_teacher']:.0f}")
    print(line)
    inference = report.get("inference_images_per_second")
    if inference:
        print("inference (img/s, median of 5): " + ", ".join(f"{name.replace('_', ' ')} {value:.0f}"
                                                         for name, value in inference.items()))
    header = (f"{'run':<12} {'wall s':>7} {'wall×bare':>9} {'train img/s':>11} {'÷ floor':>7} {'train s':>8} "
              f"{'eval s':>7} {'end-task s':>10} {'ckpt s':>6} {'eval+end':>8} {'peak MiB':>8} "
              f"{'acc avg/last':>12}")
    if report["end_to_end"]:
        print(header)
        print("-" * len(header))
    for r in report["end_to_end"]:
        out = r["outside_gradient_steps_seconds"]
        name = r["method"] if settings["repeat"] == 1 else f"{r['method']}#{r['repeat']}"
        name += f" s{r['seed']}" if r.get("seed") is not None else ""
        primary = r["classifiers"].get("nme") or next(iter(r["classifiers"].values()))
        print(f"{name:<12} {r['wall_seconds']:>7.1f} {r['wall_x_bare_images']:>9.3g} "
              f"{r['train_images_per_second']:>11.0f} {r['ratio_to_floor_same_precision']:>7.2f} "
              f"{r['train_seconds']:>8.1f} {out['eval_seconds']:>7.1f} {out['end_task_seconds']:>10.1f} "
              f"{out['checkpoint_seconds']:>6.1f} {100 * r['eval_and_end_task_share']:>7.1f}% "
              f"{r['peak_rss_mib']:>8.0f} {_pct(primary['average_incremental_accuracy']):>6}/"
              f"{_pct(primary['last_accuracy']):<5}")
    print("÷ floor: training img/s ÷ the bare step in the same precision (+ the teacher's forward for tasks "
          "that distil); wall×bare: wall seconds × bare fp32 channels_last img/s")
    for r in report["end_to_end"]:
        speeds = " ".join(f"{t['images_per_second']:.0f}" for t in r["per_task"])
        accuracy = ", ".join(f"{name} {_pct(s['average_incremental_accuracy'])}/{_pct(s['last_accuracy'])}"
                             for name, s in r["classifiers"].items())
        phases = ", ".join(f"{p} {r['peak_rss_mib_per_phase'][p]:.0f}" for p in PHASES
                           if r["peak_rss_mib_per_phase"].get(p) is not None)
        print(f"  {r['method']}: train img/s per task {speeds}; accuracy avg-inc/last {accuracy}; "
              f"peak RSS MiB per phase: {phases or 'n/a'}")
    if settings["repeat"] > 1:
        for method, agg in report["aggregate"].items():
            print(f"  {method} over {settings['repeat']} repeats: wall×bare min {agg['wall_x_bare_images']['min']:.3g} "
                  f"median {agg['wall_x_bare_images']['median']:.3g}; ÷ floor min "
                  f"{agg['ratio_to_floor_same_precision']['min']:.2f} median "
                  f"{agg['ratio_to_floor_same_precision']['median']:.2f}; "
                  f"peak MiB max {agg['peak_rss_mib']['max']:.0f}")
    for method, agg in (report.get("over_seeds") or {}).items():
        accuracy = "; ".join(
            f"{name} avg-inc {100 * c['average_incremental_accuracy']['mean']:.1f} ± "
            f"{100 * c['average_incremental_accuracy']['std']:.1f}, last {100 * c['last_accuracy']['mean']:.1f} ± "
            f"{100 * c['last_accuracy']['std']:.1f}" for name, c in agg["classifiers"].items())
        print(f"  {method} over seeds {' '.join(map(str, agg['seeds']))} (mean ± std): {accuracy}; wall "
              f"{agg['wall_seconds_mean']:.0f} s, wall×bare {agg['wall_x_bare_images_mean']:.3g}, eval+end "
              f"{100 * agg['eval_and_end_task_share_mean']:.1f}%, peak MiB max {agg['peak_rss_mib_max']:.0f}")
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
    parser.add_argument("--protocol", action="store_true",
                        help=f"run issue 16's identical protocol ({PROTOCOL_CONFIG}: iCaRL, CIFAR-10 (JPEG) B0 Inc2, "
                             f"2 epochs per task) as configured, and report wall × bare img/s")
    parser.add_argument("--config", default=None,
                        help=f"scenario and data to run (default: {DEFAULT_CONFIG}, or {PROTOCOL_CONFIG} with "
                             f"--protocol)")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="methods to run, each in its own process (default: finetune lwf icarl; with --protocol: "
                             "the config's method; none: only the bare step and, with --synthesis, exemplars)")
    parser.add_argument("--model", default=None, help="replace the config's model (with its default options)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    parser.add_argument("--steps", type=int, default=20, help="steps timed for the bare-step line")
    parser.add_argument("--repeat", type=int, default=1, help="run everything this many times (min/median)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="run every method once per seed (overrides the config's seed) and print each "
                             "classifier's accuracy as mean ± std over them")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, for the bare step and the runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--synthesis", action="store_true", help="also time DeepInversion and collage exemplars "
                        "per class (on the bench model)")
    parser.add_argument("--synthesis-classes", type=int, default=4, help="classes per DeepInversion chunk")
    parser.add_argument("--synthesis-per-class", type=int, default=20,
                        help="exemplars per class (20: CIFAR-100's last task with K=2000)")
    parser.add_argument("--synthesis-iterations", type=int, default=300, help="DeepInversion iterations (study: 300)")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    parser.add_argument("--keep-runs", metavar="DIR", help="keep each run's directory under DIR (default: "
                        "a temporary folder, removed afterwards)")


def cmd_bench(args) -> int:
    if args.repeat < 1:
        raise CilearnError("--repeat: give 1 or more.")
    if args.seeds is not None and (any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds)):
        raise CilearnError(f"--seeds: give distinct non-negative integers, got {args.seeds}.")
    report = run_bench(args)
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
