import numpy as np
import torch

from cilearn.augment import BatchAugment, to_tensor_images


def test_to_tensor_images_is_uint8_nchw():
    images = np.random.RandomState(0).randint(0, 256, (5, 6, 7, 3)).astype(np.uint8)
    tensor = to_tensor_images(images)
    assert tensor.dtype == torch.uint8 and tensor.shape == (5, 3, 6, 7)
    assert torch.equal(tensor[2, 1], torch.from_numpy(images[2, :, :, 1]))


def test_normalize_matches_formula():
    aug = BatchAugment(mean=(0.5, 0.25, 0.1), std=(0.2, 0.3, 0.4))
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    expected = (images.float() / 255 - torch.tensor([0.5, 0.25, 0.1]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    assert torch.allclose(aug.normalize(images), expected, atol=1e-5)


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    torch.manual_seed(0)
    aug = BatchAugment(mean=(0.0,), std=(1.0,), crop_padding=2)
    images = torch.randint(1, 256, (64, 1, 6, 6), dtype=torch.uint8)
    out = (aug(images) * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(padded[i, :, dy:dy + 6, dx:dx + 6], out[i])]
        assert matches, "every output must be one 6x6 window of the padded input"
        shifts.add(matches[0])
    assert len(shifts) > 5  # offsets are drawn per sample, not per batch


def test_flip_mirrors_about_half_the_batch():
    torch.manual_seed(0)
    aug = BatchAugment(mean=(0.0,), std=(1.0,), flip=True)
    images = torch.randint(0, 256, (400, 1, 5, 5), dtype=torch.uint8)
    out = (aug(images) * 255).round().to(torch.uint8)
    flipped = torch.tensor([torch.equal(o, i.flip(2)) and not torch.equal(o, i) for o, i in zip(out, images)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)])
    assert bool((flipped | same).all())
    assert 120 < int(flipped.sum()) < 280


def test_auto_mode_does_not_flip_grey_digits():
    grey = BatchAugment.from_mode("auto", (0.5,), (0.2,), channels=1)
    colour = BatchAugment.from_mode("auto", (0.5,) * 3, (0.2,) * 3, channels=3)
    assert (grey.crop_padding, grey.flip) == (0, False)
    assert (colour.crop_padding, colour.flip) == (4, True)


def test_channels_last_output():
    aug = BatchAugment(mean=(0.5,) * 3, std=(0.2,) * 3, crop_padding=4, flip=True, channels_last=True)
    out = aug(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))
    assert out.is_contiguous(memory_format=torch.channels_last)
