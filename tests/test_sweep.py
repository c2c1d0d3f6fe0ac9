"""``cilearn sweep``: expansion and validation of sweep files, the local pool and Ray, kill and resume.

The runs are real ``cilearn run`` processes (digits, a 16-unit MLP, one thread each).  The 2×2×2 sweep
(two loss pairs as a zipped axis × two learning rates × two seeds) is expanded and checked; its 2×2 part at
one learning rate (4 runs: each run is a process that imports torch, so the suite keeps them few) runs once
uninterrupted, as Ray tasks on a single-node Ray this test starts (on the local pool when Ray is not
installed), and once on the local pool, SIGKILLed midway and resumed; both must end with the same table.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cilearn.cli import main
from cilearn.errors import ConfigError
from cilearn.rundir import RunDir
from cilearn.sweep.commands import check_existing_runs
from cilearn.sweep.execute import error_line, run_state
from cilearn.sweep.spec import expand, load_sweep

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "data": {"name": "digits"},
    "scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": 4},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "method": {"name": "lwf"},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "scheduler": "constant", "eval_every": 0},
    "output": {"max_feature_samples": 20},
}
GRID = {  # 2 × 2 × 2
    "losses": {"BCE-BCE": {"method.classification_loss": "bce", "method.distillation_loss": "bce"},
               "CE-MSE": {"method.classification_loss": "ce", "method.distillation_loss": "mse"}},
    "train.lr": [0.05, 0.1],
    "seed": [0, 1],
}
NAMES = [f"{loss},lr={lr}/seed{seed}" for loss in ("BCE-BCE", "CE-MSE") for lr in (0.05, 0.1) for seed in (0, 1)]
RUN_NAMES = [f"{loss}/seed{seed}" for loss in ("BCE-BCE", "CE-MSE") for seed in (0, 1)]  # what the tests run


def write_sweep(folder: Path, spec: dict, name: str = "study.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def spec_2x2x2() -> dict:
    return {"name": "study", "base": copy.deepcopy(BASE), "grid": copy.deepcopy(GRID)}


def spec_2x2() -> dict:
    """The sweep the tests run: the loss pairs × the seeds, at the base's learning rate."""
    spec = spec_2x2x2()
    del spec["grid"]["train.lr"]
    return spec


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cilearn", "sweep", *args]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --- expansion -------------------------------------------------------------------------------------
def test_grid_expands_into_named_validated_runs():
    sweep = expand(spec_2x2x2(), "study.yaml")
    assert [r.name for r in sweep.runs] == NAMES
    run = sweep.runs[-1]  # CE-MSE, lr 0.1, seed 1
    assert run.point == "CE-MSE,lr=0.1"
    assert run.settings == {"method.classification_loss": "ce", "method.distillation_loss": "mse",
                            "train.lr": 0.1, "seed": 1}
    cfg = run.config
    assert (cfg.method.classification_loss, cfg.method.distillation_loss, cfg.train.lr, cfg.seed) == \
        ("ce", "mse", 0.1, 1)
    assert cfg.method.label == "CE-MSE,lr=0.1"  # the table groups the seeds of a grid point by label
    assert cfg.train.epochs == 3 and cfg.scenario.num_tasks == 4  # the rest comes from the base
    stored = yaml.safe_load(yaml.safe_dump(sweep.resolved(), sort_keys=False))  # sweep.yaml, read by --resume
    assert stored.pop("runs") == [{"name": r.name, "point": r.point, "settings": r.settings} for r in sweep.runs]
    again = expand(stored, "sweep.yaml")
    assert [r.name for r in again.runs] == NAMES and [r.raw for r in again.runs] == [r.raw for r in sweep.runs]


