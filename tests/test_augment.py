import numpy as np
import pytest
import torch
import yaml
from helpers import digits_config

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


# --- train.augment's list of steps -----------------------------------------------------------------------
MEAN3, STD3 = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
EVERY_STEP = [{"crop": {"padding": 2}}, "flip", {"color_jitter": {"brightness": 0.4, "contrast": 0.4,
                                                                   "saturation": 0.4}},
              "randaugment", {"cutmix": {"alpha": 1.0, "p": 1.0}}]


def unnormalize(out: torch.Tensor, mean, std) -> torch.Tensor:
    return out * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def test_the_string_modes_are_the_lists_they_name():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    for mode, steps in (("crop_flip", ["crop", "flip"]), ("crop", [{"crop": {"padding": 4}}]), ("none", [])):
        torch.manual_seed(1)
        a = BatchAugment.from_mode(mode, MEAN3, STD3, channels=3)(images)
        torch.manual_seed(1)
        b = BatchAugment.from_mode(steps, MEAN3, STD3, channels=3)(images)
        assert torch.equal(a, b), mode


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("steps", [[s] for s in EVERY_STEP] + [EVERY_STEP], ids=lambda s: str(s)[:40])
def test_every_step_keeps_the_shape_and_the_pixel_range(steps, channels):
    mean, std = MEAN3[:channels], STD3[:channels]
    aug = BatchAugment.from_mode(steps, mean, std, channels=channels, channels_last=True)
    images = torch.randint(0, 256, (32, channels, 12, 12), dtype=torch.uint8)
    out = aug(images)
    out, mix = aug.cutmix(out, torch.arange(32))
    assert out.shape == (32, channels, 12, 12) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last) or channels == 1
    pixels = unnormalize(out, mean, std)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert (mix is not None) == (steps[-1] == EVERY_STEP[-1])


