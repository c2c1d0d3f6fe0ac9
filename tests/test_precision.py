"""train.precision: fp32 by default on every machine; bf16 autocast on request, and ``auto`` (bf16 where the
device computes it natively, fp32 otherwise) decided in one place, runtime.resolve_precision.

The suite runs on CPUs with and without bf16 instructions: the hardware check is injected here (both answers
on any CPU), and bf16 is forced where it is tested (emulated where the CPU lacks it: slow but exact in what
it computes). Speed is measured by `cilearn bench`."""

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import make_run

from cilearn import runtime
from cilearn.augment import BatchAugment
from cilearn.config import TrainConfig, parse_config
from cilearn.data import ImageData
from cilearn.engine.evaluate import Inference
from cilearn.engine.runner import Run
from cilearn.engine.train import Trainer
from cilearn.methods import Method, MethodContext, MethodOptions
from cilearn.models import build_model

CPU = torch.device("cpu")


def test_auto_picks_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512f"})
    with caplog.at_level("INFO", logger="cilearn"):
        precision, note = runtime.resolve_precision("auto", CPU)
    assert precision == "fp32" and "avx512_bf16" in note
    assert len([r for r in caplog.records if "fp32" in r.getMessage()]) == 1  # the one-line note
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert runtime.resolve_precision("auto", CPU)[0] == "bf16"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    assert runtime.resolve_precision("auto", CPU)[0] == "bf16"
    assert runtime.resolve_precision("fp32", CPU)[0] == "fp32"


def native(answer: bool):
    """An injected hardware check: this device does (or does not) compute bf16 natively."""
    return lambda device: (answer, f"test: native bf16 {answer}")


def test_the_detection_is_injectable_either_way_on_any_cpu():
    assert runtime.resolve_precision("auto", CPU, detect=native(True)) == ("bf16", "auto: bf16 (test: native bf16 "
                                                                                   "True)")
    assert runtime.resolve_precision("auto", CPU, detect=native(False))[0] == "fp32"
    assert runtime.resolve_precision("fp32", CPU, detect=native(True))[0] == "fp32"  # fp32 never asks
    assert runtime.resolve_precision("bf16", CPU, detect=native(False))[0] == "bf16"
    assert runtime.resolve_precision("fp16", CPU, detect=native(True))[0] == "fp16"  # asked for, never automatic
    with pytest.raises(runtime.ConfigError, match="fp8"):
        runtime.resolve_precision("fp8", CPU)
    with pytest.raises(runtime.ConfigError, match="train.inference_precision"):  # fp16 trains only
        runtime.resolve_precision("fp16", CPU, setting="train.inference_precision")


def test_the_default_is_fp32_even_where_the_hardware_has_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", native(True))  # as on a CPU with AVX512-BF16 or an A100
    assert TrainConfig().precision == "fp32"
    run = make_run(tmp_path, {"name": "finetune"}, num_tasks=1)
    assert run.precision == "fp32" and run.trainer.precision == "fp32" and run.inference.precision == "fp32"


def test_a_trainer_refuses_an_unresolved_precision():
    from cilearn.errors import ConfigError
    with pytest.raises(ConfigError, match="resolve_precision"):
        Trainer(TrainConfig(precision="auto"), CPU, BatchAugment((0.5,), (0.25,)))
    assert Trainer(TrainConfig(precision="auto"), CPU, BatchAugment((0.5,), (0.25,)), precision="bf16").precision \
        == "bf16"


def test_explicit_bf16_is_honoured_with_a_warning_where_it_is_emulated(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set())
    with caplog.at_level("WARNING", logger="cilearn"):
        assert runtime.resolve_precision("bf16", CPU)[0] == "bf16"
    assert any("slower than fp32" in r.getMessage() for r in caplog.records)


class _Spy(Method):
    """Fine-tuning that records the dtypes the loop hands to its loss."""

    def __init__(self, *args):
        super().__init__(*args)
        self.loss_dtypes = set()

    def loss(self, out, batch):
        self.loss_dtypes.add((out.logits.dtype, out.features.dtype))
        return super().loss(out, batch)