def test_base_lists_become_axes_and_whole_sections_apply_before_their_options(tmp_path):
    base = {**copy.deepcopy(BASE), "methods": [{"name": "icarl", "memory_size": 40}, "finetune"],
            "seeds": [3, 4]}
    del base["method"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(yaml.safe_dump(base))
    path = write_sweep(tmp_path, {"base": "configs/base.yaml",  # relative to the sweep file
                                  "grid": {"method.classification_loss": ["bce", "ce"],
                                           "scenario.class_order": ["sorted", list(range(9, -1, -1))]}})
    sweep = load_sweep(path)
    assert sweep.name == "study"  # the file name
    assert len(sweep.runs) == 2 * 2 * 2 * 2
    first = sweep.runs[0]
    assert first.name == "icarl,classification_loss=bce/class_order=sorted,seed3"
    assert first.raw["method"] == {"name": "icarl", "memory_size": 40, "classification_loss": "bce",
                                   "label": "icarl,classification_loss=bce"}
    assert (first.config.method.memory_size, first.config.seed) == (40, 3)
    reversed_order = [r for r in sweep.runs if r.config.scenario.class_order != "sorted"]
    assert reversed_order[0].name == "icarl,classification_loss=bce/class_order=9+8+7+6+5+4+3+2+1+0,seed3"
    assert {r.point for r in sweep.runs} == {"icarl,classification_loss=bce", "icarl,classification_loss=ce",
                                             "finetune,classification_loss=bce", "finetune,classification_loss=ce"}


def test_the_example_sweeps_expand_into_the_icarl_study():
    digits = load_sweep(ROOT / "configs" / "sweeps" / "icarl_study_digits.yaml")
    cifar = load_sweep(ROOT / "configs" / "sweeps" / "icarl_study_cifar100.yaml")
    assert (len(digits.runs), len(cifar.runs)) == (9 * 2, 10 * 3)
    points = list(dict.fromkeys(r.point for r in cifar.runs))
    assert points == ["finetune", "joint", "lwf_mc", "icarl", "icarl_random_exemplars", "icarl_no_augmentation",
                      "CE-MSE", "BCE-MSE", "MSE-MSE", "CE-BCE"]
    by_name = {r.name: r.config for r in cifar.runs}
    raws = {r.name: r.raw for r in cifar.runs}
    assert by_name["icarl/seed2"].method.classifiers == ["nme", "head", "knn", "svm", "mlp"]
    assert by_name["icarl_no_augmentation/seed0"].train.augment == "none"
    assert by_name["CE-MSE/seed1"].method.classification_loss == "ce" and by_name["CE-MSE/seed1"].seed == 1
    assert raws["lwf_mc/seed0"]["method"] == {"name": "lwf", "variant": "icarl", "label": "lwf_mc"}
    assert raws["icarl/seed0"]["method"]["memory_size"] == 2000  # the rest of the base's section is kept
    assert {c.train.epochs for c in by_name.values()} == {70}  # the study's schedule, from the base config


def test_long_values_get_short_stable_names():
    order = list(range(99, -1, -1))
    spec = {"base": {**copy.deepcopy(BASE), "data": {"name": "digits"}},
            "grid": {"scenario.class_order": [order, list(range(100))]}, "name": "orders"}
    names = [r.name for r in expand(copy.deepcopy(spec), "x").runs]
    assert names == [r.name for r in expand(copy.deepcopy(spec), "x").runs]
    assert all(len(n.split("/")[1]) <= 60 for n in names) and len(set(names)) == 2


@pytest.mark.parametrize("change, message", [
    ({"grdi": {}}, "unknown key 'grdi'. Did you mean 'grid'?"),
    ({"grid": {"train.lr": 0.1}}, "grid: train.lr: expected a non-empty list of values"),
    ({"grid": {"trian.lr": [0.1]}}, "'trian' is no config section. Did you mean 'train'?"),
    ({"grid": {"losses": [["bce", "bce"]]}}, "A zipped axis maps entry names to settings"),
    ({"grid": {"method.distillation_loss": ["bce", "bcee"]}},
     "grid point 'distillation_loss=bcee/seed0' (method.distillation_loss=\"bcee\"): method.distillation_loss"),
    ({"grid": {"method": [{"name": "icarl", "memory_size": 0}]}}, "grid point 'icarl/seed0'"),
    ({"base": "missing.yaml"}, "base: config file"),
    ({"average_over": ["sead"]}, "average_over: 'sead' is not a grid axis"),
    ({"set": {"train.lr": 0.2}, "grid": {"train.lr": [0.1, 0.2]}}, "'train.lr' is set both by set"),
    ({"grid": {"train.lr": [0.1, 0.1]}}, "a value is listed twice"),
    ({"grid": {"seeds": [[0, 1]]}}, "vary 'seed' in the grid instead"),
    ({"grid": {"method": [{"name": "icarl"}, {"name": "icarl", "memory_size": 10}]}}, "would share the run folder"),
    ({"grid": {}}, "grid: nothing to vary"),
    ({"grid": None}, "grid: nothing to vary"),
    ({}, "grid: nothing to vary"),
])
def test_bad_sweep_file_is_one_error_line_and_writes_nothing(tmp_path, capsys, change, message):
    spec = {"base": copy.deepcopy(BASE), **change}
    out = tmp_path / "out"
    assert main(["sweep", str(write_sweep(tmp_path, spec)), "--out", str(out)]) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers: expected at least 1"),
    (["--address", "10.0.0.1:6379"], "--address is for --backend ray"),
    (["--gpus-per-run", "1"], "--gpus-per-run is for --backend ray"),
    (["--backend", "ray", "--workers", "2"], "--workers is for the local pool"),
    (["--cpus-per-run", "0"], "--cpus-per-run: expected a positive number"),
])
def test_bad_options_are_one_error_line(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["sweep", str(write_sweep(tmp_path, spec_2x2x2())), "--out", str(out), *args]) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_existing_folders_are_never_overwritten(tmp_path, capsys):
    path = write_sweep(tmp_path, spec_2x2x2())
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["sweep", str(path), "--out", str(tmp_path / "taken")]) == 2
    assert "already exists and is not empty" in one_error_line(capsys)
    assert main(["sweep", "--resume", str(tmp_path / "taken")]) == 2
    assert "is not a sweep folder (no sweep.yaml)" in one_error_line(capsys)
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_dry_run_lists_the_runs_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(write_sweep(tmp_path, spec_2x2x2())), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == NAMES and "8 runs" in lines[-1]
    assert not out.exists()


