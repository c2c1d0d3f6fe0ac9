"""Kill and resume: a run killed with SIGKILL at any point and continued with ``cilearn run --resume``
ends with exactly the results of an uninterrupted run (CPU, one thread, the same config).

Every run here is a real ``python -m cilearn run`` process.  Kill points are of two kinds:
- random delays after training (re)started (each failure message prints the seed of the random draws,
  set ``CILEARN_TEST_SEED`` to replay it);
- exact points through ``killer.py``, a wrapper that SIGKILLs its own process during the n-th write of
  a file whose name matches a regular expression (after half the bytes reached the temporary file, before the rename), or right before a
  file is deleted, or pauses there so that a second process can try the same run directory.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import digits_config

from cilearn.cli import main
from cilearn.methods import METHODS, register

ROOT = Path(__file__).resolve().parents[1]
TASKS, EPOCHS = 5, 6
SEED = int(os.environ.get("CILEARN_TEST_SEED", random.SystemRandom().randrange(10**6)))
STARTED = ("resuming from", "starting the run from the beginning")

KILLER = r'''
import os, pathlib, re, signal, stat, sys, time
action, pattern, nth = os.environ["KILL_AT"].split(":")
nth, hits = int(nth), 0

def reached(name):
    global hits
    if re.search(pattern, os.path.basename(name)):
        hits += 1
        return hits == nth
    return False

def stop():
    if action == "pause":
        pathlib.Path(os.environ["KILL_MARKER"]).write_text(str(os.getpid()))
        time.sleep(300)
    os.kill(os.getpid(), signal.SIGKILL)

real_fsync = os.fsync
def fsync(fd):
    if action in ("write", "pause") and stat.S_ISREG(os.fstat(fd).st_mode):
        if reached(os.readlink(f"/proc/self/fd/{fd}")):
            if action == "write":
                os.ftruncate(fd, os.fstat(fd).st_size // 2)  # die with half a file written
            stop()
    return real_fsync(fd)
os.fsync = fsync

real_unlink = pathlib.Path.unlink
def unlink(self, missing_ok=False):
    if action == "unlink" and reached(str(self)):
        stop()
    return real_unlink(self, missing_ok=missing_ok)
pathlib.Path.unlink = unlink

from cilearn.cli import main
sys.exit(main(sys.argv[1:]))
'''

METHOD_SECTIONS = {
    "joint": {"name": "joint"},
    "lwf": {"name": "lwf"},
    "icarl": {"name": "icarl", "memory_size": 100},
}


def config(method: dict) -> dict:
    return digits_config(model={"options": {"hidden": [64]}}, method=method,
                         train={"epochs": EPOCHS, "batch_size": 16, "scheduler": "multistep", "milestones": [4],
                                "num_threads": 1, "checkpoint_every": 1},
                         output={"max_feature_samples": 50}, seed=3)


def write_config(folder: Path, method: dict) -> Path:
    path = folder / f"{method['name']}.yaml"
    path.write_text(yaml.safe_dump(config(method)))
    return path


def env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def cilearn(*args: str, kill_at: str | None = None, marker: Path | None = None,
            tmp: Path | None = None) -> subprocess.Popen:
    extra = {}
    if kill_at:
        killer = tmp / "killer.py"
        killer.write_text(KILLER)
        command = [sys.executable, str(killer), *args]
        extra = {"KILL_AT": kill_at, "KILL_MARKER": str(marker or tmp / "paused")}
    else:
        command = [sys.executable, "-m", "cilearn", *args]
    return subprocess.Popen(command, cwd=tmp or ROOT, env={**env(), **extra}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def kill_after_start(proc: subprocess.Popen, delay: float) -> tuple[int, str]:
    """Wait until the run (re)starts training, then SIGKILL it after ``delay`` seconds."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if any(s in line for s in STARTED):
            break
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, "".join(lines) + out + err


def results(run: Path) -> dict:
    """Everything a run produced that must not depend on interruptions (timings excluded)."""
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("timing", "task_timing", "memory"):  # measurements of this process, not results
        metrics.pop(key, None)
    with open(run / "log.csv") as handle:
        log = [row[:-1] for row in csv.reader(handle)]  # the last column is seconds
    predictions = {}
    for path in sorted((run / "predictions").glob("*.npz")):
        with np.load(path) as arrays:
            predictions[path.name] = {k: arrays[k].tolist() for k in arrays.files}
    return {"metrics": json.dumps(metrics, sort_keys=True), "log": log, "predictions": predictions,
            "matrix": (run / "accuracy_matrix.csv").read_text(), "config": (run / "config.yaml").read_text()}


