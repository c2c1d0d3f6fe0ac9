"""benchmarks/vandeven2019_lwf_replica.py, the plain second implementation of van de Ven & Tolias's LwF that the
README holds cilearn's ``lwf`` entry against: its distillation term is cilearn's ``distillation_outputs: seen``
(and ``old``) on the same numbers, and it trains and reports on digits."""

import math

import torch
from helpers import load_script, make_run


def test_the_replica_s_distillation_is_cilearn_s(tmp_path):
    replica = load_script("benchmarks/vandeven2019_lwf_replica.py")
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    teacher = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([4, 5, 4, 4, 5, 5, 4])
    for outputs, pad in (("seen", True), ("old", False)):
        method = {"name": "lwf", "classification_outputs": "all", "distillation_loss": "kd", "temperature": 2.0,
                  "kd_t2_scaling": True, "balance": "classes", "distillation_outputs": outputs}
        objective = make_run(tmp_path / outputs, method, num_tasks=5).method.objective
        cilearn_loss = objective(logits, labels, teacher, n_seen=6)
        theirs = torch.nn.functional.cross_entropy(logits, labels) / 3 + \
            (1 - 1 / 3) * replica.distill(logits, teacher, 2.0, pad)
        assert abs(float(cilearn_loss) - float(theirs)) < 1e-12, outputs


def test_the_replica_trains_on_digits_and_reports_each_task(capsys):
    replica = load_script("benchmarks/vandeven2019_lwf_replica.py")
    assert replica.main(["--dataset", "digits", "--iterations", "20", "--seeds", "1", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("seed 1:") and len(lines[0].split(":")[1].split("task mean")[0].split()) == 5
    assert lines[-1].startswith("task mean over seeds [1, 2]:")


def test_the_replica_s_domain_il_shares_two_outputs_across_tasks(capsys):
    """--scenario domain: every task's test digits are scored on the same two outputs (is it the first or the
    second digit of its task?), so each task's accuracy is a 2-way one: above 0 for every task after training."""
    replica = load_script("benchmarks/vandeven2019_lwf_replica.py")
    assert replica.main(["--dataset", "digits", "--iterations", "30", "--seeds", "1", "--scenario", "domain"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[0]
    accuracies = [float(a) for a in line.split(":")[1].split("task mean")[0].split()]
    assert len(accuracies) == 5 and all(0 < a <= 100 for a in accuracies)
    assert min(accuracies) > 20  # a 2-way choice: no task at class-IL's 0 % for digits the last model never outputs


def test_the_replica_s_domain_il_distillation_is_their_kd_on_the_two_shared_outputs():
    """Domain-IL: student and teacher share the same two outputs, so nothing is padded; their loss_fn_kd is
    −Σ_c softmax(old/T)_c · log_softmax(new/T)_c, batch mean, × T².  One sample, T = 2, by hand."""
    replica = load_script("benchmarks/vandeven2019_lwf_replica.py")
    new, old = torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    q1 = math.exp(0.0) / (math.exp(0.0) + math.exp(1.0))  # teacher softmax at T = 2: logits 0, 1
    z = math.log(math.exp(0.5) + math.exp(-0.5))  # student log-partition at T = 2: logits 0.5, -0.5
    by_hand = -(q1 * (0.5 - z) + (1 - q1) * (-0.5 - z)) * 4
    assert abs(float(replica.distill(new, old, 2.0, True)) - by_hand) < 1e-12
