"""One run on two processes (torchrun, gloo on the CPU) against the same run in one process.

The MLP has no BatchNorm, so the arithmetic of the two is the same up to the order of float sums: the two
processes compute halves of every batch and all-reduce the weighted gradients.  Stated tolerance: accuracies
and losses within 1e-4 (in practice they agree to the last printed digit); exemplars (herding on identical
models) identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import digits_config

from cilearn.distributed import Distributed

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


def config(method: dict, tasks: int = 3) -> dict:
    return digits_config(scenario={"num_tasks": tasks}, method=method,
                         train={"epochs": 2, "scheduler": "constant", "num_threads": 1, "dist_timeout": 120,
                                "precision": "fp32"},  # compared: pinned
                         output={"max_feature_samples": 40}, seed=2)


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def torchrun(args: list[str], processes: int = 2, timeout: float = 300, script: str | None = None):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    target = [script] if script else ["-m", "cilearn"]
    return subprocess.run(launcher + target + args, capture_output=True, text=True, env=env(), timeout=timeout)


def single(args: list[str], timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "cilearn"] + args, capture_output=True, text=True, env=env(),
                          timeout=timeout)


def scores(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    return {name: np.array([[np.nan if v is None else v for v in row] for row in s["accuracy_matrix"]])
            for name, s in metrics["classifiers"].items()}


def test_shards_cover_a_batch_once():
    for n in (1, 7, 32, 33):
        for world in (2, 3):
            parts = [Distributed(r, world, "gloo").shard(n) for r in range(world)]
            covered = [i for p in parts for i in range(n)[p]]
            assert covered == list(range(n)) and max(len(range(n)[p]) for p in parts) - min(
                len(range(n)[p]) for p in parts) <= 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    path = folder / "icarl.yaml"
    path.write_text(yaml.safe_dump(config({"name": "icarl", "memory_size": 40})))
    one = single(["run", str(path), "--out", str(folder / "one")])
    assert one.returncode == 0, one.stderr
    two = torchrun(["run", str(path), "--out", str(folder / "two")])
    assert two.returncode == 0, two.stderr
    return folder, path, two


def test_two_processes_match_one(runs):
    folder, _, two = runs
    assert "torchrun: 2 processes (gloo); each computes 16 of every batch of 32" in two.stdout
    assert two.stdout.count("task 3/3") == 1  # rank 0 alone reports
    want, got = scores(folder / "one"), scores(folder / "two")
    assert want.keys() == got.keys() == {"nme", "head"}
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=TOLERANCE, equal_nan=True)
    for task in range(3):  # herding on identical models: the same exemplars
        a = np.load(folder / "one" / "exemplars" / f"task_{task:02d}.npz")
        b = np.load(folder / "two" / "exemplars" / f"task_{task:02d}.npz")
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    log_one = [r.split(",") for r in (folder / "one" / "log.csv").read_text().splitlines()[1:]]
    log_two = [r.split(",") for r in (folder / "two" / "log.csv").read_text().splitlines()[1:]]
    for a, b in zip(log_one, log_two):  # train loss and accuracy over the whole batch, as one process
        assert abs(float(a[3]) - float(b[3])) < TOLERANCE and abs(float(a[4]) - float(b[4])) < TOLERANCE
    assert not list((folder / "two").rglob("*.tmp"))


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    folder, _, _ = runs
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(folder / "two", resumed)
    (resumed / "checkpoints" / "task_02.pt").unlink()  # as if the job had stopped after its second task
    metrics = json.loads((resumed / "metrics.json").read_text())
    metrics["complete"] = False
    (resumed / "metrics.json").write_text(json.dumps(metrics))
    proc = single(["run", "--resume", str(resumed)])
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stdout and "task 3/3" in proc.stdout
    for name, matrix in scores(folder / "one").items():
        np.testing.assert_allclose(scores(resumed)[name], matrix, atol=TOLERANCE, equal_nan=True)


KILLER = '''
import os, signal, sys, threading
from cilearn.engine import runner
if os.environ.get("RANK") == "1":
    original = runner.Run.evaluate_task
    def evaluate_then_die(self, task):
        original(self, task)
        if task.index == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # rank 1 dies after its second task
    runner.Run.evaluate_task = evaluate_then_die
from cilearn.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_a_dead_process_ends_the_job_with_one_message_and_nothing_half_written(runs, tmp_path):
    _, path, _ = runs
    script = tmp_path / "die.py"
    script.write_text(KILLER)
    out = tmp_path / "out"
    proc = torchrun(["run", str(path), "--out", str(out)], script=str(script), timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr  # rank 0's one line (torchrun adds its own report after it)
    assert "another process of this torchrun job stopped" in errors[0] and str(out) in errors[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert not metrics["complete"] and metrics["tasks_done"] >= 1
    assert not list(out.rglob("*.tmp"))
    resumed = single(["run", "--resume", str(out)])  # and the run continues in one process
    assert resumed.returncode == 0, resumed.stderr


REPLAY_METHODS = [{"name": "derpp", "buffer_size": 60, "replay_batch_size": 16},
                  {"name": "er_ace", "buffer_size": 60}, {"name": "er", "buffer_size": 60},
                  {"name": "agem", "buffer_size": 60, "replay_batch_size": 32},
                  {"name": "gem", "memory_total": 60, "train_on_memory": True}]


def test_replay_methods_on_two_processes_match_one(tmp_path):
    """ER, DER++, ER-ACE, A-GEM and GEM keep per-step state (a reservoir with stored logits, a second replayed
    minibatch, present-class masks, reference gradients, GEM's QP on the whole-batch gradient): on 2 processes
    each reservoir receives the whole batch and the results equal one process's (the MLP has no BatchNorm)."""
    raw = config({"name": "finetune"})
    raw.pop("method")
    raw["methods"] = REPLAY_METHODS
    raw["train"] = {**raw["train"], "epochs": 1}
    path = tmp_path / "replay.yaml"
    path.write_text(yaml.safe_dump(raw))
    one = single(["run", str(path), "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = torchrun(["run", str(path), "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    for method in REPLAY_METHODS:
        label = method["name"]
        want, got = scores(tmp_path / "one" / label), scores(tmp_path / "two" / label)
        np.testing.assert_allclose(got["head"], want["head"], atol=TOLERANCE, equal_nan=True, err_msg=label)
        states = [torch.load(tmp_path / run / label / "checkpoints" / "task_02.pt", weights_only=True)["method"]
                  for run in ("one", "two")]
        buffers = [state.get("buffer", state) for state in states]  # GEM keeps replay's memory, not a reservoir
        assert torch.equal(buffers[0]["labels"], buffers[1]["labels"]), label  # the same samples kept
        assert torch.equal(buffers[0]["images"], buffers[1]["images"]), label
        for key, value in buffers[0].get("extras", {}).items():  # DER++'s stored logits: gathered from both shares
            torch.testing.assert_close(buffers[1]["extras"][key], value, atol=TOLERANCE, rtol=0, msg=label)


def test_replay_batches_must_divide_by_the_processes():
    from cilearn.engine.assembly import check_distributed_method as check_method
    from cilearn.errors import ConfigError

    method = type("Stub", (), {"name": "derpp", "replay": object(), "replay_batch_size": 15})()
    with pytest.raises(ConfigError, match="method.replay_batch_size: 15 does not divide by the 2 processes"):
        check_method(method, Distributed(0, 2, "gloo"), 32)
    with pytest.raises(ConfigError, match="train.batch_size: 34 does not divide by the 3 processes"):
        check_method(method, Distributed(0, 3, "gloo"), 34)
    check_method(method, Distributed(0, 3, "gloo"), 30)  # 30 and 15 divide by 3
    check_method(method, None, 33)  # one process: anything goes


def test_sync_batchnorm_is_refused_on_cpu_under_torchrun(tmp_path):
    path = tmp_path / "guide.yaml"
    path.write_text(yaml.safe_dump(config({"name": "finetune"}) | {"train": {"sync_batchnorm": True, "epochs": 1}}))
    proc = torchrun(["run", str(path), "--out", str(tmp_path / "out")], timeout=200)
    assert proc.returncode != 0  # torchrun turns any failed process into its own exit code 1
    assert "error: train.sync_batchnorm: PyTorch's SyncBatchNorm runs on CUDA only" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_average_gradients_weights_each_share(monkeypatch):
    """The all-reduce of (local / total)-weighted gradients is the whole batch's mean gradient."""
    import torch.distributed as dist

    shares = {0: (3, torch.tensor([1.0, 2.0])), 1: (1, torch.tensor([5.0, -4.0]))}  # per-process mean gradients
    total = 4

    def fake_all_reduce(flat):  # sums what both processes contribute
        flat.copy_(sum(g * (n / total) for n, g in shares.values()))

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = shares[0][1].clone()
    Distributed(0, 2, "gloo").average_gradients([p], 3, total)
    assert torch.allclose(p.grad, (3 * shares[0][1] + 1 * shares[1][1]) / 4)


SHARDED_INFERENCE = """
import sys, numpy as np, torch
from cilearn.augment import BatchAugment
from cilearn.distributed import Distributed
from cilearn.engine.evaluate import Inference
from cilearn.models import build_model

torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model("resnet20", 3, 16)  # BatchNorm: folded into the convolutions for inference
model.add_classes(5)
model.eval()
images = np.random.RandomState(0).randint(0, 256, (300, 16, 16, 3), dtype=np.uint8)  # 5 batches, the last short
augment = BatchAugment((0.5,) * 3, (0.25,) * 3)
dist = Distributed.from_environment(torch.device("cpu"), 60)
sharded = Inference(model, augment, torch.device("cpu"), 64, fold_batchnorm=True, distributed=dist)
alone = Inference(model, augment, torch.device("cpu"), 64, fold_batchnorm=True)
calls = []
model.head.register_forward_hook(lambda *args: calls.append(1))
sharded(images)
assert len(calls) == (3 if dist.rank == 0 else 2), len(calls)  # batches 0, 2, 4 / 1, 3: its own share
for flip in (False, True):
    (f2, l2), (f1, l1) = sharded(images, flip=flip), alone(images, flip=flip)
    assert torch.equal(f2, f1) and torch.equal(l2, l1), (flip, (f2 - f1).abs().max(), (l2 - l1).abs().max())
small = sharded(images[:40])  # one batch: every process computes it (no collective)
assert torch.equal(small[0], alone(images[:40])[0])
if dist.rank == 0:
    open(sys.argv[1], "w").write("equal")
"""


def test_sharded_inference_equals_one_process_exactly(tmp_path):
    """Evaluation, herding and class means all go through Inference: on 2 processes each computes its own
    batches, and the gathered features and logits are those of one process, bit for bit."""
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_INFERENCE)
    done = torchrun([str(tmp_path / "ok")], script=str(script), timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "ok").read_text() == "equal"