@pytest.mark.parametrize("steps", [[s] for s in EVERY_STEP[:-1]] + [EVERY_STEP], ids=lambda s: str(s)[:40])
def test_steps_are_deterministic_under_a_seed_and_random_across_seeds(steps):
    aug = BatchAugment.from_mode(steps, MEAN3, STD3, channels=3)
    images = torch.randint(0, 256, (16, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def draw(seed):
        torch.manual_seed(seed)
        out = aug(images)
        return aug.cutmix(out, torch.arange(16))[0]

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(aug(images, g1), aug(images, g2))  # an explicit generator is used for every draw


def test_color_jitter_applies_torchvisions_adjustments_with_per_sample_factors():
    """brightness: f·x; contrast: f·x + (1 - f)·mean(luma); saturation: f·x + (1 - f)·luma; clamped to [0, 1];
    each factor uniform in [max(0, 1 - v), 1 + v], drawn per sample in this order."""
    aug = BatchAugment.from_mode([{"color_jitter": {"brightness": 0.5, "contrast": 0.3, "saturation": 0.2}}],
                                 (0.0,) * 3, (1.0,) * 3, channels=3)
    images = torch.tensor([[[[10, 200]], [[30, 60]], [[250, 0]]],
                           [[[90, 90]], [[0, 255]], [[40, 80]]]], dtype=torch.uint8)  # 2 samples, 3×1×2
    out = aug(images, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    fb, fc, fs = (lo + (hi - lo) * torch.rand(2, generator=g) for lo, hi in ((0.5, 1.5), (0.7, 1.3), (0.8, 1.2)))
    x = images.double() / 255
    luma = lambda t: 0.2989 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3]  # noqa: E731
    x = (fb.double().view(2, 1, 1, 1) * x).clamp(0, 1)
    f = fc.double().view(2, 1, 1, 1)
    x = (f * x + (1 - f) * luma(x).mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
    f = fs.double().view(2, 1, 1, 1)
    x = (f * x + (1 - f) * luma(x)).clamp(0, 1)
    assert torch.allclose(out.double(), x, atol=1e-6)


def test_randaugment_ops_by_hand():
    from cilearn.augment import equalize, posterize, randaugment_op, solarize

    x = torch.tensor([[[[0.0, 0.2], [0.6, 1.0]]]])
    assert torch.allclose(solarize(x, 0.7), torch.tensor([[[[0.0, 0.2], [0.6, 0.0]]]]))
    # magnitude 9 of 30: posterize keeps 8 - round(9 / 7.5) = 7 bits; 0.6·255 = 153 = 0b10011001 -> 152
    assert (posterize(x, 7) * 255).round().tolist() == [[[[0.0, 50.0], [152.0, 254.0]]]]
    # equalize: levels 0, 51, 153, 255 once each: step = (4 - 1) // 255 = 0 -> unchanged (torchvision's rule)
    assert torch.equal(equalize(x), (x * 255).round() / 255)
    # two levels: 10 (3 pixels) and 20 (1): step = 3 // 255 = 0 too; a 16×16 image with 200 pixels at 10 and
    # 56 at 20: step = 200 // 255 = 0 ... use 510 pixels at 10 and 2 at 20: step 2, lut[10] = 0, lut[20] = 255
    y = torch.full((1, 1, 16, 32), 10 / 255)
    y[0, 0, 0, :2] = 20 / 255
    eq = (equalize(y) * 255).round()
    assert eq[0, 0, 0, :2].tolist() == [255.0, 255.0] and eq[0, 0, 1:].unique().tolist() == [0.0]
    # translate_x by +150/331·W·level pixels (sign +1): 4 px on a 32-wide ramp at magnitude 30 (level 1)... use
    # a rotation of 30° at magnitude 30 instead: the centre pixel of an odd image stays where it is
    z = torch.rand(1, 1, 5, 5)
    assert randaugment_op("rotate", z, 30, torch.ones(1))[0, 0, 2, 2] == z[0, 0, 2, 2]
    shifted = randaugment_op("translate_x", torch.arange(32.0).repeat(32, 1)[None, None] / 31, 2, torch.ones(1))
    # 150/331·32·2/30 = 0.967 px: each row moves one pixel right, the first column filled with black
    assert torch.allclose(shifted[0, 0, 0, 1:], torch.arange(31.0) / 31) and shifted[0, 0, 0, 0] == 0


def test_cutmix_pastes_one_box_from_a_permutation_and_mixes_the_labels_by_its_area():
    """GDumb's cutmix_data: λ ~ Beta(α, α), box of sides int(H·sqrt(1 - λ)), int(W·sqrt(1 - λ)) around a
    uniform centre, clipped; inputs[:, :, box] = inputs[perm, :, box]; λ = 1 - box area / (H·W)."""
    aug = BatchAugment.from_mode([{"cutmix": {"alpha": 1.0, "p": 1.0}}], (0.0,), (1.0,), channels=1)
    x = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 8, 8).contiguous()  # sample i is all i
    labels = torch.tensor([10, 11, 12, 13, 14, 15])
    for seed in range(20):
        mixed, mix = aug.cutmix(x, labels, torch.Generator().manual_seed(seed))
        perm = mix.labels - 10
        changed = mixed != x
        for i in range(6):
            inside = mixed[i, 0] == perm[i]
            assert torch.equal(mixed[i, 0][~inside], x[i, 0][~inside])
        box = (mixed[:, 0] == perm.view(6, 1, 1).float()) & (perm != torch.arange(6)).view(6, 1, 1)
        rows, cols = box.any(0).any(1).nonzero(), box.any(0).any(0).nonzero()
        area = (rows.numel() and (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)) or 0
        if changed.any():
            assert mix.lam == pytest.approx(1 - float(area) / 64)
        assert torch.equal(x, torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 8, 8))  # the input is not changed
    never = BatchAugment.from_mode([{"cutmix": {"p": 0.0}}], (0.0,), (1.0,), channels=1)
    assert never.cutmix(x, labels) == (x, None)


def test_beta_sampler_matches_the_distribution():
    from cilearn.augment import beta_sample

    g = torch.Generator().manual_seed(0)
    uniform = np.array([beta_sample(1.0, g, "cpu") for _ in range(4000)])  # Beta(1, 1) = U(0, 1)
    assert abs(uniform.mean() - 0.5) < 0.02 and abs((uniform < 0.25).mean() - 0.25) < 0.03
    peaked = np.array([beta_sample(0.2, g, "cpu") for _ in range(4000)])  # var α²/((2α)²(2α+1)) = 1/(4·1.4)
    assert abs(peaked.var() - 1 / 5.6) < 0.015


@pytest.mark.parametrize("spec, message", [
    (["crop", "flipp"], r"train.augment\[1\]: unknown augmentation step 'flipp'.*'flip'"),
    ([{"crop": {"pading": 4}}], r"train.augment\[0\].crop: unknown key 'pading'.*'padding'"),
    ([{"cutmix": {"p": 2}}], r"train.augment\[0\].cutmix.p: 2.0 is above the maximum 1"),
    (["cutmix", "flip"], "cutmix mixes the labels and must be the last step"),
    (["flip", "flip"], "names a step twice"),
    ([["crop"]], r"train.augment\[0\]: expected a step name"),
    ("crop_flipp", "train.augment: expected 'auto' or 'none'.* got 'crop_flipp'"),
])
def test_bad_augment_lists_are_clear_config_errors(spec, message):
    from cilearn.config import parse_config
    from cilearn.errors import ConfigError

    raw = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2}, "model": {"name": "mlp"},
           "method": {"name": "finetune"}, "train": {"augment": spec}}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_the_schema_checks_the_list_form():
    jsonschema = pytest.importorskip("jsonschema")
    from cilearn.config import json_schema

    validator = jsonschema.Draft202012Validator(json_schema())
    base = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2}, "model": {"name": "mlp"},
            "method": "finetune"}
    assert not list(validator.iter_errors({**base, "train": {"augment": EVERY_STEP}}))
    assert not list(validator.iter_errors({**base, "train": {"augment": "crop_flip"}}))
    for bad in (["flipp"], [{"crop": {"pading": 1}}], [{"cutmix": {"p": 1.5}}], "crop_flipp"):
        assert list(validator.iter_errors({**base, "train": {"augment": bad}})), bad