def assert_same_results(run: Path, reference: Path, note: str) -> None:
    got, want = results(run), results(reference)
    assert [tuple(r[:2]) for r in got["log"][1:]] == [(str(t), str(e)) for t in range(TASKS)
                                                      for e in range(1, EPOCHS + 1)], f"log.csv epochs {note}"
    assert got["log"] == want["log"], f"log.csv differs {note}"
    assert json.loads(got["metrics"])["complete"], note
    assert got["metrics"] == want["metrics"], f"metrics.json differs {note}"
    assert got["matrix"] == want["matrix"], note
    assert got["predictions"] == want["predictions"], f"predictions differ {note}"
    assert got["config"] == want["config"], note
    assert not [p for p in run.rglob("*.tmp")], f"temporary files left behind {note}"


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict:
    """Uninterrupted runs, made lazily in this process (the resumed runs are separate processes, so the
    comparison also shows that results do not depend on the process)."""
    folder = tmp_path_factory.mktemp("reference")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            out = folder / name
            assert main(["run", str(write_config(folder, METHOD_SECTIONS[name])), "--out", str(out)]) == 0
            cache[name] = out
        return cache[name]
    return get


def copy_run(reference: Path, out: Path, keep_tasks: int) -> None:
    """A copy of a finished run as if it had been killed after ``keep_tasks`` tasks."""
    shutil.copytree(reference, out)
    for path in (out / "checkpoints").glob("task_*.pt"):
        if int(path.stem[5:]) >= keep_tasks:
            path.unlink()
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))


