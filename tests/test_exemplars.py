"""The iCaRL study's exemplar proposals: collage geometry, the collage memory's budget and order,
DeepInversion's terms against their formulas, determinism, and the options a user sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import digits_config, make_run

from cilearn.cli import main
from cilearn.config import load_runs
from cilearn.errors import ConfigError
from cilearn.methods import method_options
from cilearn.methods.parts.exemplars import check_policy
from cilearn.methods.parts.exemplars.collage import (
    CollageBuilder,
    collages,
    collages_by_class,
    draw_collages,
    half_size,
    quadrants,
    tile,
)
from cilearn.methods.parts.exemplars.deepinversion import (
    BatchNormStatistics,
    DeepInversionBuilder,
    DeepInversionOptions,
    competition,
    interleave,
    js_divergence,
    synthesize,
    to_uint8,
    total_variation,
)
from cilearn.methods.parts.memory import KIND_CODES, ClassPool, herding
from cilearn.models import build_model


def noise_images(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Random images: every patch of every image is unique, so a patch tells which image it came from."""
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, channels)).astype(np.uint8)


def quarter(collage: np.ndarray, k: int) -> np.ndarray:
    h, w = collage.shape[0] // 2, collage.shape[1] // 2
    row, col = divmod(k, 2)
    return collage[row * h:(row + 1) * h, col * w:(col + 1) * w]


# --- collage geometry -------------------------------------------------------------------------------------
def test_half_size_is_the_rounded_mean_of_each_two_by_two_block():
    image = np.array([[0, 1, 10, 20],
                      [2, 2, 30, 41],
                      [255, 255, 7, 7],
                      [255, 254, 7, 8]], dtype=np.uint8)[None, :, :, None]
    # block means 1.25, 25.25, 254.75, 7.25 → rounded half up: 1, 25, 255, 7
    assert half_size(image)[0, :, :, 0].tolist() == [[1, 25], [255, 7]]
    tie = np.array([[2, 3], [2, 3]], dtype=np.uint8)[None, :, :, None]  # mean 2.5: rounds up to 3
    assert half_size(tie).item() == 3 and half_size(tie - np.uint8(1)).item() == 2  # 1.5 → 2
    images = noise_images(6)
    area = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).double(), scale_factor=0.5, mode="area")
    reference = torch.floor(area + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # area resize, half up
    assert np.array_equal(half_size(images), reference)


def test_tile_fills_the_quadrants_in_reading_order():
    patches = np.stack([np.full((2, 3, 1), k, dtype=np.uint8) for k in range(8)])
    tiled = tile(patches)
    assert tiled.shape == (2, 4, 6, 1)
    assert tiled[0, :, :, 0].tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1],
                                          [2, 2, 2, 3, 3, 3], [2, 2, 2, 3, 3, 3]]
    assert (tiled[1] >= 4).all()