def _train_tiny_resnet(precision: str, samples: int = 64):
    torch.manual_seed(0)
    model = build_model("resnet20", 3, 8)
    model.add_classes(4)
    images = np.random.RandomState(0).randint(0, 256, (samples, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(samples) % 4
    data = ImageData(images, labels, ["a", "b", "c", "d"])
    augment = BatchAugment((0.5,) * 3, (0.25,) * 3)
    context = MethodContext(scenario=None, device=CPU, seed=0, infer=None, augment=augment)
    method = _Spy(MethodOptions(name="finetune"), model, context)
    stem_out = []
    model.backbone.stem[0].register_forward_hook(lambda m, i, o: stem_out.append(o.detach().clone()))
    cfg = TrainConfig(epochs=1, batch_size=16, progress=False, precision=precision, channels_last=False)
    trainer = Trainer(cfg, CPU, augment)
    trainer.start(method)
    trainer.fit(model, method, data)
    return model, method, stem_out


def test_bf16_training_runs_the_network_in_bf16_and_keeps_losses_and_batchnorm_in_fp32():
    model, method, stem_out = _train_tiny_resnet("bf16", samples=16)  # one step
    assert [x.dtype for x in stem_out] == [torch.bfloat16]  # the autocast reached the convolutions
    assert method.loss_dtypes == {(torch.float32, torch.float32)}  # the losses read fp32
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bn.running_mean.dtype == torch.float32 and bn.running_var.dtype == torch.float32 for bn in bns)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    # The stem's BatchNorm saw the bf16 convolution output; its statistics are that tensor's fp32 mean and
    # variance (momentum 0.1 from 0 and 1): accumulated in bf16 they would be off by ~1e-3.
    x = stem_out[0].float()
    stem_bn = model.backbone.stem[1]
    torch.testing.assert_close(stem_bn.running_mean, 0.1 * x.mean((0, 2, 3)), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(stem_bn.running_var, 0.9 + 0.1 * x.var((0, 2, 3)), atol=2e-6, rtol=1e-5)
    _, _, stem32 = _train_tiny_resnet("fp32", samples=16)
    assert [x.dtype for x in stem32] == [torch.float32]


def test_bf16_features_give_the_same_nearest_mean_predictions_as_fp32(tmp_path):
    """Reduced precision where it does not change the result: iCaRL's NME predictions on the test set
    from bf16 features agree with fp32 ones (a trained digits model)."""
    run = make_run(tmp_path, {"name": "icarl", "memory_size": 100}, num_tasks=2, epochs=2)
    run.execute()
    nme = run.method.fitted.nme
    test = np.concatenate([t.test.images for t in run.scenario[:2]])
    fp32 = Inference(run.model, run.augment, CPU, 256, "fp32")(test)[0]
    bf16 = Inference(run.model, run.augment, CPU, 256, "bf16")(test)[0]
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)  # computed in bf16, returned fp32
    agreement = (nme(fp32) == nme(bf16)).float().mean().item()
    assert agreement >= 0.98


def _auto_run(out, tasks: int = 1) -> Run:
    raw = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2, "num_tasks": tasks},
           "model": {"name": "mlp", "options": {"hidden": [32]}}, "method": {"name": "finetune"},
           "train": {"epochs": 1, "batch_size": 32, "progress": False, "precision": "auto", "eval_every": 0},
           "output": {"save_features": False}}
    return Run(parse_config(raw), out)


