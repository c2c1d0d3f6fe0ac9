"""benchmarks/vandeven2019_dgr_replica.py, the plain second implementation of van de Ven & Tolias's DGR that the
README holds cilearn's ``dgr`` entries against: its generator is cilearn's VAE on the same weights and noise (their
BCE on the sigmoid against cilearn's on the logits), its replay losses are the ones tested by hand for cilearn's
``dgr``, and it trains and reports on digits."""

import pytest
import torch
import torch.nn.functional as F
from helpers import load_script

from cilearn.models.vae import VAE


def test_the_replica_s_generator_is_cilearn_s_vae_on_the_same_weights_and_noise():
    replica = load_script("benchmarks/vandeven2019_dgr_replica.py")
    torch.manual_seed(0)
    ours = VAE((1, 2, 3), hidden=[5, 5], z_dim=3)
    theirs = replica.Generator(6, hidden=5, z_dim=3)
    pairs = [(ours.encoder[1], theirs.encoder[0]), (ours.encoder[3], theirs.encoder[2]),
             (ours.to_mean, theirs.to_mean), (ours.to_logvar, theirs.to_logvar),
             (ours.decoder[0], theirs.decoder[0]), (ours.decoder[2], theirs.decoder[2]),
             (ours.decoder[4], theirs.decoder[4])]
    with torch.no_grad():
        for mine, other in pairs:
            other.weight.copy_(mine.weight)
            if mine.bias is not None:
                other.bias.copy_(mine.bias)
    images = torch.rand(4, 1, 2, 3, generator=torch.Generator().manual_seed(3))
    expected = ours.loss(images, torch.Generator().manual_seed(11))
    torch.manual_seed(11)  # the replica draws its noise from the global generator, as their code
    assert theirs.loss(images.reshape(4, 6)).item() == pytest.approx(expected.item(), rel=1e-6)
    torch.manual_seed(5)
    assert torch.allclose(theirs.sample(7), ours.sample(7, torch.Generator().manual_seed(5)).reshape(7, 6))


def test_the_replica_s_replay_losses_are_their_hard_and_distilled_targets():
    """DGR: CE with the old scores' argmax; DGR+distill: T²·KD against the old softmax padded with zeros (T 2)."""
    replica = load_script("benchmarks/vandeven2019_dgr_replica.py")
    gen = torch.Generator().manual_seed(4)
    scores, old = torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(5, 2, generator=gen,
                                                                                     dtype=torch.float64)
    assert replica.replay_loss(scores, old, False, 2.0).item() == pytest.approx(
        F.cross_entropy(scores, old.argmax(1)).item(), rel=1e-12)
    q = torch.cat([F.softmax(old / 2, 1), torch.zeros(5, 2, dtype=torch.float64)], 1)
    by_hand = -(q * F.log_softmax(scores / 2, 1)).sum(1).mean() * 4
    assert replica.replay_loss(scores, old, True, 2.0).item() == pytest.approx(by_hand.item(), rel=1e-12)


@pytest.mark.parametrize("distill", [False, True])
def test_the_replica_trains_on_digits_and_reports_each_task(capsys, distill):
    replica = load_script("benchmarks/vandeven2019_dgr_replica.py")
    argv = ["--dataset", "digits", "--iterations", "20", "--seeds", "1", "2"] + (["--distill"] if distill else [])
    assert replica.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    accuracies = [float(a) for a in lines[0].split(":")[1].split("task mean")[0].split()]
    assert lines[0].startswith("seed 1:") and len(accuracies) == 5 and accuracies[-1] > 0
    assert lines[-1].startswith("task mean over seeds [1, 2]:")