def source_of(patch: np.ndarray, candidates: np.ndarray, variant: str) -> tuple[int, tuple[int, int]]:
    """The one candidate image (and offset) that produces ``patch`` under ``variant``, found by search."""
    h, w = patch.shape[:2]
    found = []
    for i, image in enumerate(candidates):
        if variant == "resized":
            offsets = [(-1, -1)] if np.array_equal(half_size(image[None])[0], patch) else []
        else:
            positions = [((image.shape[0] - h) // 2, (image.shape[1] - w) // 2)] if variant == "center_crop" else [
                (r, c) for r in range(image.shape[0] - h + 1) for c in range(image.shape[1] - w + 1)]
            offsets = [(r, c) for r, c in positions if np.array_equal(image[r:r + h, c:c + w], patch)]
        found += [(i, offset) for offset in offsets]
    assert len(found) == 1, f"{len(found)} candidates produce this quadrant"
    return found[0]


@pytest.mark.parametrize("variant", ["resized", "random_crop", "center_crop"])
def test_collage_quadrants_come_from_distinct_images_of_the_class_as_the_variant_says(variant):
    images = noise_images(30, size=16)  # one class's training images
    other = noise_images(10, size=16, seed=1)  # another class's: must never appear
    result, sources = draw_collages(images, 6, variant, torch.Generator().manual_seed(3))
    assert result.shape == (6, 16, 16, 3) and result.dtype == np.uint8
    used, offsets = [], []
    for c, collage in enumerate(result):
        for k in range(4):
            index, offset = source_of(quarter(collage, k), np.concatenate([images, other]), variant)
            assert index < len(images), "a quadrant comes from another class"
            assert index == sources[c, k]  # the reported source, in reading order
            used.append(index)
            offsets.append(offset)
    assert len(set(used)) == 24  # no image twice, within or across collages
    if variant == "center_crop":
        assert set(offsets) == {(4, 4)}
        assert np.array_equal(quarter(result[0], 0), images[sources[0, 0]][4:12, 4:12])
    if variant == "random_crop":  # inside the image, and not always the same place
        assert all(0 <= r <= 8 and 0 <= c <= 8 for r, c in offsets) and len(set(offsets)) > 5


def test_random_crop_offsets_cover_every_position_and_nothing_else():
    images = np.zeros((4000, 4, 4, 1), dtype=np.uint8)
    images[:, :, :, 0] = np.arange(16, dtype=np.uint8).reshape(4, 4)  # pixel value = its position
    patches = quadrants(images, "random_crop", torch.Generator().manual_seed(0))
    corners = {(int(p[0, 0, 0]) // 4, int(p[0, 0, 0]) % 4) for p in patches}
    assert corners == {(r, c) for r in range(3) for c in range(3)}  # rows and columns 0..H/2 inclusive


def test_fewer_than_four_m_images_gives_as_many_collages_as_they_allow():
    images = noise_images(11, size=8)
    result, sources = draw_collages(images, 5, "resized", torch.Generator().manual_seed(0))
    assert len(result) == 2 and len(set(sources.ravel().tolist())) == 8
    logged = []
    built = CollageBuilder("center_crop", seed=0, log=logged.append).build([ClassPool(7, images)], 5, None)
    assert len(built[0][0]) == 2 and built[0][1].tolist() == [KIND_CODES["collage"]] * 2
    assert len(logged) == 1 and "class 7 has 11 training images" in logged[0] and "keeps 2 collages" in logged[0]


def test_collages_by_class_groups_each_class_four_by_four():
    images = noise_images(11, size=8)
    labels = np.array([0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0])  # class 0: 7 samples (one collage), class 1: 4
    result, result_labels = collages_by_class(images, labels, "resized", torch.Generator())
    assert result_labels.tolist() == [0, 1]
    assert np.array_equal(result[0], collages(images[[0, 2, 3, 5]], "resized")[0])
    assert np.array_equal(result[1], collages(images[[1, 4, 6, 7]], "resized")[0])


def test_odd_sized_images_cannot_be_collaged():
    with pytest.raises(ConfigError, match="must be even; these images are 7×7"):
        check_policy("collage", (7, 7, 1), torch.nn.Linear(1, 1))
    check_policy("collage", (8, 8, 1), torch.nn.Linear(1, 1))


# --- collage exemplars in iCaRL's memory -------------------------------------------------------------------
def test_collage_memory_budget_order_and_sources_in_a_run(tmp_path, caplog):
    capacity = 40
    run = make_run(tmp_path, {"name": "icarl", "memory_size": capacity, "exemplars": "collage",
                              "collage": "center_crop"}, num_tasks=4)
    memory, previous = run.method.memory, {}
    for task in run.scenario:
        run.run_task(task)
        seen = task.seen_classes
        m = capacity // len(seen)
        assert len(memory) <= capacity and set(memory.labels.tolist()) == set(seen)
        assert all(len(memory.class_indices(c)) == m for c in seen)  # the budget counts collages
        assert (memory.kind == KIND_CODES["collage"]).all() and memory.images.dtype == np.uint8
        for c, kept in previous.items():  # reduction keeps the first collages, in order
            now = memory.images[memory.class_indices(c)]
            assert np.array_equal(now, kept[: len(now)])
        previous = {c: memory.images[memory.class_indices(c)].copy() for c in seen}
    for c in run.scenario[-1].seen_classes:  # every quadrant is the centre of a distinct image of class c
        source = next(t.train for t in run.scenario if c in t.new_classes)
        pool = source.images[source.labels == c]
        centres = {pool[i, 2:6, 2:6].tobytes(): i for i in range(len(pool))}
        used = [centres[quarter(image, k).tobytes()] for image in memory.images[memory.class_indices(c)]
                for k in range(4)]
        assert len(set(used)) == len(used)
    assert "fewer than" not in caplog.text  # 4·m ≤ ~180 digits per class: no shortfall


def test_first_task_shortfall_is_logged(tmp_path, caplog):
    run = make_run(tmp_path, {"name": "icarl", "memory_size": 400, "exemplars": "collage"}, num_tasks=2)
    with caplog.at_level("INFO", logger="cilearn.methods.parts.exemplars"):
        run.run_task(run.scenario[0])
    out = caplog.text
    counts = {c: len(run.method.memory.class_indices(c)) for c in (0, 1)}
    sizes = {c: int((run.scenario[0].train.labels == c).sum()) for c in (0, 1)}
    assert counts == {c: sizes[c] // 4 for c in (0, 1)}  # 200 wanted, as many as the images allow
    for c in (0, 1):
        assert f"class {c} has {sizes[c]} training images, fewer than the 4 x 200" in out


def test_replay_keeps_collages_of_the_selected_samples():
    """Experience replay with collages: the metric picks 4× the budget, each class's picks become collages."""
    from cilearn.augment import BatchAugment
    from cilearn.config import ScenarioConfig
    from cilearn.data import load_dataset
    from cilearn.engine.evaluate import Inference
    from cilearn.methods import MethodContext, method_class
    from cilearn.methods.replay import select, selection_metric
    from cilearn.scenarios import build_scenario

    cfg = ScenarioConfig(type="domain_incremental",
                         options={"stream": "rotated", "angles": [0, 90], "train_samples": 200})
    stream = build_scenario(cfg, load_dataset("digits"), 0)
    model = build_model("mlp", 1, 8, hidden=[16])
    model.add_classes(len(stream[0].new_classes))
    augment = BatchAugment(stream.mean, stream.std)
    context = MethodContext(scenario=stream, device=torch.device("cpu"), seed=0,
                            infer=Inference(model, augment, torch.device("cpu"), 512), augment=augment)
    options = method_options({"name": "replay", "per_experience": 10, "exemplars": "collage", "collage": "resized"})
    method = method_class("replay")(options, model, context)
    method.check(stream)
    task = stream[0]
    method.begin_task(task)
    method.end_task(task, task.train)
    _, logits = context.infer(task.train.images)
    values = selection_metric(logits, torch.as_tensor(task.train.labels), "error_l2").numpy()
    picked = select(values, 40, "error_l2", "hardest")  # 4 × 10 hardest samples
    expected, labels = collages_by_class(task.train.images[picked], task.train.labels[picked], "resized",
                                         torch.Generator())
    assert 0 < len(method.buffer_labels) <= 10
    assert np.array_equal(method.buffer_images, expected) and np.array_equal(method.buffer_labels, labels)
    assert (method.buffer_kind == KIND_CODES["collage"]).all()
    assert method.state_dict()["kind"].tolist() == method.buffer_kind.tolist()
    shown = method.exemplars()  # what the report's grids and t-SNE read
    assert set(shown["kind"].tolist()) == {"collage"} and np.array_equal(shown["images"], expected)


# --- DeepInversion ----------------------------------------------------------------------------------------
def test_js_divergence_and_competition_by_hand():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.9, 0.1], [0.0, 1.0]], dtype=torch.float64)
    m = (0.7, 0.3)
    by_hand = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + \
        0.5 * (0.9 * math.log(0.9 / m[0]) + 0.1 * math.log(0.1 / m[1]))
    js = js_divergence(p, q)
    assert js[0].item() == pytest.approx(by_hand, rel=1e-12)
    assert js[1].item() == pytest.approx(math.log(2), rel=1e-12)  # disjoint supports: the maximum, ln 2
    assert js_divergence(q, p).tolist() == pytest.approx(js.tolist())  # symmetric
    # competition = 1 − mean JS of softmax(logits / T)
    teacher, student = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 3.0, 0.0]])
    pt, ps = F.softmax(teacher / 3, 1), F.softmax(student / 3, 1)
    expected = 1 - 0.5 * sum(float(a * math.log(a / ((a + b) / 2)) + b * math.log(b / ((a + b) / 2)))
                             for a, b in zip(pt[0], ps[0]))
    assert competition(teacher, student, 3.0).item() == pytest.approx(expected, rel=1e-6)


