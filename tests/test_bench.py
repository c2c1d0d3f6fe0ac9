"""`cilearn bench` on tiny settings: it runs and writes every figure; timings are never asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cilearn import bench
from cilearn.bench import PHASES, aggregate, bare_steps, floor_ratio, inference_throughput, project_icarl_cifar100
from cilearn.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "mlp", "--image-size", "8", "--channels", "1", "--steps", "2", "--threads", "1"]


def test_bench_smoke_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "native_bf16", lambda device: (False, "test: no bf16"))  # the same keys on every CPU
    out = tmp_path / "bench.json"
    code = main(["bench", "--config", str(ROOT / "configs/quickstart.yaml"), *TINY, "--methods", "finetune",
                 "--json", str(out), "--set", "train.epochs=1", "--set", "scenario.num_tasks=2"])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["bare_step_images_per_second"]) == {"default", "channels_last", "channels_last_with_teacher"}
    assert "unit_channels_last" not in report["bare_step_samples"][0]  # not --protocol: the config's own step
    assert report["machine"]["ld_preload"] == (os.environ.get("LD_PRELOAD") or None)
    assert len(report["bare_step_samples"]) == 2  # before and after the run
    inference = report["inference_images_per_second"]  # as trained at 256 and 128, folded at 128
    assert set(inference) == {"plain_batch_256", "plain_batch_128", "folded_batch_128"}
    assert all(v > 0 for v in inference.values())
    (result,) = report["end_to_end"]
    assert result["method"] == "finetune" and len(result["per_task"]) == 2
    assert result["train_images_per_second"] > 0 and result["peak_rss_mib"] > 0
    assert result["ratio_to_bare_channels_last"] > 0 and result["ratio_to_floor_same_precision"] > 0
    assert result["wall_x_bare_images"] == pytest.approx(
        result["wall_seconds"] * result["bare_step_images_per_second"]["channels_last"])
    assert not result["uses_teacher"] and result["precision"] == "fp32"
    printed = capsys.readouterr().out
    assert "÷ floor" in printed and "inference (img/s, median of 5): plain batch 256" in printed


def test_inference_timing_adds_bf16_where_the_device_has_it(monkeypatch):
    """The bf16 inference row (train.inference_precision: bf16) is timed only where bf16 is native; the
    detection is injected, so both answers are exercised on any CPU (emulated bf16 is slow but runs)."""
    setup = {"model": "mlp", "channels": 1, "image_size": 8, "model_options": {"hidden": [16]}}
    for native, expected in ((False, set()), (True, {"folded_batch_128_bf16", "folded_batch_256_bf16"})):
        monkeypatch.setattr(bench, "native_bf16", lambda device, native=native: (native, "test"))
        timed = inference_throughput(setup, "cpu", images=256, repeats=1)
        assert set(timed) - {"plain_batch_256", "plain_batch_128", "folded_batch_128"} == expected
        assert all(v > 0 for v in timed.values())


def test_protocol_runs_the_protocol_config_with_memory_per_phase(tmp_path, capsys):
    """--protocol takes configs/bench_protocol.yaml as it is (iCaRL, its epochs, seed and class order);
    here shrunk to digits and an MLP with --set so that it runs in seconds."""
    out = tmp_path / "bench.json"
    code = main(["bench", "--protocol", *TINY, "--json", str(out), "--keep-runs", str(tmp_path / "runs"),
                 "--set", "data={name: digits}", "--set", "model={name: mlp, options: {hidden: [32]}}",
                 "--set", "scenario.num_tasks=2", "--set", "train.epochs=1", "--set", "train.augment=none",
                 "--set", "method.memory_size=40"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["settings"]["protocol"] and report["settings"]["config"].endswith("bench_protocol.yaml")
    (result,) = report["end_to_end"]
    assert result["method"] == "icarl" and result["uses_teacher"]
    assert set(result["classifiers"]) == {"nme", "head"}
    config = (tmp_path / "runs/protocol/config.yaml").read_text()
    assert "seed: 1993" in config and "weight_decay: 0.0002" in config and "- 4\n" in config
    phases = result["peak_rss_mib_per_phase"]
    assert set(PHASES) <= set(phases) and all(v is None or v > 0 for v in phases.values())
    assert 0 < result["eval_and_end_task_share"] < 1
    printed = capsys.readouterr().out
    assert "wall×bare" in printed and "peak RSS MiB per phase: data" in printed


def test_protocol_unit_stays_the_protocols_bare_step_when_a_recipe_changes_the_batch(tmp_path):
    """A recipe at batch 64 is still measured in the protocol's unit: wall × the bare step at the protocol's batch
    (128), timed beside the run's own bare step, not × the batch-64 step the peers were never normalised by."""
    out = tmp_path / "bench.json"
    code = main(["bench", "--protocol", *TINY, "--json", str(out), "--set", "data={name: digits}",
                 "--set", "model={name: mlp, options: {hidden: [32]}}", "--set", "scenario.num_tasks=2",
                 "--set", "train.epochs=1", "--set", "train.augment=none", "--set", "method.memory_size=40",
                 "--set", "train.batch_size=64"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["settings"]["bare_step"]["batch_size"] == 64
    assert all("unit_channels_last" in sample for sample in report["bare_step_samples"])
    (result,) = report["end_to_end"]
    bare = result["bare_step_images_per_second"]
    assert result["wall_x_bare_images"] == pytest.approx(result["wall_seconds"] * bare["unit_channels_last"])
    assert bare["unit_channels_last"] != bare["channels_last"]  # two timings of two batches


def test_seeds_run_once_each_and_give_mean_and_std(tmp_path, capsys):
    """--seeds: one run per seed with that seed in its stored config, and mean ± std (ddof 1) of each
    classifier's accuracies over them, recomputed here from the per-run results."""
    out = tmp_path / "bench.json"
    code = main(["bench", "--config", str(ROOT / "configs/quickstart.yaml"), *TINY, "--methods", "finetune",
                 "--seeds", "3", "7", "--json", str(out), "--keep-runs", str(tmp_path / "runs"),
                 "--set", "train.epochs=1", "--set", "scenario.num_tasks=2"])
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["seed"] for r in report["end_to_end"]] == [3, 7]
    for seed in (3, 7):
        assert f"seed: {seed}\n" in (tmp_path / f"runs/finetune/seed{seed}/config.yaml").read_text()
    values = [r["classifiers"]["head"]["average_incremental_accuracy"] for r in report["end_to_end"]]
    assert values[0] != values[1]  # the seed reached the runs
    summary = report["over_seeds"]["finetune"]["classifiers"]["head"]["average_incremental_accuracy"]
    assert summary["per_seed"] == {"3": values[0], "7": values[1]}
    assert summary["mean"] == pytest.approx(sum(values) / 2)
    assert summary["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert "finetune over seeds 3 7 (mean ± std): head avg-inc" in capsys.readouterr().out


def test_repeated_seeds_are_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--config", str(ROOT / "configs/quickstart.yaml"), *TINY, "--seeds", "1", "1",
                 "--json", str(out)])
    assert code == 2 and not out.exists()
    assert "--seeds: give distinct non-negative integers" in capsys.readouterr().err


