"""benchmarks/mammoth2020_si_replica.py, the plain second implementation of the DER paper's SI (Mammoth 7ab9db9) that
the README holds cilearn's Seq-MNIST SI row against: its end-of-task importance is Mammoth's rule by hand, its
network is Mammoth's Xavier MLP, and it trains and reports each task on digits."""

import math

import torch
from helpers import load_script


def test_the_replica_s_importance_is_mammoths_end_task_by_hand():
    """Ω += ω / ((θ − θ*)² + ξ), starting from nothing: two parameters, two tasks, ξ 0.5."""
    replica = load_script("benchmarks/mammoth2020_si_replica.py")
    checkpoint, now = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    first = replica.consolidate(None, torch.tensor([3.0, 2.0]), now, checkpoint, 0.5)
    assert first.tolist() == [3.0 / (1.0 + 0.5), 2.0 / (0.0 + 0.5)]
    second = replica.consolidate(first, torch.tensor([1.0, 1.0]), torch.tensor([0.0, 3.0]), now, 0.5)
    assert torch.allclose(second, torch.tensor([2.0 + 1.0 / 1.5, 4.0 + 1.0 / 4.5]), rtol=0, atol=1e-6)


def test_the_replica_s_network_is_mammoths_xavier_mlp():
    replica = load_script("benchmarks/mammoth2020_si_replica.py")
    torch.manual_seed(0)
    model = replica.xavier_mlp(784, 10)
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(784, 100), (100, 100), (100, 10)]
    for layer in layers:
        bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
        assert float(layer.weight.abs().max()) <= bound and float(layer.weight.abs().max()) > 0.9 * bound
        assert float(layer.bias.abs().max()) == 0.0


def test_the_replica_trains_on_digits_and_reports_each_task(capsys):
    replica = load_script("benchmarks/mammoth2020_si_replica.py")
    assert replica.main(["--dataset", "digits", "--seeds", "1", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    accuracies = [float(a) for a in lines[0].split(":")[1].split("->")[0].split()[1:]]
    assert lines[0].startswith("seed 1:") and len(accuracies) == 5
    assert accuracies[-1] > 50  # the last task is learnt (class-IL: the earlier ones mostly forgotten)
    assert lines[-1].startswith("task mean over seeds [1, 2]:")