def test_competition_exerts_no_force_when_teacher_and_student_agree():
    """1 − JS is at its maximum, 1, when the two agree (JS = 0), and its gradient w.r.t. the images is 0:
    the term only acts where the networks disagree."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    term = competition(net(x), net(x), 3.0)
    assert term.item() == pytest.approx(1.0, abs=1e-7)
    (gradient,) = torch.autograd.grad(term, [x])
    assert gradient.abs().max().item() < 1e-7
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    (gradient,) = torch.autograd.grad(competition(net(x), other(x), 3.0), [x])
    assert gradient.abs().max().item() > 1e-4


def test_total_variation_and_batchnorm_term_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 7.0]]]])
    # right: 1, 4; down: 3, 6; diagonal (x[1,0] − x[0,1]): 2; anti-diagonal (x[0,0] − x[1,1]): −7
    assert total_variation(x).item() == pytest.approx(math.hypot(1, 4) + math.hypot(3, 6) + 2 + 7)
    bn = torch.nn.BatchNorm2d(2).eval()
    bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    inputs = torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    with BatchNormStatistics(torch.nn.Sequential(bn)) as statistics:
        bn(inputs)
        value = statistics.pop().item()
    mean = inputs.mean((0, 2, 3))
    var = ((inputs - mean.view(1, 2, 1, 1)) ** 2).mean((0, 2, 3))  # biased, over batch and positions
    expected = (mean - bn.running_mean).norm() + (var - bn.running_var).norm()
    assert value == pytest.approx(expected.item(), rel=1e-5)


@pytest.fixture(scope="module")
def trained_net():
    """A small ResNet with BatchNorm trained briefly on digits (running statistics of real data)."""
    from cilearn.data import load_dataset

    torch.manual_seed(0)
    data = load_dataset("digits").train
    keep = data.labels < 3
    images = torch.from_numpy(data.images[keep]).permute(0, 3, 1, 2).float() / 255
    mean, std = images.mean().item(), images.std().item()
    x, y = (images - mean) / std, torch.from_numpy(data.labels[keep])
    net = build_model("resnet20", 1, 8, width=0.5)
    net.add_classes(3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    for _ in range(60):
        idx = torch.randint(0, len(y), (64,))
        loss = F.cross_entropy(net(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    return net, (mean,), (std,), data.images[keep], data.labels[keep]


def test_batchnorm_term_decreases_during_synthesis_and_images_stay_valid(trained_net):
    net, mean, std, _, _ = trained_net
    options = DeepInversionOptions(iterations=60, lr=0.1)
    low, high = (torch.tensor((v - mean[0]) / std[0]).view(1, 1, 1, 1) for v in (0.0, 1.0))
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(12, 1, 8, 8, generator=generator)
    targets = torch.arange(3).repeat(4)
    trace: list[dict] = []
    x = synthesize(net, start, targets, options, low, high, generator, trace=trace)
    features = [t["features"] for t in trace]
    assert len(trace) == 60 and all(math.isfinite(t["loss"]) for t in trace)
    assert np.mean(features[-5:]) < 0.5 * np.mean(features[:5])
    assert torch.isfinite(x).all() and (x >= low - 1e-6).all() and (x <= high + 1e-6).all()
    pixels = to_uint8(x, torch.tensor(mean).view(1, 1, 1, 1), torch.tensor(std).view(1, 1, 1, 1))
    assert pixels.dtype == np.uint8 and pixels.shape == (12, 8, 8, 1)


def test_cross_entropy_term_makes_images_of_the_target_classes(trained_net):
    """Without the BatchNorm term (and without jitter) the inputs become what the teacher calls their
    targets: the cross-entropy term pulls towards the right classes."""
    net, mean, std, _, _ = trained_net
    low, high = (torch.tensor((v - mean[0]) / std[0]).view(1, 1, 1, 1) for v in (0.0, 1.0))
    generator = torch.Generator().manual_seed(1)
    targets = torch.arange(3).repeat(4)
    trace: list[dict] = []
    x = synthesize(net, torch.randn(12, 1, 8, 8, generator=generator), targets,
                   DeepInversionOptions(iterations=40, alpha_f=0.0, jitter=0, lr=0.1), low, high, generator,
                   trace=trace)
    assert trace[-1]["cross_entropy"] < 0.1 < trace[0]["cross_entropy"]
    assert torch.equal(net(x).argmax(1), targets)


def builder(trained_net, **options) -> DeepInversionBuilder:
    net, mean, std, _, _ = trained_net
    features = lambda images: net.features(  # noqa: E731
        (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean[0]) / std[0]).detach()
    settings = DeepInversionOptions(**{"iterations": 8, **options})
    return DeepInversionBuilder(settings, net, mean, std, "cpu", seed=5, features=features, log=lambda _: None)


def pools_of(trained_net) -> list[ClassPool]:
    *_, images, labels = trained_net
    return [ClassPool(c, images[labels == c]) for c in range(3)]


def first_images(pool: ClassPool, m: int) -> np.ndarray:
    return np.arange(min(m, len(pool.images)))


@pytest.mark.parametrize("init", ["noise", "random_images", "herding"])
def test_synthesis_is_deterministic_and_leaves_the_global_random_state(trained_net, init):
    pools = pools_of(trained_net)
    state = torch.get_rng_state()
    first = builder(trained_net, init=init, adaptive=True, class_chunk=2).build(pools, 4, first_images, step=1)
    assert torch.equal(torch.get_rng_state(), state)
    again = builder(trained_net, init=init, adaptive=True, class_chunk=2).build(pools, 4, first_images, step=1)
    other = builder(trained_net, init=init, adaptive=True, class_chunk=2).build(pools, 4, first_images, step=2)
    for (a, kind), (b, _), (c, _) in zip(first, again, other):
        assert a.shape == (4, 8, 8, 1) and a.dtype == np.uint8 and (kind == KIND_CODES["synthetic"]).all()
        assert np.array_equal(a, b)
        if init == "noise":
            assert not np.array_equal(a, c)  # another task draws other noise


def test_image_starts_are_the_classes_images(trained_net):
    """With one iteration at a tiny learning rate the synthetic images are still their starting points."""
    pools = pools_of(trained_net)
    built = builder(trained_net, init="herding", iterations=1, lr=1e-6, jitter=0).build(pools, 3, first_images)
    for pool, (images, _) in zip(pools, built):
        expected = pool.images[herding(builder(trained_net).features(pool.images), 3).numpy()]
        assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1


def test_add_mode_alternates_real_and_synthetic_within_the_budget(trained_net):
    pools = pools_of(trained_net)
    built = builder(trained_net, mode="add").build(pools, 5, first_images)
    for pool, (images, kind) in zip(pools, built):
        assert len(images) == 5
        assert kind.tolist() == [0, 2, 0, 2, 0]  # real, synthetic, ... (3 real, 2 synthetic)
        assert np.array_equal(images[kind == 0], pool.images[:3])
    images, kind = interleave(np.zeros((1, 2, 2, 1), np.uint8), np.ones((3, 2, 2, 1), np.uint8))
    assert kind.tolist() == [0, 2, 2, 2]


SMALL_RESNET = {"name": "resnet20", "options": {"width": 0.5}}  # DeepInversion needs BatchNorm layers


def test_deepinversion_memory_in_a_run_respects_the_budget(tmp_path):
    run = make_run(tmp_path, {"name": "icarl", "memory_size": 12, "exemplars": "deepinversion",
                              "deepinversion": {"iterations": 3, "adaptive": True}}, num_tasks=3, model=SMALL_RESNET)
    memory = run.method.memory
    for task in run.scenario:
        run.run_task(task)
        seen = task.seen_classes
        assert len(memory) <= 12 and all(len(memory.class_indices(c)) == 12 // len(seen) for c in seen)
        assert (memory.kind == KIND_CODES["synthetic"]).all()
    assert len(run.method.memory.builder.timings) == 3


# --- options a user sets ----------------------------------------------------------------------------------
def test_options_parse_and_bad_values_are_clear_errors():
    options = method_options({"name": "icarl", "exemplars": "deepinversion",
                              "deepinversion": {"init": "herding", "adaptive": True, "iterations": 50}})
    assert options.deepinversion.init == "herding" and options.deepinversion.alpha_f == 5.0
    assert options.deepinversion.alpha_tv == 2.5e-5 and options.deepinversion.alpha_l2 == 1e-8
    assert options.deepinversion.alpha_c == 10.0 and DeepInversionOptions().iterations == 300
    # the DeepInversion authors' CIFAR README, "parameters from the paper": --di_lr=0.05 (0.1: the script default)
    assert options.deepinversion.lr == 0.05
    with pytest.raises(ConfigError, match=r"method.deepinversion: unknown key 'iteration'.*'iterations'"):
        method_options({"name": "icarl", "deepinversion": {"iteration": 3}})
    with pytest.raises(ConfigError, match="method.collage"):
        method_options({"name": "icarl", "exemplars": "collage", "collage": "crop"})
    with pytest.raises(ConfigError, match="method.exemplars"):
        method_options({"name": "replay", "exemplars": "deepinversion"})


def test_deepinversion_on_a_model_without_batchnorm_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "configs/icarl_digits.yaml", "--out", str(out), "--set", "method.exemplars=deepinversion"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: method.exemplars: deepinversion") and err.count("\n") == 1, err
    assert not out.exists()


def test_study_configs_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.name for p in root.glob("cifar100_icarl_collage_*.yaml")) + sorted(
        p.name for p in root.glob("cifar100_icarl_deepinversion_*.yaml"))
    assert len(names) == 9, names
    seen = set()
    for name in names:
        _, runs = load_runs(root / name)
        options = runs[0][1].method
        assert runs[0][1].model.name == "resnet32" and options.memory_size == 2000
        di = options.deepinversion
        seen.add((options.exemplars, options.collage if options.exemplars == "collage" else (di.init, di.adaptive)))
    assert len(seen) == 9
    runs = [run for name in ("collage", "deepinversion") for run in load_runs(root / f"cifar10jpeg_5x2_{name}.yaml")[1]]
    labels = {label.split("/")[0] for label, _ in runs}
    assert len(runs) == 30 and len(labels) == 10 and "icarl" in labels  # plain iCaRL beside every variant
    options = [cfg.method for _, cfg in runs]
    variants = {(o.exemplars, o.collage) if o.exemplars == "collage" else
                (o.exemplars, o.deepinversion.init, o.deepinversion.adaptive) for o in options}
    assert len(variants) == 10 and all(o.memory_size == 200 for o in options)


# --- resume: a run killed during synthesis ends with the same images ---------------------------------------
RESUME_CONFIG = digits_config(
    scenario={"num_tasks": 3}, model=SMALL_RESNET,
    method={"name": "icarl", "memory_size": 40, "exemplars": "deepinversion",
            "deepinversion": {"iterations": 30, "adaptive": True, "init": "random_images", "flip": True}},
    train={"epochs": 1, "scheduler": "constant", "num_threads": 1, "checkpoint_every": 1},
    output={"max_feature_samples": 30}, seed=4)


def run_outputs(run) -> dict:
    """What must not depend on interruptions: metrics (timings aside), predictions, every task's memory."""
    import json

    from cilearn.engine.checkpoints import load_checkpoint

    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("timing", "task_timing", "memory"):  # measurements of this process, not results
        metrics.pop(key)
    memories = {}
    for path in sorted((run / "checkpoints").glob("task_*.pt")):
        memory = load_checkpoint(path)["method"]["memory"]
        memories[path.name] = {k: v.numpy().tobytes() for k, v in memory.items()}
    predictions = {}
    for path in sorted((run / "predictions").glob("*.npz")):
        with np.load(path) as arrays:
            predictions[path.name] = {k: arrays[k].tobytes() for k in arrays.files}
    return {"metrics": json.dumps(metrics, sort_keys=True), "memories": memories, "predictions": predictions}


