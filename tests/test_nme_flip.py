"""iCaRL's class means on colour data average each exemplar's feature with its mirror image's (the Theano
code: D and D2, the features of the exemplars and of their horizontal flips, each L2-normalised; the class
mean is (D·α + D2·α) / 2, normalised again).  Checked by hand on a run's own memory and network, and the
default: on for colour images, off for grey ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import digits_config

from cilearn.config import parse_config
from cilearn.data import DatasetSplits, ImageData
from cilearn.engine.runner import Run


def colour_splits(seed: int = 0) -> DatasetSplits:
    """4 classes of 8×8 RGB images: a class colour plus noise, left and right halves different (so that an
    image and its mirror image give different features)."""
    rng = np.random.default_rng(seed)
    bases = np.zeros((4, 8, 8, 3))
    bases[:, :, :4] = rng.uniform(0, 255, (4, 1, 1, 3))  # left half: one colour
    bases[:, :, 4:] = rng.uniform(0, 255, (4, 1, 1, 3))  # right half: another

    def split(per_class):
        images, labels = [], []
        for c, base in enumerate(bases):
            noise = rng.normal(0, 20, (per_class, 8, 8, 3))
            images.append(np.clip(base + noise, 0, 255).astype(np.uint8))
            labels.append(np.full(per_class, c))
        return ImageData(np.concatenate(images), np.concatenate(labels).astype(np.int64),
                         [f"c{c}" for c in range(4)])

    return DatasetSplits(name="colour_test", display_name="Colour test", train=split(40), test=split(10))


def icarl_run(tmp_path, splits, **method) -> Run:
    """A run (not set up) of iCaRL with the NME classifier on ``splits``, an in-memory dataset."""
    cfg = parse_config(digits_config(data={"name": splits.name}, model={"options": {"hidden": [16]}},
                                     method={"name": "icarl", "memory_size": 8, "classifiers": ["nme"], **method},
                                     train={"epochs": 2, "batch_size": 16, "augment": "none", "eval_every": 0,
                                            "precision": "fp32"},  # compared
                                     output={"save_features": False, "save_checkpoints": False}, seed=0))
    return Run(cfg, tmp_path, data=splits)


def hand_means(run) -> torch.Tensor:
    """The original's class means, written out: per exemplar the normalised feature of the image and of its
    mirror image (flipped left-right), summed over the class's exemplars, halved, normalised."""
    memory, model = run.method.memory, run.model
    model.eval()
    images = torch.from_numpy(memory.images).permute(0, 3, 1, 2).contiguous()
    normalize = run.augment.normalize
    with torch.no_grad():
        d = model.features(normalize(images)).double()
        d2 = model.features(normalize(images.flip(3))).double()
    d = d / d.norm(dim=1, keepdim=True)
    d2 = d2 / d2.norm(dim=1, keepdim=True)
    means = []
    for c in memory.classes:
        alpha = torch.as_tensor(memory.labels == c, dtype=torch.float64)  # 1 for the class's exemplars
        mean = (d.T @ alpha + d2.T @ alpha) / 2
        means.append(mean / mean.norm())
    return torch.stack(means)


def test_colour_nme_means_average_the_mirror_images_by_hand(tmp_path):
    run = icarl_run(tmp_path / "run", colour_splits())
    run.execute()
    assert run.method.fitted.flip  # the default on colour images
    got = run.method.fitted.nme.means.double()
    want = hand_means(run)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # and the flip matters here: the means without it differ
    memory = run.method.memory
    with torch.no_grad():
        images = torch.from_numpy(memory.images).permute(0, 3, 1, 2).contiguous()
        plain = torch.nn.functional.normalize(run.model.features(run.augment.normalize(images)).double(), dim=1)
    unflipped = torch.stack([torch.nn.functional.normalize(plain[torch.as_tensor(memory.labels == c)].mean(0), dim=0)
                             for c in memory.classes])
    assert (unflipped - want).abs().max() > 1e-3


def test_flip_is_off_for_grey_images_and_can_be_forced(tmp_path):
    grey = colour_splits()
    grey = DatasetSplits(name="grey_test", display_name="Grey test",
                         train=ImageData(grey.train.images[..., :1], grey.train.labels, grey.train.class_names),
                         test=ImageData(grey.test.images[..., :1], grey.test.labels, grey.test.class_names))
    for run in (icarl_run(tmp_path / "grey", grey), icarl_run(tmp_path / "off", colour_splits(), nme_flip=False)):
        run.setup()
        assert not run.method.fitted.flip


@pytest.mark.parametrize("flip", [True, False])
def test_nme_predictions_follow_the_means(tmp_path, flip):
    """The NME classifier predicts the class whose mean is nearest the test image's normalised feature
    (the test image itself is not mirrored, as in the original)."""
    run = icarl_run(tmp_path / "run", colour_splits(), nme_flip=flip)
    run.execute()
    images = torch.from_numpy(colour_splits().test.images)
    with torch.no_grad():
        run.model.eval()
        features = run.model.features(run.augment.normalize(images.permute(0, 3, 1, 2).contiguous()))
    features = torch.nn.functional.normalize(features.double(), dim=1)
    means = run.method.fitted.nme.means.double()
    want = run.method.fitted.nme.classes.cpu()[(features @ means.T).argmax(1)]  # largest cosine = nearest
    got = run.method.fitted.nme(features.float())
    assert torch.equal(got.cpu(), want)
    assert (want == torch.as_tensor(colour_splits().test.labels)).float().mean() > 0.5  # not a degenerate case