def digits_run(tmp_path, method: dict, augment, **train):
    from cilearn.config import parse_config
    from cilearn.engine.runner import Run

    raw = digits_config(scenario={"num_tasks": 2}, model={"options": {"hidden": [16]}}, method=method,
                        train={"epochs": 1, "batch_size": 16, "scheduler": "constant", "eval_every": 0,
                               "augment": augment, "precision": "fp32", **train},
                        output={"save_checkpoints": False, "save_features": False}, seed=0)
    return Run(parse_config(raw), tmp_path)


@pytest.mark.parametrize("method", [{"name": "lwf"}, {"name": "er"}, {"name": "icarl", "memory_size": 20}])
def test_cutmix_is_refused_where_the_loss_is_not_the_batchs_classification_loss(tmp_path, method):
    from cilearn.errors import ConfigError

    with pytest.raises(ConfigError, match=f"cutmix .* method {method['name']} has other terms"):
        digits_run(tmp_path, method, ["cutmix"]).setup()


def test_the_loop_trains_on_the_lambda_weighted_cross_entropies_of_both_labels(tmp_path):
    """λ·CE(y) + (1 - λ)·CE(y_perm) for every mixed batch (p = 1: every batch)."""
    import torch.nn.functional as F

    run = digits_run(tmp_path, {"name": "finetune"}, [{"cutmix": {"p": 1.0}}], batch_size=400)
    run.setup()
    task = run.scenario[0]
    run.method.grow_head(task)
    run.method.begin_task(task)
    run.trainer.start(run.method)
    seen = []
    original = run.method.loss

    def loss(out, batch):
        value = original(out, batch)
        seen.append((out.logits.detach(), batch.labels, batch.mix, value.item()))
        return value

    run.method.loss = loss
    results = []
    run.trainer.fit(run.model, run.method, task.train, on_epoch_end=results.append)
    (logits, labels, mix, first), (_, other, _, second) = seen  # one batch (400 > the task's samples)
    assert torch.equal(other, mix.labels) and not torch.equal(labels, mix.labels)
    assert first == pytest.approx(F.cross_entropy(logits[:, :2], labels).item(), rel=1e-5)
    assert second == pytest.approx(F.cross_entropy(logits[:, :2], mix.labels).item(), rel=1e-5)
    assert results[0].train_loss == pytest.approx(mix.lam * first + (1 - mix.lam) * second, rel=1e-5)


def test_a_run_with_every_step_resumes_to_the_same_numbers(tmp_path):
    """Stopped after its first task and resumed: the same metrics and predictions as an uninterrupted run
    (the augmentations draw from torch's global generator, which checkpoints restore)."""
    import json
    import shutil

    from cilearn.cli import main

    config = tmp_path / "joint.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "digits"}, "scenario": {"classes_per_task": 2, "class_order": "sorted", "num_tasks": 3},
        "model": {"name": "mlp", "options": {"hidden": [16]}}, "method": {"name": "joint"},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "scheduler": "constant", "progress": False,
                  "eval_every": 0, "num_threads": 1, "precision": "fp32",
                  "augment": [{"crop": {"padding": 1}}, "flip", {"color_jitter": {"brightness": 0.3}}, "randaugment",
                              {"cutmix": {"p": 0.5}}]},
        "output": {"max_feature_samples": 20}, "seed": 1}))
    reference = tmp_path / "reference"
    assert main(["run", str(config), "--out", str(reference)]) == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    for path in (resumed / "checkpoints").glob("task_*.pt"):
        if int(path.stem[5:]) >= 1:
            path.unlink()
    metrics = json.loads((resumed / "metrics.json").read_text())
    (resumed / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))
    assert main(["run", "--resume", str(resumed)]) == 0

    def numbers(run):
        m = json.loads((run / "metrics.json").read_text())
        preds = {}
        for path in sorted((run / "predictions").glob("*.npz")):
            with np.load(path) as arrays:
                preds[path.name] = {k: arrays[k].tolist() for k in arrays.files}
        return m["accuracy_matrix"], m["last_accuracy"], preds

    assert numbers(resumed) == numbers(reference)
    no_cutmix = tmp_path / "plain"
    assert main(["run", str(config), "--out", str(no_cutmix), "--set", "train.augment=none"]) == 0
    assert numbers(no_cutmix)[0] != numbers(reference)[0]  # the steps did change training