def test_killed_during_synthesis_resumes_to_identical_images(tmp_path, capsys):
    """SIGKILL while DeepInversion synthesizes task 2's exemplars; ``cilearn run --resume`` retrains from the
    last checkpoint and synthesizes again: the memory (every task's), predictions and metrics equal those of
    an uninterrupted run.  (No mid-synthesis checkpoint is needed: the synthesis is a pure function of the
    restored weights, the seed and the task.)"""
    import re
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from test_resume import ROOT, env

    config = tmp_path / "di.yaml"
    config.write_text(yaml.safe_dump(RESUME_CONFIG))
    reference = tmp_path / "reference"
    done = subprocess.run([sys.executable, "-m", "cilearn", "run", str(config), "--out", str(reference)],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seconds = [float(s) for s in re.findall(r"DeepInversion: \d+ images of 2 classes in ([\d.]+) s", done.stdout)]
    assert len(seconds) == 3, done.stdout
    for attempt, share in enumerate((0.4, 0.15, 0.05)):
        out = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "cilearn", "run", str(config), "--out", str(out)], cwd=ROOT,
                                env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "DeepInversion: synthesizing" in line and "(task 2," in line:
                break
        time.sleep(share * seconds[1])
        proc.send_signal(signal.SIGKILL)
        text = "".join(lines) + proc.communicate(timeout=60)[0]
        assert proc.returncode == -signal.SIGKILL, text
        finished = len(re.findall(r"DeepInversion: \d+ images of 2 classes in", text))
        if finished == 1:  # killed inside task 2's synthesis
            break
    else:
        pytest.fail(f"the kill never landed inside the synthesis: {text}")
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    resumed = capsys.readouterr().out
    assert "resuming from" in resumed and "task 2/3" in resumed, resumed
    assert "DeepInversion: synthesizing 20 images of 2 classes (task 2," in resumed, resumed
    got, want = run_outputs(out), run_outputs(reference)
    assert got["memories"].keys() == want["memories"].keys() == {"task_00.pt", "task_01.pt", "task_02.pt"}
    assert got == want


