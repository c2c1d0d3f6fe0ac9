"""Bad input never costs results: every mistake below exits with code 2 and one ``error:`` line (no
traceback), writes nothing for a new run, and leaves an earlier run directory byte-identical."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import digits_config

from cilearn.cli import main
from cilearn.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]

GOOD = digits_config(scenario={"num_tasks": 2}, train={"epochs": 1, "num_threads": 1},
                     output={"max_feature_samples": 20})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("earlier") / "run"
    path = out.parent / "good.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["run", str(path), "--out", str(out)]) == 0
    return out


@dataclass
class Ctx:
    tmp: Path
    earlier: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def config(self, changes: dict | None = None, drop: tuple[str, ...] = (), text: str | bytes | None = None) -> str:
        """A config file: GOOD with dotted ``changes`` (and dotted keys dropped), or raw ``text``."""
        path = self.tmp / "config.yaml"
        if text is not None:
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
            return str(path)
        raw = copy.deepcopy(GOOD)
        for dotted, value in (changes or {}).items():
            *parents, last = dotted.split(".")
            node = raw
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        for dotted in drop:
            *parents, last = dotted.split(".")
            node = raw
            for part in parents:
                node = node[part]
            del node[last]
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    def run(self, changes: dict | None = None, *extra: str, drop: tuple[str, ...] = ()) -> list[str]:
        return ["run", self.config(changes, drop), "--out", str(self.out), *extra]

    def copy_of_earlier(self, incomplete: bool = True) -> Path:
        """A copy of the earlier run, as if killed before its last task finished."""
        copy_dir = self.tmp / "copy"
        shutil.copytree(self.earlier, copy_dir)
        if incomplete:
            (copy_dir / "checkpoints" / "task_01.pt").unlink()
            metrics = json.loads((copy_dir / "metrics.json").read_text())
            (copy_dir / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))
        return copy_dir


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]
    creates_out: bool = False          # the run starts (training diverges): its folder exists afterwards
    needs: tuple[str, ...] = ()        # registered methods the case needs
    check: Callable[[Ctx], None] | None = None


# --- data fixtures ------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_root(ctx: Ctx, truncate: bool) -> Path:
    root = ctx.tmp / "data"
    raw = root / "mnist" / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 40), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    if truncate:
        images = raw / "train-images-idx3-ubyte"
        images.write_bytes(images.read_bytes()[:5000])
    ctx.monkeypatch.setenv("CILEARN_DATA", str(root))
    return root


def image_folder(ctx: Ctx, size: int = 4, empty_class: bool = False, corrupt: bool = False) -> Path:
    from PIL import Image

    root = ctx.tmp / "images"
    rng = np.random.default_rng(1)
    for split, count in (("train", 2), ("test", 1)):
        for name in ("ant", "bee"):
            for i in range(count):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    if empty_class:
        (root / "train" / "cow").mkdir()
    if corrupt:
        bad = root / "test" / "bee" / "0.png"
        bad.write_bytes(bad.read_bytes()[:30])
    return root


def escaping_archive(ctx: Ctx) -> Path:
    """The image folder as a tar archive with one more member, '../../x.png', outside its folder."""
    import tarfile

    root = image_folder(ctx)
    archive = ctx.tmp / "images.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(root, arcname=".")
        tf.add(root / "train" / "ant" / "0.png", arcname="../../x.png")
    return archive


def folder_config(ctx: Ctx, root: Path, model: str = "mlp") -> list[str]:
    return ctx.run({"data": {"name": "image_folder", "options": {"path": str(root)}},
                    "scenario.classes_per_task": 1, "model": {"name": model}})


class Evil:
    """Pickles to a call of os.system: a checkpoint that would run code when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(ctx: Ctx, plain_pickle: bool = False) -> list[str]:
    run = ctx.copy_of_earlier()
    path = run / "checkpoints" / "epoch.pt"
    if plain_pickle:
        import pickle
        path.write_bytes(pickle.dumps({"format": 1, "model": Evil(ctx.tmp / "pwned")}))
    else:
        torch.save({"format": 1, "task": 1, "model": Evil(ctx.tmp / "pwned")}, path)
    return ["run", "--resume", str(run)]


def not_executed(ctx: Ctx) -> None:
    assert not (ctx.tmp / "pwned").exists()


def random_bytes(path: Path, seed: int = 0) -> None:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def random_checkpoint(ctx: Ctx) -> list[str]:
    run = ctx.copy_of_earlier()
    random_bytes(run / "checkpoints" / "task_00.pt")  # the only checkpoint left: nothing to fall back to
    return ["run", "--resume", str(run)]


def truncated_checkpoints(ctx: Ctx) -> list[str]:
    run = ctx.copy_of_earlier()
    for path in (run / "checkpoints").glob("*.pt"):
        path.write_bytes(path.read_bytes()[:200])
    return ["run", "--resume", str(run)]


