"""Tests for cilearn.models: shapes, parameter counts, head growth, channels_last, config errors."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn

from cilearn.errors import CilearnError, ConfigError
from cilearn.models import IncrementalHead, IncrementalNet, build_model, list_models

EXPECTED_FEATURE_DIM = {
    "resnet20": 64, "resnet32": 64, "resnet44": 64, "resnet56": 64, "resnet110": 64,
    "resnet47b": 256, "resnet110b": 256, "resnet164b": 256, "cifar_resnet": 64,
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "mlp": 400,
}  # fmt: skip

# Backbone parameter counts (option-B projection shortcuts add ~3k to the CIFAR nets).
EXPECTED_PARAMS = {
    "resnet20": 0.27e6,
    "resnet32": 464e3,
    "resnet110": 1.7e6,
    "resnet164b": 1.7e6,  # He et al. 2016b report 1.7M for ResNet-164
    "resnet18": 11.2e6,
    "resnet50": 23.5e6,
}

DEFAULT_OPTIONS = {"cifar_resnet": {"depth": 32}}


@functools.cache
def _model(name: str) -> IncrementalNet:
    """Each registered model is built once per test session (resnet50 init is not free)."""
    torch.manual_seed(0)
    return build_model(name, 3, 32, **DEFAULT_OPTIONS.get(name, {})).eval()


def _backbone_params(net: IncrementalNet) -> int:
    return sum(p.numel() for p in net.backbone.parameters())


# ----------------------------------------------------------------------------- registry


def test_list_models_names_and_descriptions() -> None:
    models = list_models()
    names = [n for n, _ in models]
    assert len(names) == len(set(names))
    assert set(EXPECTED_FEATURE_DIM) == set(names)
    for _, description in models:
        assert isinstance(description, str) and description and "\n" not in description


@pytest.mark.parametrize("name", list(EXPECTED_FEATURE_DIM))
def test_every_model_shapes_on_cifar_input(name: str) -> None:
    net = _model(name)
    assert isinstance(net, IncrementalNet) and isinstance(net.head, IncrementalHead)
    assert net.feature_dim == EXPECTED_FEATURE_DIM[name]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert net.features(x).shape == (2, net.feature_dim)
        assert net(x).shape == (2, 0)  # no classes yet
    if name in EXPECTED_PARAMS:
        assert _backbone_params(net) == pytest.approx(EXPECTED_PARAMS[name], rel=0.02)


@pytest.mark.parametrize("image_size", [28, 8])
def test_mlp_on_grey_images(image_size: int) -> None:
    net = build_model("mlp", 1, image_size)
    net.add_classes(2)
    x = torch.randn(5, 1, image_size, image_size)
    assert net(x).shape == (5, 2)
    assert net.feature_dim == 400
    first = net.backbone.layers[1]
    assert isinstance(first, nn.Linear) and first.in_features == image_size * image_size


def test_mlp_hidden_option() -> None:
    net = build_model("mlp", 1, 8, hidden=[32, 16, 8])
    assert net.feature_dim == 8
    assert net.features(torch.randn(3, 1, 8, 8)).shape == (3, 8)


def test_mlp_xavier_uniform_init_is_mammoths() -> None:
    """Mammoth's xavier (backbone/__init__.py): U(-a, a) with a = sqrt(3) * sqrt(2 / (fan_in + fan_out)), bias 0 —
    on the hidden layers and on the classifier outputs the network grows."""
    torch.manual_seed(0)
    net = build_model("mlp", 1, 28, hidden=[100, 100], init="xavier_uniform")
    net.add_classes(10)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 100), (100, 100), (100, 10)]
    for m in linears:
        a = math.sqrt(3.0) * math.sqrt(2.0 / (m.in_features + m.out_features))
        w = m.weight.abs().max().item()
        assert a * 0.95 < w <= a  # uniform over (-a, a): the largest of >= 1000 draws lies within 5 % of a
        assert torch.count_nonzero(m.bias) == 0
    # a full head built as 5 chunks of 2 outputs (one per task) takes the bound of Mammoth's one 100 -> 10 layer
    chunked = build_model("mlp", 1, 28, hidden=[100, 100], init="xavier_uniform")
    for _ in range(5):
        chunked.add_classes(2, layer_outputs=10)
    weights = torch.cat([chunk.weight for chunk in chunked.head.chunks])
    a = math.sqrt(3.0) * math.sqrt(2.0 / (100 + 10))
    assert a * 0.95 < weights.abs().max().item() <= a
    torch.manual_seed(0)
    default = build_model("mlp", 1, 28, hidden=[100, 100])
    default.add_classes(10)
    first = default.backbone.layers[1]
    assert torch.count_nonzero(first.bias) > 0  # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) biases too
    assert first.weight.abs().max().item() <= 1 / math.sqrt(784)
    with pytest.raises(ConfigError, match="options.init: unknown value 'kaiming'. Choose one of: default, xavier_"):
        build_model("mlp", 1, 28, init="kaiming")


def test_width_and_block_options() -> None:
    assert build_model("resnet20", 3, 32, width=0.5).feature_dim == 32
    assert build_model("resnet20", 3, 32, width=2).feature_dim == 128
    assert build_model("resnet18", 3, 32, width=0.25).feature_dim == 128
    # resnet56 = 9*6+2, so the bottleneck variant exists.
    assert build_model("resnet56", 3, 32, block="bottleneck").feature_dim == 256
    net = build_model("cifar_resnet", 3, 32, depth=29, block="bottleneck")
    assert net.feature_dim == 256
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in net.modules()) == 1 + 3 * 3


def test_cifar_resnet_depth_matches_layer_count() -> None:
    net = _model("resnet32")
    convs = [m for m in net.backbone.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 32  # 3x3 convs + the classifier layer
    shortcuts = [m for m in net.backbone.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(shortcuts) == 2  # option-B projections at the two stage transitions


def test_init_batchnorm_and_kaiming() -> None:
    net = _model("resnet20")
    for m in net.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = net.backbone.stages[2][0].conv2  # 64 -> 64, 3x3: fan_out = 64 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


def test_icarl_init_is_he_normal_fan_in_with_a_gain_1_head() -> None:
    """init: icarl (iCaRL's Theano code, Avalanche's initialize_icarl_net): every conv N(0, 2 / fan_in), the
    classifier N(0, 1 / fan_in) with zero biases.  The stem (3 -> 16 channels, fan_in 27 vs fan_out 144) and a
    stage's first conv (16 -> 32: fan_in 144 vs fan_out 288) are where fan_in and fan_out differ."""
    torch.manual_seed(0)
    net = build_model("resnet32", 3, 32, shortcut="A", last_relu=False, init="icarl")
    net.add_classes(10)
    net.add_classes(10)  # a second chunk: the same rule
    stem = net.backbone.stem[0]
    widening = net.backbone.stages[1][0].conv1
    assert stem.weight.std().item() == pytest.approx((2 / 27) ** 0.5, rel=0.1)
    assert widening.weight.std().item() == pytest.approx((2 / 144) ** 0.5, rel=0.1)
    head = torch.cat([chunk.weight for chunk in net.head.chunks])
    assert head.std().item() == pytest.approx((1 / 64) ** 0.5, rel=0.1)
    assert all(torch.count_nonzero(chunk.bias) == 0 for chunk in net.head.chunks)
    torch.manual_seed(0)
    default = build_model("resnet32", 3, 32, shortcut="A", last_relu=False)
    default.add_classes(10)
    assert default.backbone.stem[0].weight.std().item() == pytest.approx((2 / 144) ** 0.5, rel=0.1)  # fan_out
    assert torch.count_nonzero(default.head.chunks[0].bias) > 0  # nn.Linear's default
    assert "init" in _config_error("resnet32", 3, 32, init="he")