def test_floor_ratio_compares_distilling_tasks_with_the_bare_step_plus_teacher():
    bare = {"channels_last": 100.0, "channels_last_with_teacher": 50.0}
    # Task 1 at the bare step (10 s for 1000 images), task 2 at half the bare+teacher floor (40 s, not 20 s).
    result = {"uses_teacher": True, "precision": "fp32", "train_seconds": 50.0,
              "per_task": [{"task": 0, "train_samples": 1000}, {"task": 1, "train_samples": 1000}]}
    assert floor_ratio(result, bare) == pytest.approx((10 + 20) / 50)
    assert floor_ratio({**result, "uses_teacher": False}, bare) == pytest.approx((10 + 10) / 50)
    bf16 = {**bare, "bf16_channels_last": 200.0, "bf16_channels_last_with_teacher": 100.0}
    assert floor_ratio({**result, "precision": "bf16"}, bf16) == pytest.approx((5 + 10) / 50)
    fp16 = {**bare, "fp16_channels_last": 400.0, "fp16_channels_last_with_teacher": 200.0}
    assert floor_ratio({**result, "precision": "fp16"}, fp16) == pytest.approx((2.5 + 5) / 50)


def test_fp16_bare_steps_are_timed_beside_fp32_with_a_loss_scale():
    """precision fp16 (GPUs without bf16): the bare step is also timed in fp16, stepping through a GradScaler as
    the loop does; on a CPU it runs emulated (slow), which is enough to check the keys."""
    setup = {"model": "mlp", "model_options": {"hidden": [16]}, "batch_size": 8, "lr": 0.1, "momentum": 0.9,
             "weight_decay": 0.0, "image_size": 8, "channels": 1}
    bare = bare_steps(setup, steps=2, device="cpu", precision="fp16")
    assert set(bare) == {"default", "channels_last", "channels_last_with_teacher", "fp16_channels_last",
                         "fp16_channels_last_with_teacher"}
    assert all(v > 0 for v in bare.values())


