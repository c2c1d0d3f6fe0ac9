"""A tiny smoke of `cilearn bench`: it runs and writes every figure; timings are never asserted."""

import json
from pathlib import Path

from cilearn.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--config", str(ROOT / "configs/quickstart.yaml"), "--model", "mlp", "--image-size", "8",
                 "--channels", "1", "--methods", "finetune", "--steps", "2", "--json", str(out),
                 "--set", "train.epochs=1", "--set", "scenario.num_tasks=2"])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["bare_step_images_per_second"]) == {"default", "channels_last", "channels_last_with_teacher"}
    (result,) = report["end_to_end"]
    assert result["method"] == "finetune" and len(result["per_task"]) == 2
    assert result["train_images_per_second"] > 0 and result["peak_rss_mib"] > 0
    assert result["ratio_to_bare_channels_last"] > 0
    assert "÷ bare" in capsys.readouterr().out


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
    from cilearn.bench import project_icarl_cifar100

    # 70 epochs × (5000 images in task 1 + 9 tasks × (5000 new + 2000 exemplars)) = 4.76 M images
    projection = project_icarl_cifar100([{"method": "finetune", "train_images_per_second": 1.0},
                                         {"method": "icarl", "train_images_per_second": 4_760_000 / 3600}])
    assert projection["training_images"] == 4_760_000
    assert abs(projection["training_hours"] - 1.0) < 1e-9
    assert project_icarl_cifar100([{"method": "finetune", "train_images_per_second": 1.0}]) is None