def test_reduced_resnet18_is_the_er_ace_authors_network() -> None:
    """The ER-ACE authors' reduced ResNet-18 (github.com/pclucas14/AML model.py, ``ResNet18(10, nf=20)``): a 3x3
    stride-1 stem of nf = 20 channels, no max-pool, 4 stages of two basic blocks with nf, 2nf, 4nf, 8nf channels,
    1x1 conv + BN projections where the shape changes, the average pool of the 4x4 map: 160 features.  Its
    parameters, counted by hand from that definition (a BatchNorm of c channels: 2c):
      stem      3·20·9 + 2·20                                                   =     580
      stage 1   2 × (20·20·9 + 40 + 20·20·9 + 40)                                =  14 560
      stage 2   (20·40·9 + 80 + 40·40·9 + 80 + 20·40 + 80) + (2·40·40·9 + 160)   =  51 600
      stage 3   (40·80·9 + 160 + 80·80·9 + 160 + 40·80 + 160) + (2·80·80·9 + 320)  = 205 600
      stage 4   (80·160·9 + 320 + 160·160·9 + 320 + 80·160 + 320) + (2·160·160·9 + 640) = 820 800
      total                                                                     = 1 093 140
    plus their ``distLinear`` over 10 classes (160·10, no bias; ER-ACE) or ``nn.Linear`` (160·10 + 10; ER):
    1 094 740 / 1 094 750 (the paper, Appendix A: "1.09M params for the CIFAR experiments").  ``init: pytorch``
    keeps PyTorch's own conv initialisation, U(±1/sqrt(fan_in)), as their model (no re-initialisation)."""
    torch.manual_seed(0)
    net = build_model("resnet18", 3, 32, width=20 / 64, init="pytorch")
    backbone = net.backbone
    assert [stage[0].conv1.out_channels for stage in backbone.stages] == [20, 40, 80, 160]
    assert net.feature_dim == 160
    stem = backbone.stem[0]
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((3, 3), (1, 1), 20)
    assert not any(isinstance(m, nn.MaxPool2d) for m in backbone.modules())
    assert _backbone_params(net) == 1_093_140
    _, maps = backbone.forward_stages(torch.zeros(2, 3, 32, 32))
    assert maps[-1].shape[-2:] == (4, 4)
    head = copy.deepcopy(net)
    head.add_classes(10)
    assert sum(p.numel() for p in head.parameters()) == 1_094_750  # nn.Linear over 10 classes
    from cilearn.methods.er_ace import ERACE, ERACEOptions
    cosine = ERACE.make_head(ERACEOptions(name="er_ace"), net.feature_dim)  # head: cosine
    cosine.grow(10)
    assert _backbone_params(net) + sum(p.numel() for p in cosine.parameters()) == 1_094_740
    # the convs as PyTorch made them: within ±1/sqrt(fan_in), std 1/sqrt(3·fan_in); torchvision's is He-normal
    widest = backbone.stages[3][1].conv2  # 160 -> 160, 3x3: fan_in = fan_out = 1440
    bound = 1 / math.sqrt(160 * 9)
    assert widest.weight.abs().max().item() <= bound
    assert widest.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    torch.manual_seed(0)
    he = build_model("resnet18", 3, 32, width=20 / 64).backbone.stages[3][1].conv2
    assert he.weight.std().item() == pytest.approx(math.sqrt(2 / 1440), rel=0.05)  # sqrt(6) times larger