def test_aggregate_gives_min_and_median_over_repeats():
    keys = ("wall_seconds", "wall_x_bare_images", "train_images_per_second", "ratio_to_floor_same_precision",
            "eval_and_end_task_share", "peak_rss_mib")
    runs = [{"method": "icarl", **{k: v for k in keys}} for v in (3.0, 1.0, 2.0)]
    agg = aggregate(runs)["icarl"]["wall_x_bare_images"]
    assert (agg["min"], agg["median"], agg["max"]) == (1.0, 2.0, 3.0)


def test_bench_times_exemplar_synthesis_per_class(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--config", str(ROOT / "configs/quickstart.yaml"), "--model", "resnet20", "--image-size", "8",
                 "--channels", "1", "--steps", "1", "--batch-size", "16", "--json", str(out), "--synthesis",
                 "--synthesis-classes", "2", "--synthesis-per-class", "3", "--synthesis-iterations", "2",
                 "--methods"])  # no end-to-end run
    assert code == 0
    report = json.loads(out.read_text())
    assert report["end_to_end"] == []
    synthesis = report["synthesis"]
    assert synthesis["classes"] == 2 and synthesis["per_class"] == 3 and synthesis["iterations"] == 2
    assert all(synthesis[f"{k}_seconds_per_class"] > 0 for k in ("deepinversion", "adaptive_deepinversion", "collage"))
    assert "DeepInversion" in capsys.readouterr().out


def test_projection_of_the_cifar100_icarl_protocol():
    # 70 epochs × (5000 images in task 1 + 9 tasks × (5000 new + 2000 exemplars)) = 4.76 M images
    projection = project_icarl_cifar100([{"method": "finetune", "train_images_per_second": 1.0},
                                         {"method": "icarl", "train_images_per_second": 4_760_000 / 3600}])
    assert projection["training_images"] == 4_760_000
    assert abs(projection["training_hours"] - 1.0) < 1e-9
    assert project_icarl_cifar100([{"method": "finetune", "train_images_per_second": 1.0}]) is None


def test_seed_spread_script_reads_run_folders_and_tests_the_variance_ratio(tmp_path):
    """benchmarks/seed_spread.py: per-task means over seeds from metrics.json, and the F test of two groups'
    variances (here 4 and 1, F(2, 2): p = 2 · (1 - F_cdf(4)) = 2 / (1 + 4) = 0.4 by hand)."""
    for seed, average in enumerate((0.50, 0.52, 0.54)):
        folder = tmp_path / "runs" / f"seed{seed}"
        folder.mkdir(parents=True)
        entry = {"seen_accuracy": [0.9, average], "average_incremental_accuracy": average}
        (folder / "metrics.json").write_text(json.dumps({"complete": True, "seed": seed,
                                                         "classifiers": {"nme": entry}}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/seed_spread.py"), f"a={tmp_path}/runs/seed*",
                          "--values", "b=51,52,53"], capture_output=True, text=True, check=True).stdout
    assert "after task 2:  50.0  52.0  54.0   mean  52.0 ±  2.0" in out
    assert "variance ratio a/b = 4.00 (std ratio 2.00), F(2, 2) two-sided p = 0.400" in out


