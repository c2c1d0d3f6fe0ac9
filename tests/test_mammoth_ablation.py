"""benchmarks/mammoth2020_icarl.py: the two departures of the DER paper's iCaRL code that the README's ablation
measures, checked against their definitions on tiny cases (the script's patches run in a subprocess only)."""

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/mammoth2020_icarl.py"


def test_raw_herding_is_mammoths_cost_on_unnormalised_features():
    # f = (3, 0), (0, 1), (1, 1); mu = (4/3, 2/3).  k = 1: ||mu - f_i|| = sqrt(29)/3, sqrt(17)/3, sqrt(2)/3 -> 2.
    # k = 2, S = (1, 1): ||mu - (S + f_i)/2|| = sqrt(17)/6 (i = 0), sqrt(29)/6 (i = 1) -> 0; then 1.
    script = load_script("benchmarks/mammoth2020_icarl.py")
    features = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert script.raw_herding(features, 3).tolist() == [2, 0, 1]
    assert script.raw_herding(features, 1).tolist() == [2]
    means = script.raw_means(features, torch.tensor([0, 1, 1]), [1, 0])
    torch.testing.assert_close(means, torch.tensor([[0.5, 1.0], [3.0, 0.0]]))  # plain means, not normalised


def test_the_script_runs_icarl_with_truncated_replay_and_raw_features(tmp_path):
    config = tmp_path / "icarl.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "digits"}, "scenario": {"classes_per_task": 2, "num_tasks": 2},
        "model": {"name": "mlp", "options": {"hidden": [32]}}, "method": {"name": "icarl", "memory_size": 40},
        "train": {"epochs": 1, "batch_size": 16, "progress": False, "eval_every": 0, "precision": "fp32"},
        "output": {"save_checkpoints": False, "save_features": False}}))
    results = {}
    for name, flags in (("plain", []), ("both", ["--raw-features", "--truncated-replay"])):
        out = tmp_path / name
        done = subprocess.run([sys.executable, str(SCRIPT), *flags, "--config", str(config), "--seeds", "0",
                               "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        results[name] = json.loads(next(out.glob("**/metrics.json")).read_text())
    # the first task trains without a memory: the same network, the same head accuracy; the second differs
    plain, both = (results[k]["classifiers"]["head"]["accuracy_matrix"] for k in ("plain", "both"))
    assert plain[0] == both[0] and plain[1] != both[1]
