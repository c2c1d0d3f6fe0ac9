"""Run-directory primitives: the folder lock and reading checkpoints without running code."""

from __future__ import annotations

import ast
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cilearn.engine.checkpoints import UnsafeCheckpoint, load_checkpoint, save_checkpoint
from cilearn.errors import CheckpointError
from cilearn.report import ReportError
from cilearn.report.runs import discover_runs, group_runs
from cilearn.results import RunResult
from cilearn.rundir import RunDir, RunLock

ROOT = Path(__file__).resolve().parents[1]


def test_run_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text() == f"pid {os.getpid()}"
        with pytest.raises(CheckpointError, match=rf"is in use by another cilearn process \(pid {os.getpid()}\)"):
            with RunLock(tmp_path / "run"):
                pass
    with RunLock(tmp_path / "run"):  # released on exit: the next run takes it
        pass
    assert list((tmp_path / "run").iterdir()) == []  # released: the lock file goes with it


def test_run_lock_on_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot use .* as a run directory"):
        with RunLock(tmp_path / "file" / "run"):
            pass


def test_cilearn_imports_without_posix_only_modules():
    """fcntl and resource exist only on POSIX; cilearn (locking through filelock) and every command must import
    without them (Windows)."""
    code = ("import sys; sys.modules['fcntl'] = sys.modules['resource'] = None\n"
            "import cilearn.cli, cilearn.rundir, cilearn.engine.runner\n"
            "cilearn.cli.build_parser()\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("kind, error, message", [
    ("random bytes", CheckpointError,
     "is not a checkpoint (corrupt or wrong file: neither a zip archive nor a pickle)"),
    ("random bytes after a pickle header", CheckpointError, "is not a checkpoint (corrupt or wrong file: Unsupported"),
    ("text", CheckpointError, "is not a checkpoint (corrupt or wrong file"),
    ("plain pickle of plain values", CheckpointError, "a pickle that torch.save did not write"),
    ("empty", CheckpointError, "cannot be read (EOFError); it is truncated or corrupt"),
    ("truncated", CheckpointError, "cannot be read (RuntimeError"),
    ("torch.save of code", UnsafeCheckpoint, "unsupported GLOBAL posix.system"),
    ("plain pickle of code", UnsafeCheckpoint, "(it names posix.system)"),
])
def test_what_is_not_a_checkpoint_and_what_could_run_code(tmp_path, kind, error, message):
    path = tmp_path / "c.pt"
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if kind == "random bytes":
        path.write_bytes(b"\x13" + noise)
    elif kind == "random bytes after a pickle header":
        path.write_bytes(b"\x80\x02\xfe" + noise)
    elif kind == "text":
        path.write_text("data: {name: digits}\n")
    elif kind == "plain pickle of plain values":
        path.write_bytes(pickle.dumps({"task": 1, "model": [1.0, 2.0]}))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        save_checkpoint(path, {"model": torch.zeros(100)})
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "torch.save of code":
        torch.save({"model": _RunsCode()}, path)
    else:
        path.write_bytes(pickle.dumps({"model": _RunsCode()}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert type(info.value) is error and message in str(info.value) and str(path) in str(info.value), info.value
    assert ("could run code" in str(info.value)) == (error is UnsafeCheckpoint)


def test_a_checkpoint_round_trips(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"task": 0, "model": {"w": torch.arange(3.0)}})
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["task"] == 0 and torch.equal(state["model"]["w"], torch.arange(3.0))


# --- RunDir alone knows the layout ---------------------------------------------------------------------
LAYOUT_FILES = {"config.yaml", "run.json", "metrics.json", "log.csv", "accuracy_matrix.csv", "samples.npz",
                "epoch.pt", "experiment.yaml", "summary.json", "summary.md"}
LAYOUT_FOLDERS = {"checkpoints", "predictions", "exemplars"}


def _text_of(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with ``{}`` for each replacement field."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
    return None


def layout_literals(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every string literal in ``source`` that names a part of the run-folder layout as a
    path: a file name or ``task_XX`` file as a path component (``"metrics.json"``, ``"*/metrics.json"``,
    ``f"task_{i:02d}.pt"``), or a layout folder joined onto a path (``run_dir / "checkpoints"``, or inside a
    longer path).  Prose (error messages, help texts, docstrings: anything with a space) is not a path."""
    tree = ast.parse(source)
    joined = {id(node.right) for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)}
    parts_of_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                         for part in node.values}
    found = []
    for node in ast.walk(tree):
        text = _text_of(node)
        if text is None or id(node) in parts_of_fstrings or not text or any(c.isspace() for c in text):
            continue
        parts = text.split("/")
        if (any(part in LAYOUT_FILES or re.fullmatch(r"task_.+\.(pt|npz)", part) for part in parts)
                or any(part in LAYOUT_FOLDERS for part in parts[:-1])
                or (id(node) in joined and text in LAYOUT_FOLDERS)):
            found.append((node.lineno, text))
    return found


def test_the_layout_detector_finds_paths_and_leaves_prose():
    source = '''
path = run_dir / "metrics.json"
found = any((run_dir / name).is_file() for name in ("config.yaml", "experiment.yaml"))
checkpoint = run_dir / "checkpoints" / f"task_{task:02d}.pt"
children = path.glob("*/checkpoints/task_*.pt")
logs = run_dir / "predictions/task_00.npz"
message = f"'{path}' holds no readable metrics.json; give a run folder ({x})"
hint = "give a checkpoint, e.g. RUN/checkpoints/task_00.pt."
options = {"save_checkpoints": True, "exemplars": 1}
method_hooks = ("exemplars", "predictions")
'''
    assert sorted(layout_literals(source)) == [
        (2, "metrics.json"), (3, "config.yaml"), (3, "experiment.yaml"), (4, "checkpoints"), (4, "task_{}.pt"),
        (5, "*/checkpoints/task_*.pt"), (6, "predictions/task_00.npz")]


def test_only_rundir_knows_the_run_folder_layout():
    """Every other module asks RunDir where a run's files lie, so that the layout has one owner."""
    package = ROOT / "cilearn"
    hits = [f"{path.relative_to(ROOT)}:{line}: {text!r}" for path in sorted(package.rglob("*.py"))
            if path != package / "rundir.py"
            for line, text in layout_literals(path.read_text(encoding="utf-8"))]
    assert not hits, "run-folder layout outside cilearn/rundir.py (use RunDir):\n" + "\n".join(hits)


# --- one class for a finished run: the API, the report and the sweep ----------------------------------
def write_run(folder: Path, label: str = "icarl", seed: int = 2, tasks: int = 3, **metrics) -> RunDir:
    """A run folder as cilearn writes it after ``tasks`` tasks (metrics, config, log, task checkpoints)."""
    files = RunDir(folder)
    files.write_config({"data": {"name": "digits"}, "method": {"name": "icarl"}, "seed": seed})
    files.write_metrics({"label": label, "method": "icarl", "seed": seed, "dataset": "digits", "classifier": "nme",
                         "num_tasks": 5, "tasks_done": tasks, "seen_accuracy": [0.9, 0.8, 0.7][:tasks],
                         "classes_per_step": [2, 4, 6][:tasks], "last_accuracy": 0.7, **metrics})
    files.write_log(["task", "epoch", "loss", "test_acc"], [[0, 0, 1.5, 0.5], [0, 1, 1.25, ""]])
    for task in range(tasks):
        files.task_checkpoint(task).parent.mkdir(exist_ok=True)
        files.task_checkpoint(task).write_bytes(b"")
    return files


def test_run_result_reads_what_a_run_folder_holds(tmp_path):
    files = write_run(tmp_path / "run")
    run = RunResult.load(tmp_path / "run")
    assert run.path == files.path and run.files.metrics == files.metrics
    assert (run.label, run.seed, run.display_name) == ("icarl", 2, "icarl (seed 2)")
    assert (run.tasks_done, run.classes_per_step, run.headline_classifier) == (3, [2, 4, 6], "nme")
    assert run.has_checkpoints() and not run.has_predictions()  # saved without output.save_features
    log = run.log()
    assert list(log) == ["task", "epoch", "loss", "test_acc"]
    np.testing.assert_array_equal(log["loss"], [1.5, 1.25])
    np.testing.assert_array_equal(log["test_acc"], [0.5, np.nan])  # not evaluated that epoch
    files.task_checkpoint(1).unlink()
    assert not run.has_checkpoints()


def test_old_runs_labelled_with_their_seed_group_as_one_method(tmp_path):
    """Runs made before cilearn's reports wrote ``<label>/seed<k>`` as their label: the report, the API and
    the sweep all read the method's label."""
    for seed in (1, 0):
        write_run(tmp_path / "exp" / "finetune" / f"seed{seed}", label=f"finetune/seed{seed}", seed=seed)
    runs = discover_runs([tmp_path / "exp"])
    assert all(type(run) is RunResult for run in runs)
    groups = group_runs(runs)
    assert list(groups) == ["finetune"] and [run.seed for run in groups["finetune"]] == [0, 1]
    assert RunResult.load(tmp_path / "exp" / "finetune" / "seed1").label == "finetune"


def test_the_report_says_which_metrics_file_it_cannot_use(tmp_path):
    files = write_run(tmp_path / "run")
    files.metrics.write_text("[1, 2]")
    with pytest.raises(ReportError, match=re.escape(f"'{files.metrics}' is not a cilearn metrics file.")):
        discover_runs([files.path])
    files.metrics.write_text("{not json")
    with pytest.raises(ReportError, match=re.escape(f"'{files.metrics}' cannot be read (") + ".*is the run "
                       "directory intact"):
        discover_runs([files.path])
    with pytest.raises(CheckpointError, match="holds no readable metrics.json"):
        RunResult.load(files.path)


def test_run_dir_finds_runs_below_it(tmp_path):
    write_run(tmp_path / "exp" / "b", tasks=2)
    write_run(tmp_path / "exp" / "a" / "seed1", tasks=1)
    write_run(tmp_path / "exp" / "a" / "seed0", tasks=1)
    RunDir(tmp_path / "exp" / "c").write_config({})  # started, no task finished: not a run yet
    exp = RunDir(tmp_path / "exp")
    assert [run.path.relative_to(exp.path).as_posix() for run in exp.runs_below()] == ["b", "a/seed0", "a/seed1"]
    assert exp.runs_with_checkpoints() == ["b"]  # once, however many tasks it saved
    assert RunDir.of_checkpoint(RunDir(exp / "b").task_checkpoint(1)).path == (exp / "b").resolve()
    assert not exp.is_resumable() and RunDir(exp / "c").is_resumable()
    exp.experiment.write_text("methods: []\n")
    assert exp.is_resumable() and exp.is_experiment()
