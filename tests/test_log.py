"""Console output through logging: one format, --quiet / --verbose on the command line."""

from __future__ import annotations

import logging

import pytest
import yaml

from cilearn.cli import main
from cilearn.log import QUIET, VERBOSE, ConsoleHandler, get_logger, progress_disabled, setup_logging

CONFIG = {
    "data": {"name": "digits"},
    "scenario": {"classes_per_task": 5, "class_order": "sorted"},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "method": {"name": "finetune"},
    "train": {"epochs": 1, "num_threads": 1, "progress": False, "eval_every": 0},
    "output": {"save_checkpoints": False, "save_features": False},
}


@pytest.fixture(autouse=True)
def restore_logging():
    logger = logging.getLogger("cilearn")
    state = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(state[0])
    logger.handlers[:] = state[1]
    logger.propagate = state[2]


def test_one_format_and_stream_per_level(capsys):
    setup_logging(VERBOSE)
    log = get_logger("cilearn.data.registry")
    log.debug("loaded 5 images")
    log.info("[finetune] task 1/2: accuracy 90.0%")
    log.warning("ignoring an unreadable cache file")
    log.error("config file 'x.yaml' is empty")
    out, err = capsys.readouterr()
    assert out == "[finetune] task 1/2: accuracy 90.0%\n"
    assert err.splitlines() == ["debug [cilearn.data.registry]: loaded 5 images",
                                "warning: ignoring an unreadable cache file",
                                "error: config file 'x.yaml' is empty"]


def test_setup_is_idempotent_and_quiet_keeps_warnings(capsys):
    for _ in range(3):
        setup_logging(QUIET)
    logger = logging.getLogger("cilearn")
    assert sum(isinstance(h, ConsoleHandler) for h in logger.handlers) == 1
    get_logger("bench").info("progress")  # a bare name lands under cilearn.
    get_logger("bench").warning("careful")
    out, err = capsys.readouterr()
    assert out == "" and err == "warning: careful\n"
    assert progress_disabled() is True
    setup_logging()
    assert progress_disabled() is None  # tqdm's own choice: a bar on a terminal only


def test_quiet_and_verbose_on_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert main(["run", str(path), "--out", "normal"]) == 0
    out, err = capsys.readouterr()
    assert "Accuracy (%) on all test images of the classes seen so far" in out and "debug" not in err
    assert main(["-v", "run", str(path), "--out", "verbose"]) == 0
    out, err = capsys.readouterr()
    assert "debug [cilearn.data.registry]: dataset digits" in err and "Accuracy (%)" in out
    assert main(["run", str(path), "--out", "quiet", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "Accuracy (%)" not in out and out.strip().endswith("done: quiet") and err == ""
    assert main(["run", str(path), "-q", "-v"]) == 2
    assert capsys.readouterr().err.startswith("error: argument -v/--verbose: not allowed with argument -q/--quiet")


def test_image_cache_problems_are_warnings_on_stderr(tmp_path, capsys, monkeypatch):
    """A damaged image-folder cache is a warning line (through logging), and the images are decoded again."""
    import numpy as np
    from PIL import Image

    from cilearn.data import load_dataset

    monkeypatch.setenv("CILEARN_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(tmp_path / "imgs" / split / name / "0.png")
    setup_logging()
    load_dataset("image_folder", path=str(tmp_path / "imgs"))
    (cache,) = (tmp_path / "cache" / "image_folder").glob("*.npz")
    cache.write_bytes(b"damaged")
    capsys.readouterr()
    splits = load_dataset("image_folder", path=str(tmp_path / "imgs"))
    err = capsys.readouterr().err
    assert err.startswith(f"warning: ignoring unreadable cache file {cache}") and err.count("\n") == 1, err
    assert len(splits.train) == 2


LIBRARY_RUN = """
import logging, sys, cilearn
{setup}
config = {config!r}
cilearn.Experiment.from_dict(config).run(sys.argv[1])
"""


@pytest.mark.parametrize("setup, shows_progress", [
    ("", True),  # a script or notebook that configured no logging: the CLI's lines
    ("logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')", False),  # its own config rules
    ("cilearn.setup_logging(-1)", False),  # quiet on request
])
def test_a_library_user_sees_progress_unless_logging_says_otherwise(tmp_path, setup, shows_progress):
    import subprocess
    import sys

    script = LIBRARY_RUN.format(setup=setup, config={**CONFIG, "scenario": {**CONFIG["scenario"], "num_tasks": 1}})
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True,
                          check=True)
    assert ("[finetune] task 1/1 (classes 0-4): accuracy on seen classes" in done.stdout) is shows_progress
    assert "Traceback" not in done.stderr and (tmp_path / "run" / "metrics.json").is_file()


def test_a_skipped_checkpoint_is_a_warning_through_logging(tmp_path, capsys):
    from cilearn.engine.checkpoints import CHECKPOINT_FORMAT, KEYS, CheckpointStore, save_checkpoint
    from cilearn.rundir import RunDir

    setup_logging()
    files = RunDir(tmp_path)
    save_checkpoint(files.task_checkpoint(0), {key: None for key in KEYS} | {"format": CHECKPOINT_FORMAT, "task": 0})
    files.task_checkpoint(1).write_bytes(b"not a checkpoint at all")
    assert CheckpointStore(files, num_tasks=3).latest()["task"] == 0  # falls back past the bad one
    err = capsys.readouterr().err
    assert err.startswith("warning: checkpoint '") and "is not a checkpoint (corrupt or wrong file" in err
    assert f"Resuming from '{files.task_checkpoint(0)}' instead." in err


def test_a_redirected_run_prints_a_line_per_epoch(tmp_path):
    """stdout and stderr to files (SLURM, nohup, CI): no bar, one line per epoch with the task, the epoch, loss,
    lr, img/s, the test accuracy when evaluated, elapsed time and ETA."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        code = subprocess.run([sys.executable, "-m", "cilearn", "run", str(root / "configs/quickstart.yaml"),
                               "--set", "methods=[finetune]", "--set", "train.epochs=3", "--set", "train.eval_every=2",
                               "--set", "scenario.num_tasks=2", "--set", "train.num_threads=1", "--out",
                               str(tmp_path / "run")], stdout=out, stderr=err, env=env, cwd=tmp_path).returncode
    assert code == 0, (tmp_path / "err.txt").read_text()
    lines = [line for line in (tmp_path / "out.txt").read_text().splitlines() if ", epoch " in line]
    pattern = (r"\[finetune\] task (\d)/2, epoch (\d)/3: loss \d+\.\d{4}, lr 0\.05, \d+ img/s"
               r"(, test accuracy \d+\.\d% seen / \d+\.\d% this task)?, elapsed \d:\d\d:\d\d, ETA (\d:\d\d:\d\d|\?)")
    found = [re.fullmatch(pattern, line) for line in lines]
    assert all(found), lines
    assert [(int(m[1]), int(m[2])) for m in found] == [(t, e) for t in (1, 2) for e in (1, 2, 3)]
    assert [bool(m[3]) for m in found] == [False, True, False] * 2  # eval_every 2; the last epoch: after the task
    assert found[-1][4] == "0:00:00"  # the run is done
    assert "epoch" not in (tmp_path / "err.txt").read_text()  # no progress bar in a file
