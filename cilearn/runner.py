"""Runs an experiment: data → scenario → model → training loop → metrics, into a run directory.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.json`` (rewritten after every
task), ``log.csv`` (one row per epoch), ``accuracy_matrix.csv``, ``predictions/task_XX.npz`` (test
labels, predictions and a feature sample, so reports never retrain) and ``checkpoints/``.  A config
with several methods or seeds writes one such directory per run below a parent that holds
``experiment.yaml`` and ``summary.json``/``summary.md``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .augment import BatchAugment
from .config import Config, expand_runs, load_runs, load_yaml, parse_config, run_label
from .data import load_dataset
from .errors import CheckpointError, ConfigError, TrainingDiverged
from .evaluate import Evaluator, Inference
from .methods import MethodContext, method_class, method_options
from .models import build_model
from .rundir import (RunLock, UnsafeCheckpoint, load_checkpoint, remove_stale_temp_files, save_checkpoint,
                     write_csv, write_json, write_npz, write_yaml)
from .scenarios import build_scenario
from .train import EpochResult, Trainer

LOG_COLUMNS = ["task", "epoch", "lr", "train_loss", "train_accuracy", "test_accuracy_current",
               "test_accuracy_seen", "seconds"]
CHECKPOINT_FORMAT = 1


# --- reproducibility ---------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: '{name}' is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: CUDA was requested but no GPU is available; use device: auto or cpu.")
    return device


_SPLITS_CACHE: dict | None = None  # a dict only inside shared_datasets()


@contextmanager
def shared_datasets():
    """Within one experiment, the runs (and their validation before any training) share the last
    dataset loaded instead of reading its files again; outside, every load reads the files."""
    global _SPLITS_CACHE
    outer, _SPLITS_CACHE = _SPLITS_CACHE, ({} if _SPLITS_CACHE is None else _SPLITS_CACHE)
    try:
        yield
    finally:
        _SPLITS_CACHE = outer


def load_splits(data_cfg):
    """``load_dataset`` for a DataConfig (through the cache of :func:`shared_datasets` when active)."""
    cache = _SPLITS_CACHE
    try:
        key = (data_cfg.name, data_cfg.root, data_cfg.download,
               json.dumps(data_cfg.options, sort_keys=True), os.environ.get("CILEARN_DATA", ""))
    except (TypeError, ValueError):  # options that are not plain data (an injected opener): no caching
        key = None
    if cache is not None and key is not None and key in cache:
        return cache[key]
    splits = load_dataset(data_cfg.name, data_cfg.root, download=data_cfg.download, **data_cfg.options)
    if cache is not None:
        cache.clear()  # one dataset at a time: memory stays bounded
        if key is not None:
            cache[key] = splits
    return splits


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --- metrics -----------------------------------------------------------------------------------------
def summarize(history: list[dict], num_tasks: int, classifier: str) -> dict:
    """Scalar metrics of one classifier from the per-task evaluation history."""
    steps = [h["scores"][classifier] for h in history]
    size = num_tasks
    matrix = np.full((size, size), np.nan)
    for i, step in enumerate(steps):
        row = step["accuracy_row"]
        matrix[i, : len(row)] = row
    done = len(steps)
    seen = [s["seen_accuracy"] for s in steps]
    square = matrix[:done, :done] if done else matrix[:0, :0]
    return {
        "accuracy_matrix": [[None if np.isnan(v) else float(v) for v in row] for row in matrix[:done]],
        "seen_accuracy": seen,
        "current_accuracy": [s["current_accuracy"] for s in steps],
        "old_accuracy": [s["old_accuracy"] for s in steps],
        "average_incremental_accuracy": metrics.average_incremental_accuracy(seen) if seen else None,
        "last_accuracy": metrics.last_accuracy(seen) if seen else None,
        "forgetting": metrics.forgetting(square) if done else None,
        "backward_transfer": metrics.backward_transfer(square) if done else None,
    }


# --- one run -----------------------------------------------------------------------------------------
class Run:
    """One (method, seed) run in its own directory; resumable from its checkpoints."""

    def __init__(self, cfg: Config, run_dir: Path, label: str | None = None):
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.label = label or cfg.method.get("label") or cfg.method["name"]
        self.history: list[dict] = []
        self.log_rows: list[list] = []
        self.resumed_from: Path | None = None
        self.task_rng: dict | None = None  # the random state as the current task began
        self.ready = False  # setup() done: the config, data, model and method passed every check
        self.timing = {"train_seconds": 0.0, "eval_seconds": 0.0, "checkpoint_seconds": 0.0, "end_task_seconds": 0.0}

    # The heavy objects are built in setup() so that validation errors surface before any work.
    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.train.deterministic
        splits = load_splits(cfg.data)
        self.scenario = build_scenario(cfg.scenario, splits, cfg.seed)
        height, width, channels = self.scenario.image_shape
        if height != width:
            raise ConfigError(f"data: images are {height}×{width}; cilearn models expect square images "
                              f"(resize them with data.options.image_size for image folders).")
        self.model = build_model(cfg.model.name, channels, height, **cfg.model.options).to(self.device)
        if cfg.model.pretrained:
            from .transfer import apply_transfer  # start from a checkpoint: linear probe, freeze or full
            apply_transfer(self.model, cfg.model)
        elif cfg.model.transfer != "full" or cfg.model.freeze_stages:
            raise ConfigError("model.transfer / model.freeze_stages need model.pretrained (a checkpoint to start from).")
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.augment = BatchAugment.from_mode(cfg.train.augment, self.scenario.mean, self.scenario.std, channels,
                                              cfg.train.channels_last)
        self.inference = Inference(self.model, self.augment, self.device, cfg.train.eval_batch_size)
        options = method_options(cfg.method)
        context = MethodContext(scenario=self.scenario, device=self.device, seed=cfg.seed,
                                infer=self.inference, augment=self.augment)
        self.method = method_class(options.name)(options, self.model, context)
        self.method.check(self.scenario)
        self.evaluator = Evaluator(self.scenario, self.inference,
                                   cfg.output.max_feature_samples if cfg.output.save_features else 0, cfg.seed)
        self.trainer = Trainer(cfg.train, self.device, self.augment)
        self.ready = True

    # --- files ---
    def metrics_dict(self, complete: bool) -> dict:
        classifiers = list(self.history[0]["scores"]) if self.history else [self.method.primary_classifier]
        primary = self.method.primary_classifier
        per_classifier = {name: summarize(self.history, len(self.scenario), name) for name in classifiers}
        if self.scenario.kind == "domain_incremental":  # every experience's test set is scored at every step
            for summary in per_classifier.values():
                summary["average_accuracy_all_experiences"] = [float(np.mean(row)) for row in summary["accuracy_matrix"]]
        result = {
            "complete": complete,
            "dataset": self.scenario.dataset_name,
            "method": self.cfg.method["name"],
            "label": self.cfg.method.get("label") or self.cfg.method["name"],  # no /seed<k>: seeds group by it
            "seed": self.cfg.seed,
            "num_tasks": len(self.scenario),
            "tasks_done": len(self.history),
            "classes_per_step": [len(h["seen_classes"]) for h in self.history],
            "classifier": primary,
            **per_classifier.get(primary, {}),
            "classifiers": per_classifier,
            "timing": {k: round(v, 3) for k, v in self.timing.items()},
            "task_timing": [{"train_samples": h.get("train_samples"), **h.get("timing", {})} for h in self.history],
        }
        return result

    def write_results(self, complete: bool) -> dict:
        result = self.metrics_dict(complete)
        write_json(self.dir / "metrics.json", result)
        matrix = result.get("accuracy_matrix", [])
        write_csv(self.dir / "accuracy_matrix.csv", ["after_task"] + [f"task_{j}" for j in range(len(self.scenario))],
                  [[i] + ["" if v is None else f"{v:.6f}" for v in row] + [""] * (len(self.scenario) - len(row))
                   for i, row in enumerate(matrix)])
        write_csv(self.dir / "log.csv", LOG_COLUMNS, self.log_rows)
        return result

    def checkpoint_state(self, task_index: int, next_epoch: int | None) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT,
            "task": task_index,
            "next_epoch": next_epoch,  # None: the task is finished
            "head_sizes": [s.stop - s.start for s in self.model.head.task_slices],
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "history": self.history,
            "log_rows": self.log_rows,
            "timing": self.timing,
            "rng": rng_state(),
        }
        if next_epoch is not None:
            state["trainer"] = self.trainer.state_dict()
            state["task_rng"] = self.task_rng
        return state

    def save(self, task_index: int, next_epoch: int | None) -> None:
        if not self.cfg.output.save_checkpoints:
            return
        started = time.perf_counter()
        folder = self.dir / "checkpoints"
        if next_epoch is None:
            save_checkpoint(folder / f"task_{task_index:02d}.pt", self.checkpoint_state(task_index, None))
            (folder / "epoch.pt").unlink(missing_ok=True)
        else:
            save_checkpoint(folder / "epoch.pt", self.checkpoint_state(task_index, next_epoch))
        self.timing["checkpoint_seconds"] += time.perf_counter() - started

    def latest_checkpoint(self) -> dict | None:
        """The most advanced readable checkpoint, or None when there is none yet.

        ``epoch.pt`` (inside a task) wins when it is newer than the last finished task: a process killed
        between writing ``task_XX.pt`` and deleting ``epoch.pt`` leaves a stale one behind.  A truncated or
        corrupt file is skipped for the previous checkpoint, with a warning naming it; a file that holds
        anything but tensors and plain values is refused."""
        folder = self.dir / "checkpoints"
        tasks = sorted((p for p in folder.glob("task_*.pt") if p.stem[5:].isdigit()),
                       key=lambda p: int(p.stem[5:]), reverse=True)
        skipped: list[CheckpointError] = []
        epoch_path = folder / "epoch.pt"
        epoch_state = self._read_checkpoint(epoch_path, skipped) if epoch_path.exists() else None
        chosen = None
        for path in tasks:
            if epoch_state is not None and epoch_state["task"] > int(path.stem[5:]):
                break
            state = self._read_checkpoint(path, skipped)
            if state is not None:
                chosen = (path, state)
                break
        if chosen is None and epoch_state is not None:
            chosen = (epoch_path, epoch_state)
        if chosen is None:
            if skipped:
                raise CheckpointError(f"{skipped[0]} No other checkpoint in '{folder}' can be read either; "
                                      f"delete the unreadable files to start the run over.")
            return None
        for error in skipped:
            warn(f"{error} Resuming from '{chosen[0]}' instead.")
        self.resumed_from = chosen[0]
        return chosen[1]

    _CHECKPOINT_KEYS = ("task", "next_epoch", "head_sizes", "model", "method", "history", "log_rows", "timing", "rng")

    def _read_checkpoint(self, path: Path, skipped: list) -> dict | None:
        try:
            state = load_checkpoint(path)
        except UnsafeCheckpoint:
            raise
        except CheckpointError as exc:
            skipped.append(exc)
            return None
        if "format" in state and state["format"] != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint '{path}' has format {state['format']}; this cilearn reads format "
                                  f"{CHECKPOINT_FORMAT}. Resume it with the cilearn version that wrote it.")
        missing = [key for key in ("format",) + self._CHECKPOINT_KEYS if key not in state]
        if missing or (state["next_epoch"] is not None and "trainer" not in state):
            skipped.append(CheckpointError(f"checkpoint '{path}' is incomplete (no {', '.join(missing) or 'trainer'} "
                                           f"entry); it is not a cilearn checkpoint or it is damaged."))
            return None
        if not isinstance(state["task"], int) or not 0 <= state["task"] < len(self.scenario):
            raise CheckpointError(f"checkpoint '{path}' is for task {state['task']}, but this run's config has "
                                  f"{len(self.scenario)} tasks; was config.yaml edited after the run started?")
        return state

    @contextmanager
    def _checkpoint_must_fit(self):
        """Turn a checkpoint that does not fit this run's model or method into one clear error."""
        try:
            yield
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as exc:
            text = " ".join(str(exc).split())
            detail = f"{type(exc).__name__}: {text[:240]}" if text else type(exc).__name__
            raise CheckpointError(f"checkpoint '{self.resumed_from}' does not fit this run's model or method "
                                  f"({detail}); was config.yaml edited after the run started?") from None

    def restore(self, state: dict) -> tuple[int, int]:
        """Load a checkpoint's progress: (first task to run, first epoch of it)."""
        with self._checkpoint_must_fit():
            for size in state["head_sizes"]:
                self.model.add_classes(size)
            self.history, self.log_rows = list(state["history"]), list(state["log_rows"])
            self.timing.update(state["timing"])
            if state["next_epoch"] is None:  # resume after a finished task
                self.model.load_state_dict(state["model"])
                self.method.load_state_dict(state["method"])
                set_rng_state(state["rng"])
                return state["task"] + 1, 0
        return state["task"], state["next_epoch"]  # model and method load inside run_task, after begin_task

    # --- the loop over tasks ---
    def execute(self, resume: bool = False) -> dict:
        if not self.ready:
            self.setup()  # every check passes before anything is written to the run directory
        with RunLock(self.dir):
            if not resume:
                check_fresh(self.dir)  # checked again under the lock: another run may have just finished here
            remove_stale_temp_files(self.dir)  # left by a process killed while writing
            state = self.latest_checkpoint() if resume else None
            if not resume:
                write_yaml(self.dir / "config.yaml", self.cfg.to_dict())
            first_task, start_epoch = 0, 0
            tasks = len(self.scenario)
            if state is not None:
                first_task, start_epoch = self.restore(state)
                self.write_results(complete=False)  # metrics.json etc. as of the checkpoint (a kill may have
                # come between writing it and them, or a newer, unreadable checkpoint was skipped)
                where = (f"task {first_task + 1}/{tasks}, epoch {start_epoch + 1}" if start_epoch
                         else f"the start of task {first_task + 1}/{tasks}")
                print(f"[{self.label}] resuming from '{self.resumed_from}' at {where}", flush=True)
            elif resume:
                print(f"[{self.label}] no checkpoint in '{self.dir}' yet: starting the run from the beginning",
                      flush=True)
            try:
                for task in self.scenario[first_task:]:
                    self.run_task(task, start_epoch, state if start_epoch else None)
                    start_epoch, state = 0, None
            except TrainingDiverged as exc:
                done = len(self.history)
                kept = (f" The {done} finished task{'s' if done != 1 else ''} keep their results and checkpoints in "
                        f"'{self.dir}'." if done else "")
                raise TrainingDiverged(f"{exc}{kept}") from None
            return self.write_results(complete=True)

    def run_task(self, task, start_epoch: int = 0, state: dict | None = None) -> None:
        cfg = self.cfg
        if state is None and task.new_classes:  # domain streams add no classes after the first experience
            self.model.add_classes(len(task.new_classes))
        if state is None:
            self.task_rng = rng_state()  # saved with epoch checkpoints: see below
        elif state.get("task_rng") is not None:
            # Inside a task, begin_task and training_data run again: give them the random state they had
            # the first time, so that a method drawing from the global RNGs there rebuilds the same data.
            self.task_rng = state["task_rng"]
            set_rng_state(self.task_rng)
        self.method.begin_task(task)
        if state is not None:  # resume inside the task: the checkpoint overrides what begin_task built
            with self._checkpoint_must_fit():
                self.model.load_state_dict(state["model"])
                self.method.load_state_dict(state["method"])
        data = self.method.training_data(task)
        self.trainer.start(self.method)
        if state is not None:
            with self._checkpoint_must_fit():
                self.trainer.load_state_dict(state["trainer"])
                set_rng_state(state["rng"])
        tasks = len(self.scenario)
        desc = f"{self.label} task {task.index + 1}/{tasks}"

        def epoch_end(result: EpochResult) -> None:
            self.timing["train_seconds"] += result.seconds
            current = seen = float("nan")
            last = result.epoch + 1 == cfg.train.epochs
            # The last epoch's test accuracies come from the full evaluation after the task (one pass less).
            if cfg.train.eval_every and (result.epoch + 1) % cfg.train.eval_every == 0 and not last:
                started = time.perf_counter()
                current, seen = self.evaluator.quick(task.index)
                self.timing["eval_seconds"] += time.perf_counter() - started
            self.log_rows.append([task.index, result.epoch + 1, f"{result.lr:.6g}", f"{result.train_loss:.6f}",
                                  f"{result.train_accuracy:.6f}", f"{current:.6f}", f"{seen:.6f}",
                                  f"{result.seconds:.3f}"])
            every = cfg.train.checkpoint_every
            if every and (result.epoch + 1) % every == 0 and not last:
                write_csv(self.dir / "log.csv", LOG_COLUMNS, self.log_rows)
                self.save(task.index, result.epoch + 1)

        before = dict(self.timing)
        self.trainer.fit(self.model, self.method, data, start_epoch, epoch_end, desc)
        started = time.perf_counter()
        self.method.end_task(task, data)
        self.timing["end_task_seconds"] += time.perf_counter() - started
        started = time.perf_counter()
        scores, arrays = self.evaluator.evaluate(task.index, self.method.classifiers())
        self.timing["eval_seconds"] += time.perf_counter() - started
        if self.log_rows and self.log_rows[-1][:2] == [task.index, cfg.train.epochs]:
            head = scores.get("head_task_aware" if self.scenario.task_incremental else "head")
            current, seen = ((head["current_accuracy"], head["seen_accuracy"]) if head is not None
                             else self.evaluator.quick(task.index))  # a method reporting no head classifier
            self.log_rows[-1][5:7] = [f"{current:.6f}", f"{seen:.6f}"]
        self.history.append({"task": task.index, "new_classes": task.new_classes,
                             "seen_classes": task.seen_classes, "scores": scores,
                             "train_samples": len(data) * (cfg.train.epochs - start_epoch),
                             "timing": {k: round(v - before[k], 4) for k, v in self.timing.items()}})
        if cfg.output.save_features:
            write_npz(self.dir / "predictions" / f"task_{task.index:02d}.npz", arrays)
        self.save(task.index, None)
        self.write_results(complete=task.index + 1 == len(self.scenario))
        primary = scores[self.method.primary_classifier]
        print(f"[{self.label}] task {task.index + 1}/{len(self.scenario)} ({task.name}): "
              f"accuracy on seen classes {primary['seen_accuracy']:.1%}, on this task "
              f"{primary['current_accuracy']:.1%}", flush=True)


