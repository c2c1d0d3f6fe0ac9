"""Where a finished run's memory and time went, read from its metrics.json: the peak resident memory of every
phase (data load, train, eval, end of task, checkpoint; cilearn's PhaseMeter) and the share of evaluation + end
of task in the run's timed phases.

    python benchmarks/run_costs.py RUN_DIR [RUN_DIR ...]          # one column per run, side by side
    python benchmarks/run_costs.py RUN_DIR --limit-gb 1.0         # exit 1 when a run's peak is above the limit

A folder of several runs (an experiment) stands for each run in it.  The shares are of the timed phases (train +
eval + end of task + checkpoint): the run without loading the data and building the model.  ``cilearn bench``
divides by the wall time of the whole process instead, so its shares are a little lower for the same run.
Nothing is run here: time a run with ``cilearn run`` (or ``cilearn bench --keep-runs``) first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PHASES = ("data", "train", "eval", "end_task", "checkpoint")
TIMED = ("train", "eval", "end_task", "checkpoint")
MIB = 2 ** 20


def metrics_files(paths: list[str]) -> list[Path]:
    found = []
    for given in map(Path, paths):
        if given.is_file():
            found.append(given)
        elif (given / "metrics.json").is_file():
            found.append(given / "metrics.json")
        else:
            inside = sorted(given.rglob("metrics.json"))
            if not inside:
                raise SystemExit(f"{given}: no metrics.json here or below (is it a finished cilearn run?)")
            found += inside
    return found


def costs(metrics: dict) -> dict:
    """Peak MiB per phase, seconds per timed phase and the shares of the timed total."""
    memory, timing = metrics.get("memory") or {}, metrics.get("timing") or {}
    seconds = {phase: float(timing.get(f"{phase}_seconds", 0.0)) for phase in TIMED}
    total = sum(seconds.values())
    shares = {phase: value / total if total else float("nan") for phase, value in seconds.items()}
    return {"peak_mib": {phase: (memory.get("peak_rss_mib") or {}).get(phase) for phase in PHASES},
            "overall_peak_mib": memory.get("overall_peak_rss_mib"),
            "per_phase_exact": memory.get("per_phase_exact"),
            "seconds": seconds, "timed_seconds": total, "shares": shares,
            "eval_and_end_task_share": shares["eval"] + shares["end_task"] if total else float("nan"),
            "precision": metrics.get("precision"), "complete": metrics.get("complete")}


def table(names: list[str], rows: list[dict]) -> str:
    def mib(value):
        return "-" if value is None else f"{value:.0f}"

    lines = [("", names)]
    for phase in PHASES:
        lines.append((f"peak RSS MiB, {phase}", [mib(r["peak_mib"][phase]) for r in rows]))
    lines.append(("peak RSS MiB, whole run", [mib(r["overall_peak_mib"]) for r in rows]))
    lines.append(("peak RSS GB (10^9 bytes)", ["-" if r["overall_peak_mib"] is None
                                                else f"{r['overall_peak_mib'] * MIB / 1e9:.3f}" for r in rows]))
    for phase in TIMED:
        lines.append((f"{phase} s (share)", [f"{r['seconds'][phase]:.1f} ({100 * r['shares'][phase]:.1f} %)"
                                              for r in rows]))
    lines.append(("timed phases s", [f"{r['timed_seconds']:.1f}" for r in rows]))
    lines.append(("eval + end of task share", [f"{100 * r['eval_and_end_task_share']:.1f} %" for r in rows]))
    width = max(len(label) for label, _ in lines)
    columns = [max(len(row[1][i]) for row in lines) for i in range(len(rows))]
    return "\n".join(f"{label:<{width}}  " + "  ".join(f"{cell:>{w}}" for cell, w in zip(cells, columns))
                     for label, cells in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (or their metrics.json, or an experiment folder)")
    parser.add_argument("--limit-gb", type=float, default=None,
                        help="exit 1 when a run's whole-run peak RSS is above this many GB (10^9 bytes)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    files = metrics_files(args.runs)
    rows = [costs(json.loads(path.read_text())) for path in files]
    names = [str(path.parent) for path in files]
    if args.json:
        print(json.dumps(dict(zip(names, rows)), indent=2))
    else:
        print(table(names, rows))
        incomplete = [name for name, row in zip(names, rows) if not row["complete"]]
        if incomplete:
            print(f"not complete (figures so far): {', '.join(incomplete)}")
    if args.limit_gb is not None:
        over = [name for name, row in zip(names, rows)
                if row["overall_peak_mib"] is not None and row["overall_peak_mib"] * MIB > args.limit_gb * 1e9]
        for name in over:
            print(f"{name}: peak RSS above {args.limit_gb} GB", file=sys.stderr)
        return 1 if over else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