def test_error_line_of_a_failed_run():
    output = "[sweep] 2026-01-01 00:00:00: cilearn run x\ntraining...\nerror: MNIST file not found: x\n"
    assert error_line(output, 2) == "error: MNIST file not found: x"
    assert error_line("Traceback (most recent call last):\n  File x\nRuntimeError: boom\n", 1) == \
        "exit code 1: RuntimeError: boom"
    assert error_line("[lwf] task 1/5\n", -9) == "killed by SIGKILL"


# --- running ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The 2×2 sweep, uninterrupted: as Ray tasks on a single-node Ray started here, or on the local
    pool when Ray is not installed."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    path, out = write_sweep(folder, spec_2x2()), folder / "out"
    try:
        import ray
    except ImportError:
        ray = None
    if ray is None:
        args = ["--workers", "2"]
    else:
        with pytest.MonkeyPatch.context() as patch:  # Ray's workers inherit this environment
            patch.setenv("PYTHONPATH", str(ROOT))
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        args = ["--backend", "ray", "--address", ray.get_runtime_context().gcs_address]
    try:
        done = subprocess.run(sweep_command(str(path), "--out", str(out), "--cpus-per-run", "1", "--no-report", *args),
                              env=env(), capture_output=True, text=True, timeout=600)
    finally:
        if ray is not None:
            ray.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    return {"out": out, "stdout": done.stdout, "path": path, "ray": ray is not None}


def test_sweep_runs_as_ray_tasks(uninterrupted):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'cilearn[ray]'")
    out, stdout = uninterrupted["out"], uninterrupted["stdout"]
    assert "Ray: 1 node, 2 CPUs, 0 GPUs; each run asks for 1 CPU" in stdout, stdout
    for name in RUN_NAMES:
        assert f"done    {name}: " in stdout
        assert run_state(out / name) == "complete"
    assert "4 runs in" in stdout and "Accuracy (%)" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["aggregate"]) == ["BCE-BCE", "CE-MSE"]
    for point, agg in summary["aggregate"].items():  # mean ± std over the two seeds of each grid point
        last = [json.loads((out / f"{point}/seed{s}/metrics.json").read_text())["last_accuracy"] for s in (0, 1)]
        assert agg["last_accuracy"]["values"] == last
        assert agg["last_accuracy"]["mean"] == pytest.approx(sum(last) / 2)


def _tasks_done(run_dir: Path) -> int:
    """Tasks a resume skips: those with a checkpoint (written atomically after the task's metrics; a run killed
    between the two has one task more here than metrics.json's tasks_done, and resumes after it)."""
    finished = RunDir(run_dir).task_checkpoints()  # last task first
    return int(finished[0].stem[5:]) + 1 if finished else 0