def test_memory_breakdown_script_prints_each_step_and_the_run_peak(tmp_path):
    """benchmarks/memory_breakdown.py on a digits run: one line per start-up step (imports, setup) and per task,
    each RSS above the last import's, the run's peak never below what a task ended with, the run's own per-phase
    meter, and that the run did not import PyTorch's compiler stack; with ``--stock-optimizer`` that import is a
    line of its own."""
    config = tmp_path / "icarl.yaml"
    config.write_text("data: {name: digits}\nscenario: {classes_per_task: 2, class_order: sorted}\n"
                      "model: {name: mlp, options: {hidden: [16]}}\nmethod: {name: icarl, memory_size: 20}\n"
                      "train: {batch_size: 16, lr: 0.05, progress: false}\nseed: 0\n")
    def breakdown(*options: str) -> tuple[str, list[str]]:
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks/memory_breakdown.py"), "--config", str(config),
                              "--iterations", "3", "--tasks", "2", "--threads", "1", *options], capture_output=True,
                             text=True, check=True, cwd=tmp_path).stdout
        return out, [line for line in out.splitlines() if line.startswith(("import ", "Run.setup", "task "))]

    out, steps = breakdown()
    assert [s.split()[0] for s in steps] == ["import", "import", "Run.setup():", "task", "task"]
    assert "3 steps" in steps[3]
    rss = [float(s.split()[-2]) for s in steps[:3]]  # the start-up lines: RSS, then the change
    assert rss[0] > 50 and all(later >= rss[0] for later in rss[1:])  # torch alone is more than 50 MiB
    for task in steps[3:]:
        *_, after, _, peak = task.split()
        assert float(peak) >= float(after) > rss[0]
    assert "peak RSS MiB per phase (the run's own meter): data" in out and "train" in out.split("meter")[-1]
    assert "compiler stack (torch._dynamo) imported: no" in out
    out, steps = breakdown("--stock-optimizer")
    assert [s.split()[0] for s in steps] == ["import", "import", "import", "Run.setup():", "task", "task"]
    assert "torch._dynamo" in steps[2] and "compiler stack (torch._dynamo) imported: yes" in out


def test_gpu_checks_script_runs_every_step_and_records_each_exit(tmp_path):
    """benchmarks/gpu_checks.sh, the prepared run for a lent GPU, as a dry run on the CPU with the protocol shrunk
    to digits: the three protocol benches (fp32, fp32 deterministic, fp16) each leave a JSON with the precision
    they were asked for and exit 0, and the two-GPU step says why it was skipped."""
    shrink = " ".join([*TINY, "--set data.name=digits --set scenario.num_tasks=2 --set train.epochs=1",
                       "--set train.augment=none --set method.memory_size=20"])
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DEVICE": "cpu", "EXTRA": shrink, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "benchmarks/gpu_checks.sh")], cwd=ROOT, env=env, check=True, timeout=600,
                   capture_output=True)
    summary = (tmp_path / "out/summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["fp32", "fp32_deterministic", "fp16", "torchrun_nccl"]
    assert all(": exit 0," in line for line in summary[:3]), summary
    assert "skipped" in summary[3]
    for name, precision in (("fp32", "fp32"), ("fp32_deterministic", "fp32"), ("fp16", "fp16")):
        (result,) = json.loads((tmp_path / f"out/{name}.json").read_text())["end_to_end"]
        assert result["precision"] == precision and result["per_task"], name