def test_a_run_records_the_precision_it_used_beside_the_config(tmp_path, monkeypatch):
    for answer, precision in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(runtime, "native_bf16", native(answer))
        out = tmp_path / f"auto-{precision}"
        result = _auto_run(out).execute()
        assert result["precision"] == precision
        assert json.loads((out / "run.json").read_text())["precision"] == precision
        # config.yaml keeps what the user wrote: the same config means 'auto' on every machine
        assert yaml.safe_load((out / "config.yaml").read_text())["train"]["precision"] == "auto"
        # the thread count the config left to the machine (BatchNorm networks' numbers depend on it)
        assert json.loads((out / "run.json").read_text())["torch_threads"] == torch.get_num_threads()

    raw = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2, "num_tasks": 1},
           "model": {"name": "mlp", "options": {"hidden": [32]}}, "method": {"name": "finetune"},
           "train": {"epochs": 1, "batch_size": 32, "progress": False, "precision": "bf16", "eval_every": 0},
           "output": {"save_checkpoints": False, "save_features": False}}
    Run(parse_config(raw), tmp_path / "bf16").execute()
    metrics = json.loads((tmp_path / "bf16/metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["seen_accuracy"][0] > 0.9  # learns in bf16 too
    assert yaml.safe_load((tmp_path / "bf16/config.yaml").read_text())["train"]["precision"] == "bf16"


def test_a_resumed_auto_run_keeps_the_precision_it_started_in(tmp_path, monkeypatch):
    """Started where auto meant bf16, resumed on a machine where it would mean fp32: it continues in bf16."""
    monkeypatch.setattr(runtime, "native_bf16", native(True))
    out = tmp_path / "run"
    first = _auto_run(out, tasks=2)
    first.setup()
    first.scenario = first.scenario[:1]  # stop after the first task, as a crash would
    first.execute()
    monkeypatch.setattr(runtime, "native_bf16", native(False))
    resumed = _auto_run(out, tasks=2)
    result = resumed.execute(resume=True)
    assert resumed.precision == "bf16" and resumed.trainer.precision == "bf16"
    assert result["precision"] == "bf16" and result["tasks_done"] == 2


def test_an_unknown_precision_is_a_config_error():
    from cilearn.errors import ConfigError
    with pytest.raises(ConfigError, match="precision"):
        parse_config({"data": {"name": "digits"}, "model": {"name": "mlp"}, "method": {"name": "finetune"},
                      "scenario": {"classes_per_task": 2}, "train": {"precision": "fp8"}})


def test_bf16_inference_with_fp32_training_leaves_the_training_as_it_was(tmp_path):
    """train.inference_precision bf16: evaluation and feature extraction in bf16, the gradient steps in fp32 —
    a fine-tuning run (whose training never reads an inference result) ends with the same weights to the bit
    as the all-fp32 run; the inference is bf16's, and both run.json and metrics.json say what ran."""
    def run(out, **train):
        raw = {"data": {"name": "digits"}, "scenario": {"classes_per_task": 2, "num_tasks": 2},
               "model": {"name": "mlp", "options": {"hidden": [32]}}, "method": {"name": "finetune"},
               "train": {"epochs": 1, "batch_size": 32, "progress": False, "precision": "fp32", **train},
               "output": {"save_checkpoints": False, "save_features": False}}
        r = Run(parse_config(raw), tmp_path / out)
        return r, r.execute()

    plain, plain_metrics = run("fp32")
    mixed, mixed_metrics = run("mixed", inference_precision="bf16")
    for a, b in zip(plain.model.state_dict().values(), mixed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert (mixed.trainer.precision, mixed.inference.precision) == ("fp32", "bf16")
    assert plain.inference.precision == "fp32"
    images = mixed.scenario[0].test.images
    features = mixed.inference(images)[0]
    assert torch.equal(features, Inference(mixed.model, mixed.augment, CPU, 128, "bf16")(images)[0])
    assert not torch.equal(features, Inference(mixed.model, mixed.augment, CPU, 128, "fp32")(images)[0])
    assert (mixed_metrics["precision"], mixed_metrics["inference_precision"]) == ("fp32", "bf16")
    assert plain_metrics["inference_precision"] == "fp32"
    assert json.loads((tmp_path / "mixed/run.json").read_text())["inference_precision"] == "bf16"
    with pytest.raises(Exception, match="inference_precision"):
        parse_config({"data": {"name": "digits"}, "method": {"name": "finetune"},
                      "model": {"name": "mlp"}, "train": {"inference_precision": "fp16"}})


class _Scaled(_Spy):
    """Fine-tuning whose loss is multiplied by ``factor`` (1e30: every fp16 gradient overflows)."""

    factor = 1.0

    def loss(self, out, batch):
        return self.factor * super().loss(out, batch)


def _one_fp16_step(factor: float, clip: float | None = None):
    """One fp16 step of a tiny ResNet over 16 images (lr 0.1, plain SGD): (model before, model after, the batch's
    normalised inputs and labels in the order the loop drew them, the trainer)."""
    import copy
    torch.manual_seed(0)
    model = build_model("resnet20", 3, 8)
    model.add_classes(4)
    before = copy.deepcopy(model)
    images = np.random.RandomState(0).randint(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(16) % 4
    augment = BatchAugment((0.5,) * 3, (0.25,) * 3)  # normalisation only: no random crop or flip
    context = MethodContext(scenario=None, device=CPU, seed=0, infer=None, augment=augment)
    method = _Scaled(MethodOptions(name="finetune"), model, context)
    method.factor = factor
    cfg = TrainConfig(epochs=1, batch_size=16, progress=False, precision="fp16", channels_last=False, lr=0.1,
                      momentum=0.0, weight_decay=0.0, scheduler="constant", clip_grad_value=clip)
    trainer = Trainer(cfg, CPU, augment)
    trainer.start(method)
    rng = torch.get_rng_state()
    trainer.fit(model, method, ImageData(images, labels, ["a", "b", "c", "d"]))
    torch.set_rng_state(rng)
    order = torch.randperm(16)  # the loop's draw: the same order gives the same fp16 sums
    inputs = augment.normalize(torch.from_numpy(images).permute(0, 3, 1, 2))[order]
    return before, model, inputs, torch.as_tensor(labels)[order], trainer


def test_fp16_steps_with_the_true_gradient_clipped_after_unscaling(caplog):
    """fp16: the loss is scaled (2^16) before backward, the gradients unscaled before clipping and the step, so
    the update is SGD's on the true gradient: p1 = p0 − lr·clip(g), with g = ∇(2^16·L) / 2^16 computed here by
    hand under the same fp16 autocast (the scale keeps small fp16 gradients from flushing to zero; dividing by a
    power of two is exact).  Clipping the scaled gradients would clamp every entry to ±clip."""
    clip = 0.01
    before, after, inputs, labels, trainer = _one_fp16_step(1.0, clip)
    assert trainer.scaler.get_scale() == 2.0 ** 16  # no overflow: the scale stays
    with torch.autocast("cpu", dtype=torch.float16):
        logits = before(inputs)
    (2.0 ** 16 * torch.nn.functional.cross_entropy(logits.float(), labels)).backward()
    clipped = 0
    for (name, p0), p1 in zip(before.named_parameters(), after.parameters()):
        p0.grad /= 2.0 ** 16
        expected = p0.detach() - 0.1 * p0.grad.clamp(-clip, clip)
        torch.testing.assert_close(p1.detach(), expected, rtol=1e-3, atol=2e-5, msg=name)
        clipped += int((p0.grad.abs() > clip).sum())
    assert 0 < clipped < sum(p.numel() for p in before.parameters()) // 2  # the clip bit some entries, not all


def test_fp16_skips_a_step_whose_gradients_overflow_and_halves_the_scale():
    before, after, _, _, trainer = _one_fp16_step(1e30)
    assert trainer.scaler.get_scale() == 2.0 ** 15
    for p0, p1 in zip(before.parameters(), after.parameters()):
        assert torch.equal(p0, p1)  # the step was skipped: nothing moved
    state = trainer.state_dict()
    assert state["scaler"]["scale"] == 2.0 ** 15  # a checkpoint inside a task keeps the scale reached ...
    fresh = Trainer(trainer.cfg, CPU, trainer.augment)
    fresh.start(_Scaled(MethodOptions(name="finetune"), after, MethodContext(scenario=None, device=CPU, seed=0,
                                                                              infer=None, augment=trainer.augment)))
    assert fresh.scaler.get_scale() == 2.0 ** 16
    fresh.load_state_dict(state)
    assert fresh.scaler.get_scale() == 2.0 ** 15  # ... and a resumed trainer continues from it


def test_an_fp16_run_records_its_precision_and_warns_on_a_cpu(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="cilearn"):
        run = make_run(tmp_path, {"name": "finetune"}, num_tasks=2, train={"precision": "fp16"})
    assert any("fp16" in r.getMessage() and "slower than fp32" in r.getMessage() for r in caplog.records)
    result = run.execute()
    assert result["precision"] == "fp16" and result["inference_precision"] == "fp16"
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == "fp16"
    reference = make_run(tmp_path / "fp32", {"name": "finetune"}, num_tasks=2).execute()
    assert result["last_accuracy"] == pytest.approx(reference["last_accuracy"], abs=0.03)  # trained as fp32 did