# --- experiments -------------------------------------------------------------------------------------
def default_out_dir(name: str) -> Path:
    return Path("runs") / name / datetime.now().strftime("%Y%m%d-%H%M%S")


def check_fresh(out: Path) -> None:
    """A new run never writes into a folder that holds anything (a lone ``.lock`` left by a run that died
    before writing its config does not count)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder '{out}' is a file, not a folder; choose another --out.")
    if out.is_dir() and any(not _leftover(p.name) for p in out.iterdir()):
        raise ConfigError(f"output folder '{out}' already exists and is not empty; it is never overwritten. "
                          f"Continue it with 'cilearn run --resume {out}', or choose another --out.")


def _leftover(name: str) -> bool:
    """What a run killed before it wrote its config leaves behind."""
    return name == ".lock" or (name.startswith(".config.yaml.") and name.endswith(".tmp"))


def validate_runs(out: Path, runs: list[tuple[str, Config]]) -> list[Run]:
    """Build every run's data, scenario, model and method (all checks) before anything is written: a
    mistake in the last method of a config must not surface after the first one has trained.  Seeds only
    change the class order and the initialisation, so one seed per method is checked."""
    checked, seen = [], set()
    for label, cfg in runs:
        key = label.split("/seed")[0]
        if key in seen:
            continue
        seen.add(key)
        run = Run(cfg, out / label if len(runs) > 1 else out, label)
        run.setup()
        checked.append(run)
    return checked


def read_metrics(run_dir: Path) -> dict | None:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def run_experiment(config_path: str | Path, overrides: list[str] | None = None,
                   out: str | Path | None = None) -> Path:
    """Validate everything, then run every (method, seed) of the config. Returns the output folder."""
    with shared_datasets():
        return _run_experiment(config_path, overrides, out)


def _run_experiment(config_path, overrides, out) -> Path:
    name, runs = load_runs(config_path, overrides)
    out = Path(out) if out else default_out_dir(name)
    check_fresh(out)
    checked = validate_runs(out, runs)  # nothing is written before this passes
    if len(runs) == 1:
        from .summary import write_summary
        write_summary(out, [checked[0].execute()], files=False)
    else:
        del checked  # each run builds its own again (the dataset is cached)
        from .config import apply_overrides
        with RunLock(out):
            check_fresh(out)  # another process may have started in the same folder meanwhile
            write_yaml(out / "experiment.yaml", apply_overrides(load_yaml(config_path), overrides or []))
            run_children(out, runs, resume=False)
    return out


def resume_experiment(out: str | Path) -> Path:
    """Continue a run directory (one run, or the parent folder of several) from its checkpoints."""
    with shared_datasets():
        return _resume_experiment(Path(out))


def _resume_experiment(out: Path) -> Path:
    if not out.is_dir():
        raise CheckpointError(f"--resume: '{out}' does not exist or is not a folder; give a run directory that "
                              f"a previous 'cilearn run' wrote.")
    if (out / "experiment.yaml").is_file():
        with RunLock(out):
            raw = load_yaml(out / "experiment.yaml")
            raws = expand_runs(raw)
            many = len({r["seed"] for r in raws}) > 1
            runs = [(run_label(r, many), parse_config(r)) for r in raws]
            if (out / "summary.json").is_file() and all(
                    (read_metrics(out / label) or {}).get("complete") for label, _ in runs):
                print(f"'{out}' is already complete ({len(runs)} runs); nothing to resume.", flush=True)
                return out
            run_children(out, runs, resume=True)
    elif (out / "config.yaml").is_file():
        metrics = read_metrics(out)
        if metrics and metrics.get("complete"):
            print(f"'{out}' is already complete ({metrics.get('tasks_done')}/{metrics.get('num_tasks')} tasks); "
                  f"nothing to resume.", flush=True)
            return out
        from .summary import write_summary
        try:
            cfg = parse_config(load_yaml(out / "config.yaml"))
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(message if str(out) in message else f"{out / 'config.yaml'}: {message}") from None
        write_summary(out, [Run(cfg, out).execute(resume=True)], files=False)
    else:
        raise CheckpointError(f"--resume: '{out}' is not a cilearn run directory (no config.yaml or "
                              f"experiment.yaml); give a folder that a previous 'cilearn run' wrote.")
    return out


def run_children(out: Path, runs: list[tuple[str, Config]], resume: bool) -> list[dict]:
    results = []
    for label, cfg in runs:
        child = out / label
        done = read_metrics(child) if resume else None
        if done and done.get("complete"):
            results.append(done)
            continue
        results.append(Run(cfg, child, label).execute(resume=resume and (child / "config.yaml").exists()))
    from .summary import write_summary
    write_summary(out, results)
    return results
