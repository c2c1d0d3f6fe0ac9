"""Where a protocol's seed-to-seed spread comes from: per classifier, the accuracy on the classes seen after each
task (mean ± std over the runs given) and the average incremental accuracy, plus, for two groups of runs, the
variance ratio of their average incremental accuracies against the F distribution (is one group's spread really
larger, or could it be the luck of a few seeds?).

    python benchmarks/seed_spread.py 'RUNS/protocol/seed*'                           # one group
    python benchmarks/seed_spread.py 'fp32=RUNS_A/protocol/seed*' 'bf16=RUNS_B/protocol/seed*'
    python benchmarks/seed_spread.py 'fp32=RUNS_A/protocol/seed*' --values avalanche=51.3,48.8,49.5

(`cilearn bench --protocol --seeds 0 1 2 3 4 --keep-runs RUNS_A` keeps the run folders.)
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from pathlib import Path

from scipy import stats


def read_group(folders: list[str], classifier: str) -> dict:
    """Per run: the seen-classes accuracy after every task and the average incremental accuracy (%)."""
    runs = {}
    for folder in folders:
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
        if not metrics.get("complete"):
            print(f"skipping {folder}: the run is not complete", file=sys.stderr)
            continue
        entry = metrics["classifiers"][classifier]
        runs[metrics["seed"]] = {"seen": [100 * v for v in entry["seen_accuracy"]],
                                 "average": 100 * entry["average_incremental_accuracy"]}
    return runs


def describe(name: str, runs: dict) -> list[float]:
    seeds = sorted(runs)
    steps = len(runs[seeds[0]]["seen"])
    print(f"{name}: seeds {' '.join(map(str, seeds))}")
    for step in range(steps):
        values = [runs[s]["seen"][step] for s in seeds]
        print(f"  after task {step + 1}: " + " ".join(f"{v:5.1f}" for v in values)
              + f"   mean {statistics.mean(values):5.1f} ± {statistics.stdev(values) if len(values) > 1 else 0:4.1f}")
    averages = [runs[s]["average"] for s in seeds]
    print("  avg incr.:    " + " ".join(f"{v:5.1f}" for v in averages)
          + f"   mean {statistics.mean(averages):5.1f} ± {statistics.stdev(averages) if len(averages) > 1 else 0:4.1f}")
    return averages


def variance_ratio(a_name: str, a: list[float], b_name: str, b: list[float]) -> None:
    """Two-sided F test of equal variances (normal samples): the ratio of the sample variances and its p-value."""
    ratio = statistics.variance(a) / statistics.variance(b)
    df_a, df_b = len(a) - 1, len(b) - 1
    tail = stats.f.sf(ratio, df_a, df_b) if ratio > 1 else stats.f.cdf(ratio, df_a, df_b)
    print(f"variance ratio {a_name}/{b_name} = {ratio:.2f} (std ratio {ratio ** 0.5:.2f}), F({df_a}, {df_b}) "
          f"two-sided p = {min(1.0, 2 * tail):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("groups", nargs="*", metavar="[NAME=]GLOB",
                        help="one group of run folders per argument (a quoted glob pattern)")
    parser.add_argument("--classifier", default="nme")
    parser.add_argument("--values", action="append", default=[], metavar="NAME=v1,v2,...",
                        help="a group given by its per-seed average incremental accuracies (%%)")
    args = parser.parse_args()
    groups = []
    for index, token in enumerate(args.groups):
        name, _, pattern = token.rpartition("=")
        folders = sorted(glob.glob(pattern))
        if not folders:
            parser.error(f"{pattern}: no run folder matches")
        groups.append((name or f"group{index + 1}", folders))
    averages = {}
    for name, folders in groups:
        runs = read_group(folders, args.classifier)
        if not runs:
            parser.error(f"{name}: no complete run among {len(folders)} folders")
        averages[name] = describe(name, runs)
    for spec in args.values:
        name, _, values = spec.partition("=")
        averages[name] = [float(v) for v in values.split(",")]
        print(f"{name}: avg incr. {' '.join(values.split(','))}   mean {statistics.mean(averages[name]):.1f} ± "
              f"{statistics.stdev(averages[name]):.1f}")
    names = list(averages)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if len(averages[a]) > 1 and len(averages[b]) > 1:
                variance_ratio(a, averages[a], b, averages[b])
    return 0


if __name__ == "__main__":
    sys.exit(main())