def edited_run_config(ctx: Ctx, key: str, value) -> list[str]:
    run = ctx.copy_of_earlier()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    section, name = key.split(".")
    saved[section][name] = value
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    return ["run", "--resume", str(run)]


def a_file(ctx: Ctx) -> list[str]:
    (ctx.tmp / "afile").write_text("x")
    return ["run", ctx.config(), "--out", str(ctx.tmp / "afile")]


CASES = [
    # --- the config file itself
    Case("missing config file", lambda c: ["run", str(c.tmp / "nope.yaml")], ("nope.yaml' does not exist",)),
    Case("config is a folder", lambda c: ["run", str(c.tmp)], ("is a folder",)),
    Case("invalid YAML", lambda c: ["run", c.config(text="data: {name: digits\nmodel: x\n")],
         ("invalid YAML at line",)),
    Case("duplicate key", lambda c: ["run", c.config(text="data: {name: digits}\ntrain: {epochs: 1}\n"
                                                         "model: {name: mlp}\ntrain: {lr: 0.1}\n")],
         ("line 4", "the key 'train' appears twice")),
    Case("top level is a list", lambda c: ["run", c.config(text="- data\n- model\n")],
         ("top level must be a mapping",)),
    Case("binary config", lambda c: ["run", c.config(text=b"\x80\x81\xfe\x00")], ("not a text (UTF-8) file",)),
    Case("empty config", lambda c: ["run", c.config(text="")], ("config.yaml' is empty",)),
    Case("config with only comments", lambda c: ["run", c.config(text="# to do\n")], ("config.yaml' is empty",)),
    # --- schema: keys, types, ranges
    Case("unknown top-level key", lambda c: c.run({"trian": {"epochs": 1}}),
         ("unknown top-level key 'trian'", "Did you mean 'train'?")),
    Case("unknown key in a section", lambda c: c.run({"train.epoch": 3}),
         ("train: unknown key 'epoch'", "Did you mean 'epochs'?")),
    Case("wrong type (int)", lambda c: c.run({"train.epochs": "ten"}),
         ("train.epochs: expected an integer, got 'ten'",)),
    Case("wrong type (float)", lambda c: c.run({"train.lr": "fast"}), ("train.lr: expected a number, got 'fast'",)),
    Case("wrong type (bool)", lambda c: c.run({"train.progress": 3}), ("train.progress: expected true or false",)),
    Case("fractional int", lambda c: c.run({"train.epochs": 2.5}), ("train.epochs: expected an integer, got 2.5",)),
    Case("section not a mapping", lambda c: c.run({"train": 5}), ("train: expected a mapping of options, got 5",)),
    Case("above maximum", lambda c: c.run({"train.momentum": 1.5}), ("train.momentum: 1.5 is above the maximum 1.0",)),
    Case("below minimum", lambda c: c.run({"train.batch_size": 0}), ("train.batch_size: 0 is below the minimum 1",)),
    Case("non-finite number", lambda c: c.run({"train.lr": float("nan")}), ("train.lr: expected a finite number",)),
    Case("unknown choice", lambda c: c.run({"train.scheduler": "cosin"}), ("Did you mean 'cosine'?",)),
    Case("milestones past epochs", lambda c: c.run({"train.milestones": [5]}), ("train.milestones: [5]",)),
    Case("missing section", lambda c: c.run(drop=("data",)), ("data: required section is missing",)),
    Case("method and methods", lambda c: c.run({"methods": [{"name": "joint"}]}), ("give either 'method'",)),
    Case("repeated seed", lambda c: c.run(None, "--seeds", "1", "1"), ("seeds: [1, 1] repeats a seed",)),
    Case("negative seed", lambda c: c.run({"seed": -1}), ("seed: expected a non-negative integer, got -1",)),
    Case("unknown method", lambda c: c.run({"method.name": "lfw"}), ("unknown method 'lfw'", "Did you mean 'lwf'?")),
    Case("unknown method option", lambda c: c.run({"method": {"name": "icarl", "memory": 10}}),
         ("method: unknown key 'memory'", "Did you mean 'memory_size'?"), needs=("icarl",)),
    # --- combinations that cannot work (found before anything is written)
    Case("unknown dataset", lambda c: c.run({"data.name": "digit"}), ("unknown dataset 'digit'", "'digits'")),
    Case("unknown dataset option", lambda c: c.run({"data.options": {"size": 3}}), ("unknown key 'size'",)),
    Case("unknown model", lambda c: c.run({"model.name": "mpl"}), ("unknown model 'mpl'", "'mlp'")),
    Case("unknown model option", lambda c: c.run({"model.options": {"hiden": [3]}}), ("'hiden'", "'hidden'")),
    Case("classes per task do not divide",
         lambda c: c.run({"scenario.classes_per_task": 3}, drop=("scenario.num_tasks",)),
         ("classes_per_task: 3 does not divide the 7 classes",)),
    Case("more tasks than classes allow", lambda c: c.run({"scenario.num_tasks": 7}),
         ("num_tasks: 7 is more than the 5",)),
    Case("memory smaller than the classes", lambda c: c.run({"method": {"name": "icarl", "memory_size": 3}}),
         ("memory_size: 3 exemplars is smaller",), needs=("icarl",)),
    Case("nearest-mean without memory", lambda c: c.run({"method": {"name": "lwf", "classifiers": ["nme"]}}),
         ("nearest-mean-of-exemplars", "needs an exemplar memory"), needs=("lwf",)),
    Case("model does not fit the images", lambda c: folder_config(c, image_folder(c, size=4), "resnet20"),
         ("needs image_size >= 8", "got 4")),
    Case("class order repeats a label", lambda c: c.run({"scenario.class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]}),
         ("scenario.class_order: label 8 appears twice",)),
    Case("class order names a label that does not exist",
         lambda c: c.run({"scenario.class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]}),
         ("scenario.class_order: label 10 does not exist", "labels 0..9")),
    Case("transfer without pretrained", lambda c: c.run({"model.transfer": "freeze"}), ("need model.pretrained",)),
    # --- data files
    Case("truncated MNIST file", lambda c: (mnist_root(c, truncate=True), c.run({"data.name": "mnist"}))[1],
         ("mnist/MNIST/raw/train-images-idx3-ubyte: truncated IDX file",)),
    Case("missing MNIST files", lambda c: (c.monkeypatch.setenv("CILEARN_DATA", str(c.tmp)),
                                           c.run({"data.name": "mnist"}))[1],
         ("MNIST file not found", "train-images-idx3-ubyte")),
    Case("empty class folder", lambda c: folder_config(c, image_folder(c, empty_class=True)), ("train/cow",)),
    Case("archive member outside its folder", lambda c: folder_config(c, escaping_archive(c)),
         ("images.tar: refusing member '../../x.png'", "unsafe")),
    Case("unreadable image", lambda c: folder_config(c, image_folder(c, corrupt=True)),
         ("test/bee/0.png", "cannot decode")),
    # --- the command line
    Case("--set without =", lambda c: c.run(None, "--set", "train.epochs"), ("expected KEY=VALUE",)),
    Case("--set empty key part", lambda c: c.run(None, "--set", "train..lr=1"), ("dotted names",)),
    Case("--set into a value", lambda c: c.run(None, "--set", "train.epochs.x=1"),
         ("'train.epochs' is not a section",)),
    Case("--set unknown key", lambda c: c.run(None, "--set", "train.eopchs=1"), ("Did you mean 'epochs'?",)),
    Case("--set bad YAML", lambda c: c.run(None, "--set", "train.milestones=[1,"), ("cannot parse the value",)),
    Case("no config", lambda c: ["run"], ("give a config file",)),
    Case("--resume with a config", lambda c: ["run", c.config(), "--resume", str(c.earlier)], ("takes no config",)),
    Case("--resume on a non-run folder", lambda c: ["run", "--resume", str(c.tmp)],
         ("is not a cilearn run directory",)),
    Case("--resume on a missing folder", lambda c: ["run", "--resume", str(c.tmp / "gone")], ("does not exist",)),
    Case("unknown command", lambda c: ["rn"], ("unknown command 'rn'", "Did you mean 'run'?")),
    Case("unknown option", lambda c: ["run", "--bogus"], ("unrecognized arguments: --bogus",)),
    Case("no command", lambda c: [], ("give a command",)),
    Case("--seeds not a number", lambda c: ["run", c.config(), "--seeds", "x"], ("invalid int value: 'x'",)),
    # --- run directories and checkpoints
    Case("--out is an earlier run", lambda c: ["run", c.config(), "--out", str(c.earlier)],
         ("already exists and is not empty; it is never overwritten", "--resume")),
    Case("--out is a file", a_file, ("is a file, not a folder",)),
    Case("malicious checkpoint", evil_checkpoint,
         ("epoch.pt' holds more than tensors and plain values", "refusing to load it"),
         check=not_executed),
    Case("malicious plain pickle", lambda c: evil_checkpoint(c, plain_pickle=True),
         ("epoch.pt' holds more than tensors and plain values", "refusing to load it"), check=not_executed),
    Case("checkpoint of random bytes", random_checkpoint,
         ("task_00.pt' is not a checkpoint (corrupt or wrong file", "delete the unreadable files")),
    Case("truncated checkpoints", truncated_checkpoints,
         ("task_00.pt' cannot be read", "truncated or corrupt", "delete the unreadable files")),
    Case("run config edited to another model", lambda c: edited_run_config(c, "model.options", {"hidden": [16]}),
         ("checkpoint", "task_00.pt' does not fit this run's model or method", "size mismatch")),
    Case("run config edited badly", lambda c: edited_run_config(c, "train.epochs", 0),
         ("train.epochs: 0 is below the minimum 1",)),
    # --- training
    Case("loss diverges", lambda c: c.run({"train.lr": "1e6"}), ("the training loss became", "Lower train.lr"),
         creates_out=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_line(case, earlier, tmp_path, capsys, monkeypatch):
    missing = [m for m in case.needs if m not in METHODS]
    if missing:
        pytest.skip(f"method {missing[0]} is not registered yet")
    monkeypatch.chdir(tmp_path)  # a default output folder (runs/...) would be created here
    monkeypatch.setenv("CILEARN_CACHE", str(tmp_path / "cache"))
    before = snapshot(earlier)
    ctx = Ctx(tmp_path, earlier, monkeypatch)
    argv = case.argv(ctx)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in case.expect:
        assert fragment in err, err
    assert snapshot(earlier) == before
    assert tmp_path.joinpath("out").exists() == case.creates_out
    assert not tmp_path.joinpath("runs").exists()
    if case.check:
        case.check(ctx)
    print(f"{case.id}: {err.strip()}")


def test_divergence_keeps_the_run_folder_honest(tmp_path, capsys):
    """lr 1e6: the run stops in its first epoch; the folder holds the config and nothing that claims results."""
    path = Ctx(tmp_path, tmp_path, None).config({"train.lr": 1e6})  # type: ignore[arg-type]
    assert main(["run", path, "--out", str(tmp_path / "out")]) == 2
    assert "epoch 1 (" in capsys.readouterr().err
    # the config and what describes the data (run.json, samples.npz), nothing that claims results
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml", "run.json", "samples.npz"]


@pytest.mark.parametrize("case", ["unknown key in a section", "truncated MNIST file", "malicious checkpoint"])
def test_as_a_separate_process(case, earlier, tmp_path, monkeypatch):
    """The same through ``python -m cilearn``: nothing else (warnings, tracebacks) reaches stderr."""
    chosen = next(c for c in CASES if c.id == case)
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, earlier, monkeypatch)
    argv = chosen.argv(ctx)
    proc = subprocess.run([sys.executable, "-m", "cilearn", *argv], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert all(fragment in proc.stderr for fragment in chosen.expect), proc.stderr
    if chosen.check:
        chosen.check(ctx)


def test_resume_falls_back_past_a_checkpoint_of_random_bytes(earlier, tmp_path, capsys):
    """Random bytes where epoch.pt should be are not a checkpoint (not 'could run code'): --resume warns,
    naming the file, and continues from the last good task checkpoint."""
    ctx = Ctx(tmp_path, earlier, None)  # type: ignore[arg-type]
    run = ctx.copy_of_earlier()
    random_bytes(run / "checkpoints" / "epoch.pt", seed=1)
    capsys.readouterr()
    assert main(["run", "--resume", str(run)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "epoch.pt' is not a checkpoint (corrupt or wrong file" in warnings[0], captured.err
    assert "task_00.pt' instead" in warnings[0] and "could run code" not in captured.err
    assert "resuming from" in captured.out and "task_00.pt" in captured.out
    assert json.loads((run / "metrics.json").read_text())["complete"]


def _interrupt_after_first_task(monkeypatch):
    from cilearn.engine.runner import Run

    original = Run.save

    def save_then_stop(self, task_index, stage, next_epoch):
        original(self, task_index, stage, next_epoch)
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "save", save_then_stop)


def test_ctrl_c_names_the_real_run_folder(tmp_path, capsys, monkeypatch):
    """Ctrl-C in a run without --out names the folder it chose (runs/<name>/<timestamp>), and that
    folder resumes; Ctrl-C before anything was written says so."""
    monkeypatch.chdir(tmp_path)
    path = Ctx(tmp_path, tmp_path, monkeypatch).config()
    _interrupt_after_first_task(monkeypatch)
    capsys.readouterr()
    assert main(["run", path]) == 130
    err = capsys.readouterr().err.strip()
    (run_dir,) = (tmp_path / "runs" / "config").iterdir()
    resume = f"cilearn run --resume {run_dir.relative_to(tmp_path)}"
    assert err == f"interrupted: finished tasks are saved; continue with: {resume}"
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--resume", str(run_dir.relative_to(tmp_path))]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["complete"]

    import cilearn.experiment

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cilearn.experiment, "validate_runs", interrupt)  # Ctrl-C while data and model are checked
    capsys.readouterr()
    assert main(["run", path, "--out", str(tmp_path / "new")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted before the run started; nothing was written."
    assert not (tmp_path / "new").exists()