@pytest.mark.parametrize("name", list(METHOD_SECTIONS))
def test_killed_anywhere_and_resumed_gives_the_same_results(name, references, tmp_path, capsys):
    if name not in METHODS:
        pytest.skip(f"method {name} is not registered yet")
    rng = random.Random(f"{SEED}-{name}")
    reference = references(name)
    train_seconds = json.loads((reference / "metrics.json").read_text())["timing"]["train_seconds"]
    cfg, out = write_config(tmp_path, METHOD_SECTIONS[name]), tmp_path / "run"
    kills, history = 0, []
    stale = False
    if name == "joint":  # the whole sequence once; each process costs seconds
        # 1. Killed during the first write of epoch.pt: config.yaml and log.csv exist, no checkpoint yet.
        code, _, err = finish(cilearn("run", str(cfg), "--out", str(out), kill_at=r"write:^\.epoch\.pt\.:1",
                                      tmp=tmp_path))
        assert code == -signal.SIGKILL, err
        assert not (out / "checkpoints" / "epoch.pt").exists() and list((out / "checkpoints").glob(".epoch.pt.*"))
        kills += 1
        # 2. Resumed (restarts from the beginning), killed after a random delay inside training.
        delay = rng.uniform(0.05, 0.7) * train_seconds
        code, text = kill_after_start(cilearn("run", "--resume", str(out)), delay)
        assert "starting the run from the beginning" in text, text
        history.append(f"random kill after {delay:.2f}s: {code}")
        kills += code == -signal.SIGKILL
        # 3. Resumed, killed during the next write of a task checkpoint.
        code, _, err = finish(cilearn("run", "--resume", str(out), kill_at=r"write:^\.task_\d+\.pt\.:1",
                                      tmp=tmp_path))
        history.append(f"kill during a task checkpoint write: {code}")
        kills += code == -signal.SIGKILL
        # 4. Resumed, killed right after a task checkpoint, before the stale epoch.pt is deleted.
        code, _, err = finish(cilearn("run", "--resume", str(out), kill_at=r"unlink:^epoch\.pt$:1", tmp=tmp_path))
        history.append(f"kill before deleting epoch.pt: {code}")
        kills += code == -signal.SIGKILL
        stale = code == -signal.SIGKILL and (out / "checkpoints" / "epoch.pt").exists()
    else:
        # 1. Killed while writing task_01.pt: resumes inside task 2 from epoch.pt, whose method state
        #    (memory, teacher) comes from task 1.
        code, _, err = finish(cilearn("run", str(cfg), "--out", str(out), kill_at=r"write:^\.task_01\.pt\.:1",
                                      tmp=tmp_path))
        assert code == -signal.SIGKILL, err
        kills += 1
        # 2. Resumed, killed after a random delay.
        delay = rng.uniform(0.05, 0.6) * train_seconds
        code, text = kill_after_start(cilearn("run", "--resume", str(out)), delay)
        assert "resuming from" in text and "checkpoints/epoch.pt' at task 2/5, epoch 6" in text, text
        history.append(f"random kill after {delay:.2f}s: {code}")
        kills += code == -signal.SIGKILL
    # 5. Resumed to the end (in this process) ...
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    if stale:  # ... at the task checkpoint just written, not at the stale epoch.pt beside it
        text = capsys.readouterr().out
        assert "checkpoints/task_" in text and "at the start of task" in text, text
    note = f"({name}, CILEARN_TEST_SEED={SEED}, {history})"
    assert kills >= (3 if name == "joint" else 1), note
    assert_same_results(out, reference, note)

    # 6. Resuming a complete run reports it and changes nothing.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_run_directory_in_use_is_refused_and_never_overwritten(references, tmp_path, capsys):
    """A second process on a run directory in use is refused with a clear message."""
    reference = references("joint")
    cfg, out, marker = write_config(tmp_path, METHOD_SECTIONS["joint"]), tmp_path / "run", tmp_path / "paused"
    proc = cilearn("run", str(cfg), "--out", str(out), kill_at=r"pause:^\.task_01\.pt\.:1", marker=marker, tmp=tmp_path)
    try:
        deadline = time.time() + 90
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        pid = marker.read_text()
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        capsys.readouterr()
        assert main(["run", "--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "in use by another cilearn process" in err and f"pid {pid}" in err, err
        assert main(["run", str(cfg), "--out", str(out)]) == 2
        assert "already exists and is not empty; it is never overwritten" in capsys.readouterr().err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        proc.kill()
        proc.communicate()
    assert main(["run", "--resume", str(out)]) == 0  # the lock died with its process
    assert_same_results(out, reference, "(after the lock test)")


def test_corrupt_checkpoints_fall_back_to_the_previous_one(references, tmp_path, capsys):
    reference = references("joint")
    out = tmp_path / "run"
    copy_run(reference, out, keep_tasks=3)  # task_00..02.pt, as if killed in task 4 ...
    folder = out / "checkpoints"
    data = (folder / "task_02.pt").read_bytes()
    (folder / "epoch.pt").write_bytes(data[: len(data) // 2])  # ... with epoch.pt and task_02.pt truncated,
    (folder / "task_02.pt").write_bytes(data[: len(data) // 3])  # e.g. by a full disk or a bad copy
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, captured.err
    assert all("task_01.pt' instead" in w and "truncated or corrupt" in w for w in warnings), warnings
    assert str(folder / "epoch.pt") in warnings[0] and str(folder / "task_02.pt") in warnings[1], warnings
    assert_same_results(out, reference, "(after falling back to task_01.pt)")


def test_divergence_stops_with_one_line_and_keeps_finished_tasks(references, tmp_path):
    """NaN/inf in the loss (a learning rate raised to 1e6 from task 3 on, by editing the run's
    config.yaml before resuming) stops within one epoch, exit 2, and the finished tasks stay."""
    out = tmp_path / "run"
    copy_run(references("joint"), out, keep_tasks=2)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["train"]["lr"] = 1e6
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    kept = {p: p.read_bytes() for p in (out / "checkpoints").glob("task_*.pt")}
    code, out_text, err = finish(cilearn("run", "--resume", str(out)))
    assert code == 2, err
    assert err.startswith("error: the training loss became") and err.count("\n") == 1, err
    assert "Traceback" not in err and "epoch 1 " in err and "Lower train.lr" in err, err
    assert "2 finished tasks keep their results" in err, err
    assert {p: p.read_bytes() for p in (out / "checkpoints").glob("task_*.pt")} == kept
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks_done"] == 2 and not metrics["complete"]


def test_parent_folder_of_several_runs_resumes(tmp_path, capsys):
    """``methods:`` × ``seeds:``: a kill inside the second run; --resume on the parent folder skips the
    finished run, continues the interrupted one, starts the one never begun, and writes the summary."""
    raw = {k: v for k, v in config({"name": "joint"}).items() if k not in ("method", "seed")}
    raw["train"] = {**raw["train"], "epochs": 2, "milestones": []}
    raw.update(methods=[{"name": "finetune"}, {"name": "joint"}], seeds=[0, 1])
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(reference)]) == 0
    # Runs in order finetune/seed0, finetune/seed1, joint/seed0, joint/seed1: die in the third one's task 3.
    code, _, err = finish(cilearn("run", str(cfg), "--out", str(out), kill_at=r"write:^\.task_02\.pt\.:3", tmp=tmp_path))
    assert code == -signal.SIGKILL, err
    assert json.loads((out / "finetune/seed1/metrics.json").read_text())["complete"]
    assert not (out / "joint/seed1").exists() and not (out / "summary.json").exists()
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[finetune" not in text and "[joint/seed0] resuming from" in text, text
    assert "[joint/seed1] task 1/5" in text, text
    for label in ("finetune/seed0", "finetune/seed1", "joint/seed0", "joint/seed1"):
        got, want = results(out / label), results(reference / label)
        assert got == want, label
    assert (out / "summary.json").read_text() == (reference / "summary.json").read_text()
    assert (out / "summary.md").read_text().replace(str(out), "") == (reference / "summary.md").read_text().replace(
        str(reference), "")
    assert main(["run", "--resume", str(out)]) == 0
    assert "already complete (4 runs)" in capsys.readouterr().out


def test_killed_before_the_config_was_written_can_start_again(tmp_path, capsys):
    """A run killed while writing config.yaml leaves only its lock and a temporary file: the folder
    cannot be resumed, and the same command starts it afresh."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("pid 999999")
    (out / ".config.yaml.abc123.tmp").write_text("data: {na")
    assert main(["run", "--resume", str(out)]) == 2
    assert "is not a cilearn run directory" in capsys.readouterr().err
    raw = config({"name": "finetune"})
    raw["train"].update(epochs=1, checkpoint_every=0, milestones=[])
    raw["scenario"]["num_tasks"] = 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["complete"]
    assert not list(out.glob("*.tmp"))
    (out / "stray.txt").write_text("")
    assert main(["run", str(cfg), "--out", str(out)]) == 2  # now it holds a run: never overwritten


def test_methods_drawing_from_the_global_rngs_resume_exactly(tmp_path, monkeypatch, request, capsys):
    """begin_task/training_data run again when a run resumes inside a task; they get the random state
    they had the first time (a method may subsample its data with np.random, say)."""
    from cilearn.engine.runner import Run
    from cilearn.methods import Method

    class Subsample(Method):
        name = "subsample_test"

        def begin_task(self, task):
            super().begin_task(task)
            self.noise = torch.rand(1).item()

        def training_data(self, task):
            keep = np.sort(np.random.permutation(len(task.train))[: len(task.train) // 2 + int(10 * self.noise)])
            return task.train.subset(keep)

    register(Subsample)
    request.addfinalizer(lambda: METHODS.remove(Subsample.name))
    raw = config({"name": Subsample.name})
    raw["scenario"]["num_tasks"] = 3
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--out", str(tmp_path / "reference")]) == 0

    original = Run.save

    def save_then_stop(self, task_index, stage, next_epoch):
        original(self, task_index, stage, next_epoch)
        if (task_index, next_epoch) in ((1, 3), (2, 2)):
            raise KeyboardInterrupt  # Ctrl-C right after an epoch checkpoint
    monkeypatch.setattr(Run, "save", save_then_stop)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 130
    assert main(["run", "--resume", str(out)]) == 130
    monkeypatch.setattr(Run, "save", original)
    assert main(["run", "--resume", str(out)]) == 0
    assert "interrupted: finished tasks are saved" in capsys.readouterr().err
    got, want = results(out), results(tmp_path / "reference")
    assert got["metrics"] == want["metrics"] and got["log"] == want["log"] and got["predictions"] == want["predictions"]


def test_resumed_run_keeps_the_thread_count_it_started_with(tmp_path, monkeypatch, request, capsys):
    """A config that leaves train.num_threads to the machine: the run resumes with the torch thread count of
    run.json (BatchNorm networks' numbers depend on it), says so, and leaves the process's count as it was."""
    from cilearn.engine.runner import Run
    from cilearn.methods import Method

    seen = []

    class ThreadWitness(Method):
        name = "thread_witness_test"

        def begin_task(self, task):
            super().begin_task(task)
            seen.append(torch.get_num_threads())

    register(ThreadWitness)
    request.addfinalizer(lambda: METHODS.remove(ThreadWitness.name))
    threads = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    raw = config({"name": ThreadWitness.name})
    raw["scenario"]["num_tasks"] = 3
    del raw["train"]["num_threads"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    original = Run.save

    def save_then_stop(self, task_index, stage, next_epoch):
        original(self, task_index, stage, next_epoch)
        if (task_index, next_epoch) == (1, 2):
            raise KeyboardInterrupt
    monkeypatch.setattr(Run, "save", save_then_stop)
    out = tmp_path / "run"
    torch.set_num_threads(1)
    assert main(["run", str(cfg), "--out", str(out)]) == 130
    assert json.loads((out / "run.json").read_text())["torch_threads"] == 1
    assert seen == [1, 1]
    monkeypatch.setattr(Run, "save", original)
    torch.set_num_threads(2)
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    assert seen == [1, 1, 1, 1]  # task 2 begun again inside it, then task 3
    assert "resuming with 1 torch threads, the count the run started with" in capsys.readouterr().out
    assert torch.get_num_threads() == 2
    # the config's own count wins over the recorded one
    raw["train"]["num_threads"] = 2
    cfg.write_text(yaml.safe_dump(raw))
    seen.clear()
    torch.set_num_threads(1)
    monkeypatch.setattr(Run, "save", save_then_stop)
    assert main(["run", str(cfg), "--out", str(tmp_path / "set")]) == 130
    monkeypatch.setattr(Run, "save", original)
    assert main(["run", "--resume", str(tmp_path / "set")]) == 0
    assert seen == [2, 2, 2, 2] and "resuming with" not in capsys.readouterr().out