@pytest.mark.parametrize("name,size", [("resnet20", 8), ("resnet20", 40), ("resnet18", 8), ("resnet47b", 12)])
def test_resnets_any_image_size_and_grey(name: str, size: int) -> None:
    net = build_model(name, 1, size).eval()
    with torch.no_grad():
        assert net.features(torch.randn(2, 1, size, size)).shape == (2, net.feature_dim)


# ----------------------------------------------------------------------------- head


def test_empty_head() -> None:
    head = IncrementalHead(7)
    assert head.num_classes == 0 and head.task_slices == []
    assert head(torch.randn(4, 7)).shape == (4, 0)


def test_head_growth_keeps_old_weights_and_logits() -> None:
    torch.manual_seed(0)
    net = build_model("resnet20", 3, 32).eval()
    net.add_classes(3)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        old_logits = net(x).clone()
    old_state = {k: v.clone() for k, v in net.head.chunks[0].state_dict().items()}

    net.add_classes(2)
    net.add_classes(4)
    assert net.num_classes == net.head.num_classes == 9
    assert net.head.task_slices == [slice(0, 3), slice(3, 5), slice(5, 9)]
    for k, v in net.head.chunks[0].state_dict().items():
        assert torch.equal(v, old_state[k])
    with torch.no_grad():
        new_logits = net(x)
    assert new_logits.shape == (4, 9)
    assert torch.equal(new_logits[:, :3], old_logits)
    # each chunk's logits sit in its slice
    feats = net.features(x).detach()
    for chunk, s in zip(net.head.chunks, net.head.task_slices):
        torch.testing.assert_close(new_logits[:, s], chunk(feats))


def test_grad_flows_to_new_chunk_and_backbone() -> None:
    net = build_model("mlp", 1, 8, hidden=[16])
    net.add_classes(2)
    net.add_classes(3)
    logits = net(torch.randn(6, 1, 8, 8))
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3, 4, 2])).backward()
    new = net.head.chunks[1]
    assert new.weight.grad is not None and new.weight.grad.abs().sum() > 0
    assert new.bias.grad is not None and new.bias.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.backbone.parameters())


