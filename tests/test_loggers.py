"""output.loggers: csv (today's files), TensorBoard event files and an offline W&B run, read back and compared
with what the run folder's own files say."""

from __future__ import annotations

import csv
import importlib.util
import json
import struct

import numpy as np
import pytest
from helpers import digits_config, installed_plugin

from cilearn import loggers
from cilearn.errors import ConfigError
from cilearn.experiment import Experiment

EPOCHS, TASKS = 2, 2


def config(*names: str, method: str = "finetune") -> dict:
    return digits_config(scenario={"num_tasks": TASKS}, method={"name": method},
                         train={"epochs": EPOCHS, "scheduler": "constant"},
                         output={"save_features": False, "loggers": list(names)})


def log_rows(run_dir) -> list[dict]:
    with open(run_dir / "log.csv") as handle:
        return list(csv.DictReader(handle))


def needs(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"{package} is not installed (pip install 'cilearn[{package}]')")


@needs("tensorboard")
def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util.tensor_util import make_ndarray

    result = Experiment.from_dict(config("csv", "tensorboard")).run(tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    rows = log_rows(tmp_path / "run")
    loss = events.Scalars("epoch/train_loss")
    assert [s.step for s in loss] == list(range(1, EPOCHS * TASKS + 1))  # x: epochs since the run began
    np.testing.assert_allclose([s.value for s in loss], [float(r["train_loss"]) for r in rows], atol=1e-5)
    np.testing.assert_allclose([s.value for s in events.Scalars("epoch/lr")], 0.05, rtol=1e-6)
    seen = events.Scalars("task/seen_accuracy")
    assert [s.step for s in seen] == [EPOCHS, 2 * EPOCHS]  # at each task's last epoch
    assert [s.value for s in events.Scalars("task/tasks_done")] == [1, 2]
    np.testing.assert_allclose([s.value for s in seen], result.metrics["seen_accuracy"], atol=1e-6)
    final = events.Scalars("final/last_accuracy")
    assert final[-1].value == pytest.approx(result.metrics["last_accuracy"], abs=1e-6)
    matrix = make_ndarray(events.Tensors("accuracy_matrix/text_summary")[-1].tensor_proto).item().decode()
    assert matrix.splitlines()[0] == "| after task | task 1 | task 2 |"
    assert f"{100 * result.metrics['accuracy_matrix'][1][0]:.1f}" in matrix.splitlines()[-1]
    config_text = make_ndarray(events.Tensors("config/text_summary")[0].tensor_proto).item().decode()
    assert "epochs: 2" in config_text
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["train.lr"].number_value == pytest.approx(0.05)
    assert hparams["method.name"].string_value == "finetune"


@needs("tensorboard")
def test_tensorboard_has_each_tasks_last_epoch_test_accuracy(tmp_path):
    """With one epoch per task every epoch is a task's last: its test accuracies come from the evaluation after
    the task (log.csv's row), and TensorBoard shows them at that epoch's step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = config("csv", "tensorboard")
    raw["train"]["epochs"] = 1
    Experiment.from_dict(raw).run(tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    rows = log_rows(tmp_path / "run")
    for key in ("test_accuracy_seen", "test_accuracy_current"):
        scalars = events.Scalars(f"epoch/{key}")
        assert [s.step for s in scalars] == [1, 2]
        np.testing.assert_allclose([s.value for s in scalars], [float(r[key]) for r in rows], atol=1e-5)


@needs("tensorboard")
def test_a_resumed_run_shows_each_epoch_once_in_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    first = Experiment.from_dict(config("csv", "tensorboard")).run(run)
    # Back to the end of task 1, as a kill during task 2 leaves the folder (task 2's epochs are in the events).
    (run / "checkpoints" / "task_01.pt").unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))
    again = Experiment.resume(run)
    np.testing.assert_array_equal(again.accuracy_matrix, first.accuracy_matrix)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [s.step for s in events.Scalars("epoch/train_loss")] == list(range(1, EPOCHS * TASKS + 1))
    assert [s.step for s in events.Scalars("task/seen_accuracy")] == [EPOCHS, 2 * EPOCHS]


def wandb_records(folder, timeout: float = 60.0) -> list:
    """The records of an offline W&B run, once W&B's service (another process) has written its last one (the
    ``exit`` record of ``run.finish()``)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_file(folder) if list(folder.glob("wandb/offline-run-*/run-*.wandb")) else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_wandb_file(folder) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``): W&B's 7-byte header, then LevelDB's log
    format (32 KiB blocks of chunks: crc32 (4 bytes), length (2), type (1: full, 2: first, 3: middle, 4: last)),
    each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    [path] = list(folder.glob("wandb/offline-run-*/run-*.wandb"))
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@needs("wandb")
def test_wandb_offline_run_holds_the_logged_values(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    result = Experiment.from_dict(config("wandb")).run(tmp_path / "run")
    assert not (tmp_path / "run" / "log.csv").exists()  # no csv logger: no log.csv (metrics.json stays)
    records = wandb_records(tmp_path / "run")
    def key(item) -> str:  # W&B keeps a key in key, or (newer versions) in nested_key
        return item.key or "/".join(item.nested_key)

    history = [{key(item): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    epochs = [h for h in history if "epoch/train_loss" in h]
    assert [h["epoch"] for h in epochs] == list(range(1, EPOCHS * TASKS + 1))
    tasks = [h for h in history if "task/seen_accuracy" in h]
    assert [h["task"] for h in tasks] == [1, 2]
    np.testing.assert_allclose([h["task/seen_accuracy"] for h in tasks], result.metrics["seen_accuracy"])
    assert tasks[-1]["accuracy_matrix/_type"] == "table-file"
    [run_record] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config_items = {key(item): json.loads(item.value_json) for item in run_record.config.update}
    assert config_items["train"]["epochs"] == EPOCHS and config_items["method"]["name"] == "finetune"
    summary = {key(item): json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "summary"
               for item in r.summary.update}
    assert summary["last_accuracy"] == pytest.approx(result.metrics["last_accuracy"])
    assert run_record.run_id == (tmp_path / "run" / "wandb" / "cilearn-run-id").read_text()


def test_csv_is_the_default_and_writes_todays_files(tmp_path):
    raw = config()
    del raw["output"]["loggers"]
    result = Experiment.from_dict(raw).run(tmp_path / "run")
    rows = log_rows(tmp_path / "run")
    assert [(int(r["task"]), int(r["epoch"])) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    text = (tmp_path / "run" / "accuracy_matrix.csv").read_text().splitlines()
    assert text[0] == "after_task,task_0,task_1"
    assert float(text[2].split(",")[1]) == pytest.approx(result.metrics["accuracy_matrix"][1][0], abs=1e-6)
    assert not (tmp_path / "run" / "tensorboard").exists() and not (tmp_path / "run" / "wandb").exists()


def test_logger_mistakes_stop_before_anything_is_written(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="'csv' is listed twice"):
        Experiment.from_dict(config("csv", "csv")).run(tmp_path / "twice")
    with pytest.raises(ConfigError, match=r"output.loggers\[0\]: unknown logger 'mlfow'. Did you mean 'mlflow'\? "
                                          r"Choose one of: csv, mlflow, tensorboard, wandb"):
        Experiment.from_dict(config("mlfow"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the tensorboard package.*pip install 'cilearn\[tensorboard\]'"):
        Experiment.from_dict(config("csv", "tensorboard")).run(tmp_path / "missing")
    assert not (tmp_path / "twice").exists() and not (tmp_path / "missing").exists()


def test_only_rank_zero_logs(monkeypatch):
    assert [type(x).__name__ for x in loggers.make_loggers(["csv"])] == ["CsvLogger"]
    monkeypatch.setenv("RANK", "1")
    assert loggers.make_loggers(["csv", "tensorboard"]) == []


def test_wandb_mode_never_goes_online_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.delenv("NETRC", raising=False)
    assert loggers.wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert loggers.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert loggers.wandb_mode() == "disabled"


@needs("mlflow")
def test_mlflow_local_store_holds_the_logged_values(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = config("csv", "mlflow")
    raw["name"] = "mlflow-test"
    result = Experiment.from_dict(raw).run(tmp_path / "run")
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlflow").as_uri())
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("mlflow-test").experiment_id])
    assert mlflow_run.info.run_id == (tmp_path / "run" / "mlflow-run-id").read_text()
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == "finetune"
    assert mlflow_run.data.params["train.lr"] == "0.05" and mlflow_run.data.params["method.name"] == "finetune"
    rows = log_rows(tmp_path / "run")
    loss = client.get_metric_history(mlflow_run.info.run_id, "epoch/train_loss")
    assert [m.step for m in loss] == list(range(1, EPOCHS * TASKS + 1))
    np.testing.assert_allclose([m.value for m in loss], [float(r["train_loss"]) for r in rows], atol=1e-5)
    seen = client.get_metric_history(mlflow_run.info.run_id, "task/seen_accuracy")
    assert [m.step for m in seen] == [EPOCHS, 2 * EPOCHS]
    np.testing.assert_allclose([m.value for m in seen], result.metrics["seen_accuracy"], atol=1e-6)
    last_epoch = client.get_metric_history(mlflow_run.info.run_id, "epoch/test_accuracy_seen")
    assert [m.step for m in last_epoch][-1] == 2 * EPOCHS  # each task's last epoch is there
    assert mlflow_run.data.metrics["final/last_accuracy"] == pytest.approx(result.metrics["last_accuracy"])
    artifact = client.download_artifacts(mlflow_run.info.run_id, "accuracy_matrix.md", str(tmp_path))
    assert open(artifact).read().splitlines()[0] == "| after task | task 1 | task 2 |"


@needs("wandb")
def test_wandb_entity_group_tags_and_name(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    raw = config("wandb")
    raw["name"] = "my-sweep"
    raw["train"]["epochs"] = 1
    raw["output"].update({"wandb_entity": "lab", "wandb_tags": ["a", "b"], "wandb_name": "first try"})
    Experiment.from_dict(raw).run(tmp_path / "run")
    [run_record] = [r.run for r in wandb_records(tmp_path / "run") if r.WhichOneof("record_type") == "run"]
    assert (run_record.entity, run_record.run_group, list(run_record.tags), run_record.display_name) == (
        "lab", "my-sweep", ["a", "b"], "first try")  # the group: the config's name by default


PLUGIN_LOGGER = """
import json
from cilearn.loggers import Logger


class JsonLines(Logger):
    \"\"\"plugin logger: one JSON line per epoch\"\"\"

    def epoch_end(self, run, row):
        with open(run.files / "epochs.jsonl", "a") as handle:
            handle.write(json.dumps({"task": row["task"], "epoch": row["epoch"], "loss": row["train_loss"]}) + "\\n")
"""


def test_a_separately_installed_package_registers_a_logger(tmp_path):
    import subprocess
    import sys

    env = installed_plugin(tmp_path, "cilearn_logger_demo", PLUGIN_LOGGER, """\
        [cilearn.loggers]
        jsonlines = cilearn_logger_demo:JsonLines
        """)
    raw = config("csv", "jsonlines")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    done = subprocess.run([sys.executable, "-m", "cilearn", "run", str(tmp_path / "config.json"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out" / "epochs.jsonl").read_text().splitlines()]
    rows = log_rows(tmp_path / "out")
    assert [(line["task"], line["epoch"]) for line in lines] == [(int(r["task"]), int(r["epoch"])) for r in rows]
    assert [line["loss"] for line in lines] == pytest.approx([float(r["train_loss"]) for r in rows], abs=1e-5)
    wrong = subprocess.run([sys.executable, "-m", "cilearn", "run", str(tmp_path / "config.json"), "--set",
                            "output.loggers=[jsonline]"], capture_output=True, text=True, env=env, timeout=120)
    assert wrong.returncode == 2 and "unknown logger 'jsonline'. Did you mean 'jsonlines'?" in wrong.stderr
