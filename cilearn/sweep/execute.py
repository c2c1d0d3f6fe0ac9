"""Running a sweep: one ``cilearn run`` process per run, on a local pool or as Ray tasks.

Each run is a separate process (``python -m cilearn.sweep.child``, the ``cilearn`` command line that
dies with the process that started it), so a crash, a NaN or an out-of-memory kill ends one run, never
the sweep.  Whether a run starts, resumes or is skipped is read from its folder when it is about to
start: ``metrics.json`` with ``complete: true`` → skipped; a ``config.yaml`` → ``cilearn run --resume``;
otherwise ``cilearn run CONFIG --out RUN_DIR``.  The same function runs in a local thread or in a Ray
worker, so a Ray task that Ray retries after losing a node resumes the run from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from ..errors import CilearnError, ConfigError
from ..log import get_logger
from ..report.build import ReportOptions, make_report
from ..run_result import RunResult
from ..rundir import RunDir
from ..summary import write_summary

log = get_logger(__name__)

LOG_HEADER = "[sweep] "  # starts the line that each attempt of a run writes first into its log


@dataclasses.dataclass(frozen=True)
class Job:
    """One run, as plain data (it travels to Ray workers): absolute paths, same on every node."""

    name: str
    run_dir: str
    config: str
    log: str
    cwd: str
    threads: int


@dataclasses.dataclass
class Outcome:
    name: str
    status: str            # done | skipped | failed
    seconds: float = 0.0
    error: str = ""        # for failed runs: the run's error line
    resumed: bool = False  # continued an interrupted run


def run_state(run_dir: Path) -> str:
    """``complete``, ``started`` (has a config.yaml: resume it) or ``new``."""
    files = RunDir(run_dir)
    metrics = files.read_metrics()
    if metrics is not None and metrics.get("complete"):
        return "complete"
    return "started" if files.config.is_file() else "new"


def run_one(job: Job, started: Callable[[subprocess.Popen], None] | None = None) -> Outcome:
    """Start, resume or skip one run in a child process; its output goes to ``job.log`` (appended)."""
    run_dir = Path(job.run_dir)
    state = run_state(run_dir)
    if state == "complete":
        return Outcome(job.name, "skipped")
    args = ["run", "--resume", job.run_dir] if state == "started" else ["run", job.config, "--out", job.run_dir]
    threads = str(job.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    log = Path(job.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    begin = time.perf_counter()
    with open(log, "ab") as handle:
        handle.write(f"{LOG_HEADER}{time.strftime('%Y-%m-%d %H:%M:%S')}: cilearn {' '.join(args)}\n".encode())
        handle.flush()
        proc = subprocess.Popen([sys.executable, "-m", "cilearn.sweep.child", str(os.getpid()), *args],
                                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=job.cwd if os.path.isdir(job.cwd) else None)
        if started is not None:
            started(proc)
        code = proc.wait()
    seconds = time.perf_counter() - begin
    if code == 0 and run_state(run_dir) == "complete":
        return Outcome(job.name, "done", seconds, resumed=state == "started")
    with open(log, "rb") as handle:
        handle.seek(offset)
        text = handle.read().decode("utf-8", "replace")
    return Outcome(job.name, "failed", seconds, error_line(text, code), resumed=state == "started")


def error_line(output: str, code: int) -> str:
    """The line that says why a run failed: its ``error:`` line, else the last line (a traceback's
    exception), else how the process ended."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith(LOG_HEADER)]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code == 0:
        return "the run ended without complete metrics"
    return f"exit code {code}" + (f": {lines[-1]}" if lines else "")


# --- backends ----------------------------------------------------------------------------------------
class LocalPool:
    """``workers`` runs at a time on this machine, each a child process."""

    def __init__(self, workers: int, threads: int):
        self.workers, self.threads = workers, threads
        self._live: set[subprocess.Popen] = set()
        self._guard = threading.Lock()

    def describe(self) -> str:
        return (f"local pool: {self.workers} run{'s' if self.workers > 1 else ''} at a time, OMP_NUM_THREADS="
                f"{self.threads} each (a config's train.num_threads wins)")

    def _track(self, proc: subprocess.Popen) -> None:
        with self._guard:
            self._live = {p for p in self._live if p.poll() is None} | {proc}

    def run(self, jobs: list[Job], report: Callable[[Outcome], None]) -> None:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="sweep") as pool:
            futures = {pool.submit(run_one, job, self._track): job for job in jobs}
            try:
                for future in as_completed(futures):
                    report(future.result())
            except KeyboardInterrupt:
                for future in futures:
                    future.cancel()
                with self._guard:  # a Ctrl-C reaches the children too; a SIGINT sent to this process alone does not
                    for proc in self._live:
                        if proc.poll() is None:
                            proc.send_signal(signal.SIGINT)
                raise


class RayCluster:
    """Each run is a Ray task asking for ``cpus`` CPUs and ``gpus`` GPUs; Ray places it on a node."""

    def __init__(self, address: str | None, cpus: float, gpus: float):
        self.address, self.cpus, self.gpus = address, cpus, gpus
        self._connected_here = False

    def connect(self) -> None:

        import ray

        if ray.is_initialized():  # e.g. a script that started Ray and calls the sweep in-process
            return
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except Exception as exc:  # Ray raises ConnectionError, ValueError, RuntimeError... for a bad address
            text = " ".join(str(exc).split())[:300]
            where = f"the Ray cluster at '{self.address}'" if self.address else "a local Ray instance"
            raise ConfigError(f"cannot connect to {where} ({type(exc).__name__}: {text}); check --address "
                              f"(host:port of the head node, or 'auto' on a cluster node).") from None
        self._connected_here = True

    def describe(self) -> str:
        import ray

        resources = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return (f"Ray: {nodes} node{'s' if nodes != 1 else ''}, {resources.get('CPU', 0):g} CPUs, "
                f"{resources.get('GPU', 0):g} GPUs; each run asks for {self.cpus:g} CPU{gpus}")

    def run(self, jobs: list[Job], report: Callable[[Outcome], None]) -> None:
        import ray

        task = ray.remote(run_one).options(num_cpus=self.cpus, num_gpus=self.gpus)
        pending = {task.remote(job): job for job in jobs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                try:
                    outcome = ray.get(done[0])
                except ray.exceptions.RayError as exc:  # the worker or its node died (after Ray's retries)
                    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                    outcome = Outcome(job.name, "failed", error=f"Ray: {first.strip()[:300]}")
                report(outcome)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)  # kills the worker; its child run dies with it (see child.py)
            raise
        finally:
            if self._connected_here:
                ray.shutdown()


def ray_available() -> bool:

    return importlib.util.find_spec("ray") is not None


# --- the end of a sweep ------------------------------------------------------------------------------
def summarize(out: Path, run_dirs: list[Path], title: str, html: bool) -> None:
    """summary.md/json (mean ± std per grid point over its repeats) and the HTML report, from the runs
    that finished, in the order of the expansion."""

    results = [RunResult.load(d).metrics for d in run_dirs]
    if not results:
        log.warning("no run finished: no summary.")
        return
    write_summary(out, results)
    if not html:
        return

    try:  # t-SNE and Grad-CAM are left out: slow for many grid points; cilearn report adds them
        path = make_report(run_dirs, out / "report", ReportOptions(tsne=False, gradcam=False, title=title))
    except CilearnError as exc:
        log.warning(f"report not written: {exc}")
        return
    log.info(f"report: {path}")
