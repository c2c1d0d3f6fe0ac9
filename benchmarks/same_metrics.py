"""Run a fixed set of configs and compare their metrics.json with an earlier snapshot, field by field.

A refactoring must not change what a user sees.  ``snapshot`` runs the quickstart, every
``configs/methods_mnist/`` config (seed 0) and a short CIFAR-10 (JPEG) iCaRL run (the bench protocol, 1 epoch,
3 tasks) into a folder; ``compare`` lists every metrics.json value that differs between two such folders,
leaving out what depends on the machine's load (``timing``, ``task_timing``, ``memory``).

    CILEARN_DATA=../shared/data python benchmarks/same_metrics.py snapshot /tmp/before
    ... change the code ...
    CILEARN_DATA=../shared/data python benchmarks/same_metrics.py snapshot /tmp/after
    python benchmarks/same_metrics.py compare /tmp/before /tmp/after     # exit 1 when anything differs

``--only NAME`` (repeatable) runs a subset (the names are the folders ``snapshot`` writes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MACHINE_DEPENDENT = {"timing", "task_timing", "memory"}


def runs() -> dict[str, list[str]]:
    """Snapshot name → the ``cilearn run`` arguments."""
    found = {"quickstart": ["configs/quickstart.yaml"]}
    for path in sorted((ROOT / "configs" / "methods_mnist").glob("*.yaml")):
        found[f"mnist_{path.stem}"] = [str(path.relative_to(ROOT)), "--set", "seed=0"]
    found["cifar10jpeg_icarl"] = ["configs/bench_protocol.yaml", "--set", "train.epochs=1",
                                  "--set", "scenario.num_tasks=3"]
    return found


def snapshot(out: Path, only: list[str]) -> None:
    for name, args in runs().items():
        if only and name not in only:
            continue
        target = out / name
        if target.exists():
            print(f"{name}: already there, kept", flush=True)
            continue
        command = [sys.executable, "-m", "cilearn", "run", *args, "--out", str(target), "--set", "train.progress=false"]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def differences(before, after, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            if key in MACHINE_DEPENDENT:
                continue
            if key not in before or key not in after:
                found.append(f"{where}{key}: only in {'after' if key in after else 'before'}")
                continue
            found += differences(before[key], after[key], f"{where}{key}.")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{where}{i}.")]
    return [] if before == after else [f"{where.rstrip('.')}: {before!r} → {after!r}"]


def compare(before: Path, after: Path) -> int:
    changed = 0
    for path in sorted(before.rglob("metrics.json")):
        relative = path.relative_to(before)
        other = after / relative
        if not other.is_file():
            print(f"{relative}: missing after")
            changed += 1
            continue
        found = differences(json.loads(path.read_text()), json.loads(other.read_text()))
        print(f"{relative}: {'identical' if not found else f'{len(found)} values differ'}")
        for line in found[:20]:
            print(f"    {line}")
        changed += bool(found)
    return 1 if changed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot")
    snap.add_argument("out", type=Path)
    snap.add_argument("--only", action="append", default=[])
    comp = sub.add_parser("compare")
    comp.add_argument("before", type=Path)
    comp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "snapshot":
        snapshot(args.out.resolve(), args.only)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