def test_grow_follows_dtype_even_with_zero_chunks() -> None:
    head = IncrementalHead(5).to(torch.float64)
    head.grow(2)
    assert head.chunks[0].weight.dtype == torch.float64
    head.grow(1)
    assert head.chunks[1].weight.dtype == torch.float64
    assert head(torch.randn(3, 5, dtype=torch.float64)).dtype == torch.float64
    # the device/dtype anchor is not saved in checkpoints
    assert set(head.state_dict()) == {"chunks.0.weight", "chunks.0.bias", "chunks.1.weight", "chunks.1.bias"}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_grow_rejects_bad_counts(bad: object) -> None:
    with pytest.raises(ValueError):
        IncrementalHead(4).grow(bad)  # type: ignore[arg-type]


def test_state_dict_round_trip_after_growth() -> None:
    src = build_model("mlp", 1, 8, hidden=[16])
    src.add_classes(2)
    src.add_classes(2)
    dst = build_model("mlp", 1, 8, hidden=[16])
    dst.add_classes(2)
    dst.add_classes(2)
    dst.load_state_dict(src.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(src(x), dst(x))


# ----------------------------------------------------------------------------- channels_last


@pytest.mark.parametrize("name", ["resnet20", "resnet47b", "mlp"])
def test_channels_last_matches_default(name: str) -> None:
    torch.manual_seed(0)
    in_ch, size = (1, 8) if name == "mlp" else (3, 16)  # small images keep this fast on CPU
    net = build_model(name, in_ch, size)
    net.add_classes(5)
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x = torch.randn(3, in_ch, size, size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for train in (False, True):  # eval uses running stats, train uses batch stats
        net.train(train)
        net_cl.train(train)
        out, out_cl = net(x), net_cl(x_cl)
        torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)
    out_cl.sum().backward()  # backward through channels_last must work too


# ----------------------------------------------------------------------------- errors


def _config_error(*args: object, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        build_model(*args, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, CilearnError)
    return str(info.value)


def test_unknown_model_name_suggests() -> None:
    msg = _config_error("resnet33", 3, 32)
    assert "resnet33" in msg and "Did you mean" in msg
    assert "resnet32" in msg and "mlp" in msg  # the valid choices are listed
    assert "Did you mean 'resnet32'" in _config_error("ResNet32", 3, 32)


def test_unknown_option_named_with_suggestion() -> None:
    msg = _config_error("resnet32", 3, 32, widht=2)
    assert "'widht'" in msg and "Did you mean 'width'" in msg and "Valid keys" in msg
    msg = _config_error("resnet18", 3, 32, block="basic")  # ImageNet family fixes its block
    assert "'block'" in msg
    msg = _config_error("mlp", 1, 28, width=2)
    assert "hidden" in msg


def test_bad_depth_messages() -> None:
    msg = _config_error("cifar_resnet", 3, 32, depth=33)
    assert "6n+2" in msg and "32 or 38" in msg
    msg = _config_error("cifar_resnet", 3, 32, depth=50, block="bottleneck")
    assert "9n+2" in msg and "47 or 56" in msg
    assert "9n+2" in _config_error("resnet32", 3, 32, block="bottleneck")  # 30 is not a multiple of 9
    assert "6n+2" in _config_error("cifar_resnet", 3, 32, depth=2)
    assert "depth" in _config_error("cifar_resnet", 3, 32, depth="32")
    assert "depth" in _config_error("cifar_resnet", 3, 32)  # required


def test_bad_option_values() -> None:
    assert "Did you mean 'bottleneck'" in _config_error("cifar_resnet", 3, 32, depth=29, block="botleneck")
    assert "width" in _config_error("resnet20", 3, 32, width=0)
    assert "width" in _config_error("resnet20", 3, 32, width="two")
    assert "hidden" in _config_error("mlp", 1, 28, hidden=[])
    assert "hidden" in _config_error("mlp", 1, 28, hidden=400)
    assert "in_channels" in _config_error("resnet20", 2, 32)
    assert "in_channels" in _config_error("resnet20", 3.0, 32)
    assert "image_size" in _config_error("resnet20", 3, 32.0)


def test_image_too_small() -> None:
    msg = _config_error("resnet20", 3, 4)
    assert ">= 8" in msg and "4" in msg
    _config_error("resnet18", 3, 7)
    _config_error("mlp", 1, 0)
    assert build_model("mlp", 1, 1).feature_dim == 400


# ----------------------------------------------------------------------------- iCaRL's ResNet: option A, last_relu


def _resnet32_params_option_a() -> int:
    """ResNet-32 (n=5, 16/32/64 channels) without projection shortcuts, counted by hand: 3x3 convs
    without bias, two BatchNorm parameters (scale, shift) per channel."""
    conv = lambda cin, cout: cin * cout * 9  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    stem = conv(3, 16) + bn(16)
    stage1 = 5 * (2 * conv(16, 16) + 2 * bn(16))
    stage2 = conv(16, 32) + conv(32, 32) + 2 * bn(32) + 4 * (2 * conv(32, 32) + 2 * bn(32))
    stage3 = conv(32, 64) + conv(64, 64) + 2 * bn(64) + 4 * (2 * conv(64, 64) + 2 * bn(64))
    return stem + stage1 + stage2 + stage3


def test_option_a_has_no_shortcut_parameters() -> None:
    option_a = build_model("resnet32", 3, 32, shortcut="A")
    option_b = build_model("resnet32", 3, 32)  # the default
    assert _backbone_params(option_a) == _resnet32_params_option_a() == 463_504
    # option B adds two 1x1 conv + BN projections: 16->32 and 32->64 channels
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert _backbone_params(option_b) == _backbone_params(option_a) + projections


def test_option_a_shortcut_is_subsample_and_zero_channels() -> None:
    from cilearn.models.resnet import ZeroPadShortcut

    x = torch.arange(32, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = ZeroPadShortcut(2, 4, stride=2)(x)
    # channel 0 of x is 0..15 (rows of 4), channel 1 is 16..31; stride 2 keeps rows/cols 0 and 2;
    # the 2 new channels are zeros, one before and one after (iCaRL pads out//4 on each side).
    expected = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]],
                              [[0.0, 2.0], [8.0, 10.0]],
                              [[16.0, 18.0], [24.0, 26.0]],
                              [[0.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(out, expected)
    # channels_last input gives the same values
    torch.testing.assert_close(ZeroPadShortcut(2, 4, 2)(x.contiguous(memory_format=torch.channels_last)), expected)
    # 16 -> 32 channels as in ResNet-32: 8 zero channels before and 8 after the input's 16
    y = torch.randn(2, 16, 8, 8)
    padded = ZeroPadShortcut(16, 32, 2)(y)
    assert padded.shape == (2, 32, 4, 4)
    assert padded[:, :8].abs().sum() == 0 and padded[:, 24:].abs().sum() == 0
    torch.testing.assert_close(padded[:, 8:24], y[:, :, ::2, ::2])


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_last_relu_decides_feature_sign(shortcut: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    for last_relu in (True, False):
        torch.manual_seed(1)
        net = build_model("resnet20", 3, 16, shortcut=shortcut, last_relu=last_relu)
        for train in (True, False):
            net.train(train)
            with torch.no_grad():
                features = net.features(x)
            if last_relu:
                assert features.min() >= 0
            else:  # iCaRL's network: the pooled sum of the last block, signed
                assert (features < 0).any() and (features > 0).any()
    # only the network's very last block loses its ReLU
    net = build_model("resnet20", 3, 16, last_relu=False)
    flags = [block.final_relu for stage in net.backbone.stages for block in stage]
    assert flags == [True] * (len(flags) - 1) + [False]


def test_icarl_resnet_options_on_every_resnet() -> None:
    for name in ("resnet18", "resnet47b", "cifar_resnet"):
        extra = {"depth": 20} if name == "cifar_resnet" else {}
        net = build_model(name, 3, 8, shortcut="A", last_relu=False, **extra)
        assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (2, 2)
                       for m in net.backbone.modules())  # no strided 1x1 projection left
        with torch.no_grad():
            assert net.features(torch.randn(2, 3, 8, 8)).shape == (2, net.feature_dim)


def test_bad_shortcut_and_last_relu_values() -> None:
    msg = _config_error("resnet32", 3, 32, shortcut="C")
    assert "shortcut" in msg and "Choose one of: A, B" in msg
    assert "last_relu" in _config_error("resnet32", 3, 32, last_relu="no")
    assert "last_relu" in _config_error("resnet18", 3, 32, last_relu=0)