# --- the report shows collages and synthetic images ---------------------------------------------------------
def test_report_shows_collage_and_synthetic_exemplars(tmp_path):
    import yaml

    from cilearn.report.model import read_memory
    from cilearn.report.runs import discover_runs
    from cilearn.report.tsne import run_embedding

    raw = {**{k: v for k, v in RESUME_CONFIG.items() if k != "method"},
           "methods": [{"name": "icarl", "label": "collage", "memory_size": 24, "exemplars": "collage"},
                       {"name": "icarl", "label": "di_add", "memory_size": 24, "exemplars": "deepinversion",
                        "deepinversion": {"iterations": 3, "mode": "add"}}]}
    raw["scenario"] = {**raw["scenario"], "num_tasks": 2}
    raw["train"] = {**raw["train"], "epochs": 1, "checkpoint_every": 0}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["run", str(config), "--out", str(tmp_path / "exp")]) == 0
    expected = {"collage": ({"collage"}, "collages"),
                "di_add": ({"real", "synthetic"}, "real images and synthetic images")}
    for run in discover_runs([tmp_path / "exp"]):
        memory = read_memory(run.path, 1)
        kinds, description = expected[run.label]
        assert set(memory.kinds().tolist()) == kinds and memory.description() == description
        embedding = run_embedding(run, 1, [0, 1], 100)
        shown = int(np.isin(memory.labels, [0, 1]).sum())
        assert len(embedding.exemplar_kinds) == len(embedding.exemplar_labels) == shown
        assert set(embedding.exemplar_kinds.tolist()) == kinds
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "exp"), "--out", str(out), "--cam-images", "2"]) == 0
    for label in ("collage", "di_add"):
        assert (out / f"exemplars_{label}.png").stat().st_size > 0 and (out / f"tsne_{label}.png").is_file()
