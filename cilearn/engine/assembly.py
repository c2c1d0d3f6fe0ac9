"""From a parsed :class:`~cilearn.config.Config` to the objects a run trains: scenario, model (with the
method's head) and method, in one place above the components, so that no component reaches upward.

The order of construction is part of the result: every step that draws random numbers (the model's
initialisation, a method's head) runs in the same order as before, so that a seed gives the same numbers.
"""

from __future__ import annotations

import dataclasses

import torch

from ..augment import BatchAugment
from ..config import Config
from ..data import DatasetSplits
from ..data.memo import load_splits
from ..distributed import Distributed
from ..errors import ConfigError
from ..methods import METHODS, Method, MethodContext
from ..models import IncrementalNet, build_model
from ..scenarios import Scenario, build_scenario
from ..transfer import apply_transfer


def scenario_from(cfg: Config, data: DatasetSplits | None = None) -> Scenario:
    """The run's scenario: ``data`` (a dataset given from Python) or the dataset ``cfg.data`` names, cut into
    tasks; with ``data.normalize: false`` the network sees raw pixels in [0, 1] (mean 0, std 1), with
    ``symmetric`` pixels in [-1, 1] (mean 0.5, std 0.5: 2x - 1; the crop's black padding becomes -1)."""
    splits = data if data is not None else load_splits(cfg.data)
    scenario = build_scenario(cfg.scenario, splits, cfg.seed, cfg.data.keep_in_memory)
    height, width, channels = scenario.image_shape
    if height != width:
        raise ConfigError(f"data: images are {height}×{width}; cilearn models expect square images "
                          f"(resize them with data.options.image_size for image folders).")
    if cfg.data.normalize is False:
        scenario = dataclasses.replace(scenario, mean=(0.0,) * channels, std=(1.0,) * channels)
    elif cfg.data.normalize == "symmetric":
        scenario = dataclasses.replace(scenario, mean=(0.5,) * channels, std=(0.5,) * channels)
    return scenario


def fresh_model(cfg: Config, scenario: Scenario, device: torch.device) -> IncrementalNet:
    """A freshly initialised network of the config's architecture, on ``device`` (no classes yet)."""
    height, _, channels = scenario.image_shape
    return build_model(cfg.model.name, channels, height, cfg.model.options).to(device)


def model_from(cfg: Config, scenario: Scenario, device: torch.device,
               distributed: Distributed | None) -> IncrementalNet:
    """The network a run starts from: fresh or a pretrained checkpoint (linear probe, freeze or full), in the
    memory format and compilation the train section asks for."""
    model = fresh_model(cfg, scenario, device)
    if cfg.model.pretrained:
        apply_transfer(model, cfg.model)
    elif cfg.model.transfer != "full" or cfg.model.freeze_stages:
        raise ConfigError("model.transfer / model.freeze_stages need model.pretrained (a checkpoint to start from).")
    if cfg.train.sync_batchnorm and distributed is not None:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        model.backbone.compile()  # in place: parameter names (checkpoints) stay as they are
    return model


def install_head(model: IncrementalNet, method_cls: type[Method], options) -> None:
    """Give ``model`` (no classes yet) the classifier head the method asks for (cosine, ...), if any."""
    head = method_cls.make_head(options, model.feature_dim)
    if head is not None:
        if model.num_classes:
            raise ValueError("install_head: the model's head already has classes")
        anchor = next(model.parameters())
        model.head = head.to(device=anchor.device, dtype=anchor.dtype)


def method_from(cfg: Config, model: IncrementalNet, context: MethodContext, augment: BatchAugment,
                batch_size: int) -> Method:
    """The configured method on ``model`` (its head installed first), checked against the scenario, the
    augmentation and the torchrun job."""
    options = cfg.method
    method_cls = METHODS.get(options.name).factory
    install_head(model, method_cls, options)
    method = method_cls(options, model, context)
    method.check(context.scenario)
    if augment.mixes and not method.mixes_labels:
        raise ConfigError(f"train.augment: cutmix trains on a mix of two labels, which only methods whose "
                          f"objective is the batch's classification loss take (finetune, joint, iid, gdumb); "
                          f"method {options.name} has other terms or keeps labels. Remove cutmix.")
    check_distributed_method(method, context.distributed, batch_size)
    return method


def check_distributed_method(method: Method, distributed: Distributed | None, batch_size: int) -> None:
    """A method replaying a minibatch every step splits it and the stream batch evenly over the processes:
    both sizes must divide by their number (otherwise a share's loss would weigh its replayed rows wrongly)."""
    if distributed is None or method.replay is None:
        return
    world = distributed.world
    replay = getattr(method, "replay_batch_size", None) or batch_size
    for key, size in (("train.batch_size", batch_size), ("method.replay_batch_size", replay)):
        if size % world:
            raise ConfigError(f"{key}: {size} does not divide by the {world} processes of this torchrun job; method "
                              f"'{type(method).name}' splits its stream batch and its replayed minibatch evenly "
                              f"over them: use a multiple of {world}.")


def model_with_head(cfg: Config, channels: int, image_size: int) -> IncrementalNet:
    """The run's architecture with its method's head, untrained, on the CPU: what a checkpoint loads into."""
    model = build_model(cfg.model.name, channels, image_size, cfg.model.options)
    install_head(model, METHODS.get(cfg.method.name).factory, cfg.method)
    return model
