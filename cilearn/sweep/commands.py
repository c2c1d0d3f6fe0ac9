"""``cilearn sweep``: expand a sweep file into runs and run them on a local pool or a Ray cluster.

A sweep folder holds ``sweep.yaml`` (the sweep with its base config inlined, and the expansion: every
run's name and settings), ``configs/<run>.yaml`` (each run's config), ``logs/<run>.log`` (each run's
output), one ordinary run folder per run (``<grid point>/<repeat>``), and at the end ``summary.md`` /
``summary.json`` (mean ± std per grid point over its repeats) and ``report/report.html``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml
from tqdm import tqdm

from ..errors import CheckpointError, ConfigError
from ..log import count, get_logger, progress_disabled
from ..run_result import RunResult
from ..rundir import RunDir, RunLock, write_yaml
from .execute import Job, LocalPool, Outcome, RayCluster, ray_available, run_state, summarize
from .spec import expand, load_sweep

log = get_logger(__name__)

LEFTOVERS = (".lock",)  # what a sweep killed before writing sweep.yaml leaves in its folder


def register(subparsers) -> None:
    sweep = subparsers.add_parser(
        "sweep", help="run a grid of configs (methods × options × seeds) on a local pool or a Ray cluster",
        description="Expand SWEEP (a base config and a grid of settings) into runs, each an ordinary run folder "
                    "below one sweep folder; run them WORKERS at a time (or as Ray tasks); skip finished runs and "
                    "resume interrupted ones; end with one table (mean ± std per grid point over seeds) and "
                    "the report. Exit code 1 when a run failed, 2 for a bad sweep file or option.")
    sweep.add_argument("sweep", nargs="?", metavar="SWEEP",
                       help="sweep file, e.g. configs/sweeps/icarl_study_digits.yaml")
    sweep.add_argument("--out", metavar="DIR",
                       help="sweep folder (default: runs/<sweep name>/<timestamp>); never overwritten")
    sweep.add_argument("--resume", metavar="DIR", help="continue a sweep folder: finished runs are skipped, "
                       "interrupted ones resumed; with SWEEP, the (edited) sweep file is expanded into DIR, "
                       "e.g. to add seeds")
    sweep.add_argument("--workers", type=int, metavar="N", help="runs at a time on the local pool (default 1)")
    sweep.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="local: a pool of child processes; ray: one Ray task per run (pip install 'cilearn[ray]')")
    sweep.add_argument("--address", metavar="ADDR", help="Ray cluster to join: host:port of the head node, or "
                       "'auto' (default: start a Ray instance on this machine)")
    sweep.add_argument("--cpus-per-run", type=float, metavar="N",
                       help="CPU threads of each run (local default: cores // workers; Ray: the task's CPU "
                            "request, default 1)")
    sweep.add_argument("--gpus-per-run", type=float, default=0.0, metavar="N",
                       help="GPUs each Ray task requests (e.g. 1, or 0.5 to share one); Ray sets CUDA_VISIBLE_DEVICES")
    sweep.add_argument("--dry-run", action="store_true", help="print the runs and their state; write nothing")
    sweep.add_argument("--no-report", action="store_true", help="only summary.md/json, no report/ folder")
    sweep.set_defaults(handler=cmd_sweep)


def check_options(args) -> None:

    if not args.sweep and not args.resume:
        raise ConfigError("give a sweep file (e.g. cilearn sweep configs/sweeps/icarl_study_digits.yaml) or "
                          "--resume DIR.")
    if args.resume and args.out:
        raise ConfigError("--resume DIR continues that folder; it takes no --out.")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: expected at least 1, got {args.workers}.")
    if args.cpus_per_run is not None and args.cpus_per_run <= 0:
        raise ConfigError(f"--cpus-per-run: expected a positive number, got {args.cpus_per_run}.")
    if args.gpus_per_run < 0:
        raise ConfigError(f"--gpus-per-run: expected 0 or more, got {args.gpus_per_run}.")
    if args.backend == "local":
        if args.address:
            raise ConfigError("--address is for --backend ray.")
        if args.gpus_per_run:
            raise ConfigError("--gpus-per-run is for --backend ray; the local pool runs every run with the "
                              "config's train.device (set CUDA_VISIBLE_DEVICES to choose GPUs).")
    else:
        if args.workers is not None:
            raise ConfigError("--workers is for the local pool; with Ray, the cluster's CPUs/GPUs and "
                              "--cpus-per-run / --gpus-per-run decide how many runs go at once.")
        if not ray_available() and not args.dry_run:
            raise ConfigError("--backend ray needs Ray, which is not installed: pip install 'cilearn[ray]' "
                              "(or pip install ray).")


def load(args):
    """The sweep to run and its folder: (sweep, out, resuming)."""

    if args.resume:
        out = Path(args.resume)
        stored = out / "sweep.yaml"
        if not stored.is_file():
            raise CheckpointError(f"--resume: '{out}' is not a sweep folder (no sweep.yaml); give a folder that "
                                  f"'cilearn sweep' wrote.")
        if args.sweep:
            return load_sweep(args.sweep), out, True
        spec = yaml.safe_load(stored.read_text())
        if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list):
            raise CheckpointError(f"'{stored}' is not a sweep file that cilearn wrote (no runs list).")
        runs = spec.pop("runs")
        sweep = expand(spec, str(stored))
        if [r.name for r in sweep.runs] != [r.get("name") for r in runs if isinstance(r, dict)]:
            raise CheckpointError(f"'{stored}' expands into other runs than it lists (was it edited, or written by "
                                  f"another cilearn version?); give the sweep file too: cilearn sweep SWEEP "
                                  f"--resume {out}.")
        return sweep, out, True
    sweep = load_sweep(args.sweep)
    out = Path(args.out) if args.out else Path("runs") / sweep.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; choose a folder.")
    if out.is_dir() and any(p.name not in LEFTOVERS for p in out.iterdir()):
        hint = (f"continue it with 'cilearn sweep --resume {out}'" if (out / "sweep.yaml").is_file()
                else "choose another --out")
        raise ConfigError(f"--out '{out}' already exists and is not empty; it is never overwritten: {hint}.")
    return sweep, out, False


def check_existing_runs(sweep, out: Path) -> None:
    """A run folder already in the sweep folder must hold the run the sweep now describes."""

    for run in sweep.runs:
        stored = RunDir(out / run.name).config
        if not stored.is_file():
            continue
        try:
            have = yaml.safe_load(stored.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CheckpointError(f"'{stored}' cannot be read ({exc}); delete that run folder to run it "
                                  f"again.") from None
        want = yaml.safe_load(yaml.safe_dump(run.config.to_dict(), sort_keys=False))
        if have != want:
            key, old, new = _first_difference(have, want)
            raise ConfigError(f"run '{run.name}' in '{out}' was made with {key}: {old!r}, the sweep now gives "
                              f"{new!r}; a sweep folder keeps its runs: use a new --out for the changed sweep.")


def _first_difference(a, b, path: str = "") -> tuple[str, object, object]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    return path or "the config", a, b


def cmd_sweep(args) -> int:

    check_options(args)
    sweep, out, resuming = load(args)  # every run's config is validated here
    if resuming:
        check_existing_runs(sweep, out)
    if args.dry_run:
        for run in sweep.runs:
            state = run_state(out / run.name) if resuming else "new"
            print(f"{state:<9} {run.name}  " + ", ".join(f"{k}={json.dumps(v)}" for k, v in run.settings.items()))
        print(f"{count(len(sweep.runs), 'run')} in {out} (dry run: nothing written)")
        return 0
    if args.backend == "ray":
        backend = RayCluster(args.address, args.cpus_per_run or 1.0, args.gpus_per_run)
        backend.connect()  # before anything is written: a wrong address is an error, not an empty sweep
        threads = max(1, round(args.cpus_per_run or 1))
    else:
        workers = args.workers or 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, round(args.cpus_per_run)) if args.cpus_per_run else max(1, cores // workers)
        backend = LocalPool(workers, threads)
    log.info(backend.describe())
    try:
        return run_sweep(sweep, out, backend, threads, html=not args.no_report)
    except KeyboardInterrupt:
        print(f"interrupted: finished runs are kept; continue with cilearn sweep --resume {out}",
              file=sys.stderr, flush=True)
        return 130


def run_sweep(sweep, out: Path, backend, threads: int, html: bool) -> int:


    out = out.absolute()
    with RunLock(out):
        write_yaml(out / "sweep.yaml", sweep.resolved())  # the expansion first, then each run's config
        for run in sweep.runs:
            write_yaml(out / "configs" / f"{run.name}.yaml", run.raw)
        jobs, total, finished = [], len(sweep.runs), 0
        failed: list[Outcome] = []
        bar = tqdm(total=total, desc=f"sweep {sweep.name}", unit="run", disable=progress_disabled(log), file=sys.stderr)

        def report(outcome: Outcome) -> None:
            nonlocal finished
            finished += 1
            if outcome.status == "failed":
                failed.append(outcome)
                detail = f"failed after {outcome.seconds:.1f} s: {outcome.error}"
            elif outcome.status == "skipped":
                detail = "already finished"
            else:
                m = RunResult.load(out / outcome.name).metrics
                detail = (f"{outcome.seconds:.1f} s, last acc {m['last_accuracy']:.1%}, avg incr. acc "
                          f"{m['average_incremental_accuracy']:.1%} ({m['classifier']})"
                          + (", resumed" if outcome.resumed else ""))
            bar.update(1)
            line = f"[{finished}/{total}] {outcome.status:<7} {outcome.name}: {detail}"
            if bar.disable:
                log.info(line)
            elif log.isEnabledFor(logging.INFO):
                bar.write(line, file=sys.stdout)  # above the bar, which stays at the bottom

        for run in sweep.runs:
            if run_state(out / run.name) == "complete":
                report(Outcome(run.name, "skipped"))
            else:
                jobs.append(Job(name=run.name, run_dir=str(out / run.name), log=str(out / "logs" / f"{run.name}.log"),
                                config=str(out / "configs" / f"{run.name}.yaml"), cwd=os.getcwd(), threads=threads))
        started = time.perf_counter()
        try:
            if jobs:
                backend.run(jobs, report)
        finally:
            bar.close()
        log.info(f"{count(len(jobs), 'run')} in {time.perf_counter() - started:.1f} s ({total - len(jobs)} already "
                 f"finished), {len(failed)} failed")
        for outcome in failed:
            log.warning(f"run {outcome.name} failed: {outcome.error} (log: {out / 'logs' / outcome.name}.log)")
        complete = [out / r.name for r in sweep.runs if run_state(out / r.name) == "complete"]
        summarize(out, complete, f"cilearn sweep — {sweep.name}", html)
    return 1 if failed else 0
