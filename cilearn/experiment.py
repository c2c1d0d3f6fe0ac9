"""Experiments: one config expanded into runs (methods × seeds), validated together, run one after the
other, resumed as a whole, and summarised in one table."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from .config import Config, apply_overrides, expand_runs, load_runs, load_yaml, parse_config, run_label
from .data.memo import shared_datasets
from .errors import CheckpointError, ConfigError
from .rundir import RunDir, RunLock, check_fresh, write_yaml
from .runner import Run, say


def default_out_dir(name: str) -> Path:
    return Path("runs") / name / datetime.now().strftime("%Y%m%d-%H%M%S")


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
    return RunDir(run_dir).read_metrics()


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
                say(f"'{out}' is already complete ({len(runs)} runs); nothing to resume.")
                return out
            run_children(out, runs, resume=True)
    elif (out / "config.yaml").is_file():
        metrics = read_metrics(out)
        if metrics and metrics.get("complete"):
            say(f"'{out}' is already complete ({metrics.get('tasks_done')}/{metrics.get('num_tasks')} tasks); "
                  f"nothing to resume.")
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
