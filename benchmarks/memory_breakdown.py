"""Where a run's resident memory goes, step by step: imports, the data, the optimizer's first import, training.

Builds the run of a config (default: the speed protocol, ``configs/bench_protocol.yaml``, in fp32) in this
process and prints the resident set size (``VmRSS``) after each step of its start, then the peak (``VmHWM``,
the run's peak so far) after each of its tasks, trained with ``--iterations`` gradient steps each.  The steps:

* ``import torch`` and ``import cilearn`` (what every run pays);
* ``--stock-optimizer`` only: ``import torch._dynamo``, PyTorch's compiler stack (sympy, torch.distributed,
  torch.onnx, ...), which a stock ``torch.optim`` optimizer imports on its first ``add_param_group`` and
  ``step`` (``torch._disable_dynamo``'s wrappers), whether or not anything is compiled.  cilearn's
  optimizers leave those wrappers out (``cilearn.runtime.eager_optimizer``); the option shows what the
  import costs, as a line of its own.  The script says at the end whether the run imported it;
* ``Run.setup()``: the dataset (decoded uint8 arrays; CIFAR-10 (JPEG) 146 + 29 MiB), the network, the method;
* each task, run as ``cilearn run`` runs it (``Run.execute``: its evaluations, checkpoints and result files) with
  ``--iterations`` gradient steps: the RSS after it and the run's peak so far (the run's own meter).

Linux only (``/proc/self/status``).  The allocator matters (glibc keeps freed activations: see
``benchmarks/allocator_probe.py``); the script prints which one is preloaded.

    CILEARN_DATA=../shared/data python benchmarks/memory_breakdown.py --threads 2
    CILEARN_DATA=../shared/data python benchmarks/memory_breakdown.py --set train.precision=bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

STATUS = Path("/proc/self/status")


def status_mib(field: str) -> float:  # not cilearn.engine.meter's reader: importing cilearn imports torch
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in {STATUS}: this script needs Linux")


class Table:
    def __init__(self) -> None:
        self.last = status_mib("VmRSS")
        print(f"{'step':<62} {'RSS MiB':>8} {'+ MiB':>7} {'peak MiB':>9}")
        print(f"{'python started':<62} {self.last:>8.0f}")

    def row(self, step: str, peak: float | None = None) -> None:
        rss = status_mib("VmRSS")
        peak_text = "" if peak is None else f"{peak:>9.0f}"
        print(f"{step:<62} {rss:>8.0f} {rss - self.last:>+7.0f} {peak_text}", flush=True)
        self.last = rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/bench_protocol.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides, as cilearn run --set (default adds train.precision=fp32)")
    parser.add_argument("--iterations", type=int, default=10, help="gradient steps per task (default 10)")
    parser.add_argument("--tasks", type=int, default=5, help="tasks to run (default 5: the protocol's all; "
                                                                "the first has no teacher)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stock-optimizer", action="store_true",
                        help="import torch._dynamo first, as a stock torch.optim optimizer would (its cost as a line)")
    args = parser.parse_args()

    table = Table()
    modules = len(sys.modules)
    import torch
    table.row(f"import torch ({len(sys.modules) - modules} modules)")
    modules = len(sys.modules)
    import cilearn.cli  # noqa: F401  (what `cilearn run` imports)
    from cilearn.config import apply_overrides, load_yaml, parse_config
    from cilearn.engine.runner import Run
    table.row(f"import cilearn ({len(sys.modules) - modules} modules)")
    if args.stock_optimizer:
        modules = len(sys.modules)
        import torch._dynamo  # noqa: F401  (what a stock torch.optim optimizer imports on first use)
        table.row(f"import torch._dynamo, as stock torch.optim does ({len(sys.modules) - modules} modules)")

    torch.set_num_threads(args.threads)
    overrides = ["train.precision=fp32", *args.set, f"train.iterations={args.iterations}",
                 f"train.num_threads={args.threads}", f"scenario.num_tasks={args.tasks}"]
    cfg = parse_config(apply_overrides(load_yaml(args.config), overrides))
    with tempfile.TemporaryDirectory() as folder:
        run = Run(cfg, Path(folder) / "run")  # the run `cilearn run` makes: checkpoints, metrics, its evaluations
        run.setup()
        table.row(f"Run.setup(): {cfg.data.name} data, model, method")
        run_task = run.run_task

        def run_and_report(task, state=None):
            began = time.perf_counter()
            run_task(task, state)
            table.row(f"task {task.index + 1}: {args.iterations} steps, end of task, evaluation "
                      f"({time.perf_counter() - began:.0f} s)", peak=run.meter.overall_mib)

        run.run_task = run_and_report
        run.execute()
        phases = ", ".join(f"{name} {mib:.0f}" for name, mib in run.meter.peaks_mib.items() if mib is not None)
        print(f"peak RSS MiB per phase (the run's own meter): {phases}")
    print("PyTorch's compiler stack (torch._dynamo) imported: " + ("yes" if "torch._dynamo" in sys.modules else "no"))
    preload = os.environ.get("LD_PRELOAD") or "none (glibc malloc)"
    print(f"precision {run.precision}, {args.threads} threads, torch {torch.__version__}, LD_PRELOAD {preload}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