def _unlocked(run_dir: Path) -> bool:
    """No process holds the run's lock (a run left running after its sweep died would)."""
    lock = run_dir / ".lock"
    if not lock.exists():
        return True
    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def _files(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def test_sweep_killed_midway_resumes_without_redoing_runs_and_ends_with_the_same_table(uninterrupted, tmp_path):
    path, out = write_sweep(tmp_path, spec_2x2()), tmp_path / "out"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(sweep_command(str(path), "--out", str(out), "--workers", "2", "--cpus-per-run", "1",
                                              "--no-report"), env=env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while True:  # kill when two runs are finished and another one is between two tasks
            complete = [n for n in RUN_NAMES if run_state(out / n) == "complete"]
            midway = [n for n in RUN_NAMES if n not in complete and _tasks_done(out / n) >= 1]
            if len(complete) >= 2 and midway:
                proc.send_signal(signal.SIGKILL)
                break
            assert proc.poll() is None, "the sweep ended before it could be killed midway:\n" + \
                (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while not all(_unlocked(out / n) for n in RUN_NAMES):  # the runs die with the sweep
        assert time.monotonic() < deadline, "a run kept running after its sweep was killed"
        time.sleep(0.1)
    finished = [n for n in RUN_NAMES if run_state(out / n) == "complete"]
    interrupted = {n: _tasks_done(out / n) for n in RUN_NAMES if run_state(out / n) == "started"}
    assert len(finished) >= 2 and max(interrupted.values()) >= 1  # at least one killed between two tasks
    before = {n: _files(out / n) for n in finished}

    done = subprocess.run(sweep_command("--resume", str(out), "--workers", "2", "--cpus-per-run", "1"),
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in finished:
        assert f"skipped {name}: already finished" in done.stdout
        assert _files(out / name) == before[name], f"{name} was redone"
    for name, tasks in interrupted.items():
        line = next(line for line in done.stdout.splitlines() if f"done    {name}: " in line)
        assert line.endswith(", resumed"), line
        log = (out / "logs" / f"{name}.log").read_text()
        assert log.count("[sweep] ") == 2, log
        assert (f"at the start of task {tasks + 1}/4" if tasks else "starting the run from the beginning") in log, log
    assert all(run_state(out / n) == "complete" for n in RUN_NAMES)
    reference = uninterrupted["out"]
    assert json.loads((out / "summary.json").read_text()) == json.loads((reference / "summary.json").read_text())
    assert (out / "summary.md").read_text() == (reference / "summary.md").read_text()
    assert (out / "report" / "report.html").is_file()
    assert not list(out.rglob("*.tmp"))


def test_resumed_sweep_file_may_grow_but_not_change_finished_runs(uninterrupted, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(uninterrupted["out"], out)
    grown = spec_2x2()
    grown["grid"]["seed"] = [0, 1, 2]
    assert main(["sweep", str(write_sweep(tmp_path, grown)), "--resume", str(out), "--dry-run"]) == 0
    states = dict(line.split()[1::-1] for line in capsys.readouterr().out.splitlines()[:-1])
    assert len(states) == 6
    assert {n for n, s in states.items() if s == "complete"} == set(RUN_NAMES)
    assert all(s == "new" for n, s in states.items() if "seed2" in n)
    changed = spec_2x2()
    changed["base"]["train"]["epochs"] = 4
    sweep = load_sweep(write_sweep(tmp_path, changed, "changed.yaml"))
    with pytest.raises(ConfigError, match="was made with train.epochs: 3, the sweep now gives 4"):
        check_existing_runs(sweep, out)


def test_a_failing_grid_point_is_listed_and_the_others_finish(tmp_path):
    empty = tmp_path / "no_data"
    empty.mkdir()
    spec = {"base": copy.deepcopy(BASE), "set": {"data.root": str(empty), "scenario.num_tasks": 2},
            "grid": {"data.name": ["mnist", "digits"]}}
    out = tmp_path / "out"
    done = subprocess.run(sweep_command(str(write_sweep(tmp_path, spec)), "--out", str(out), "--workers", "2",
                                        "--no-report"),
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # the cores shared by the two workers
    assert f"local pool: 2 runs at a time, OMP_NUM_THREADS={threads} each" in done.stdout
    assert "failed  name=mnist/seed0: failed after" in done.stdout
    assert "2 runs in" in done.stdout and "(0 already finished), 1 failed" in done.stdout
    assert "warning: run name=mnist/seed0 failed: error: MNIST file not found" in done.stderr
    assert f"(log: {out.absolute() / 'logs' / 'name=mnist' / 'seed0'}.log)" in done.stderr
    assert run_state(out / "name=digits" / "seed0") == "complete"
    summary = (out / "summary.md").read_text()
    assert "| name=digits | head | 1 |" in summary and "mnist" not in summary
