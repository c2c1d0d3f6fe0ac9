"""The one training loop every method shares.

Per task: the training images go to the device once as uint8; each epoch draws a permutation, slices
batches, augments them as tensors, and asks the method for the loss.  The only per-batch Python is the
method's ``loss``; metrics accumulate on the device and are read once per epoch.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from .augment import BatchAugment, to_tensor_images
from .config import TrainConfig
from .data import ImageData
from .errors import TrainingDiverged
from .methods import Method


@dataclass
class EpochResult:
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    seconds: float


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


class Trainer:
    """Trains a model on one task's data for ``cfg.epochs`` epochs."""

    def __init__(self, cfg: TrainConfig, device: torch.device, augment: BatchAugment):
        self.cfg, self.device, self.augment = cfg, device, augment
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None

    def start(self, method: Method) -> None:
        """Fresh optimizer and schedule for a new task (restored afterwards when resuming)."""
        self.optimizer = make_optimizer(method.parameters_to_train(), self.cfg)
        self.scheduler = make_scheduler(self.optimizer, self.cfg)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def fit(self, model: torch.nn.Module, method: Method, data: ImageData, start_epoch: int = 0,
            on_epoch_end: Callable[[EpochResult], None] | None = None, desc: str = "") -> None:
        cfg, device = self.cfg, self.device
        images = to_tensor_images(data.images, device)
        labels = torch.as_tensor(data.labels, device=device)
        n = len(labels)
        # A last batch of one sample breaks BatchNorm in training mode; drop it (it is reshuffled next epoch).
        steps = n // cfg.batch_size + (1 if n % cfg.batch_size > 1 else 0)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.bf16 and device.type == "cuda"
                    else nullcontext())
        forward = torch.compile(model) if cfg.compile else model
        # disable=None: tqdm switches itself off when stderr is not a terminal (CI logs stay readable).
        bar = tqdm(total=(cfg.epochs - start_epoch) * steps, desc=desc, disable=None if cfg.progress else True,
                   leave=False, unit="batch", dynamic_ncols=True)
        model.train()
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            order = torch.randperm(n, device=device)
            for step in range(steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                inputs, targets = self.augment(images[idx]), labels[idx]
                with autocast:
                    logits = forward(inputs)
                    loss = method.loss(logits, targets, inputs)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                loss_sum += loss.detach().float()
                correct += (logits.detach().argmax(1) == targets).sum()
                bar.update()
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            mean_loss = loss_sum.item() / max(steps, 1)
            if not math.isfinite(mean_loss):
                bar.close()
                raise TrainingDiverged(
                    f"the training loss became {mean_loss} in epoch {epoch + 1} ({desc}); the learning rate "
                    f"{lr:g} is probably too high for this setting. Lower train.lr (or check the data) and "
                    f"start a new run.")
            seen = min(n, steps * cfg.batch_size)
            result = EpochResult(epoch=epoch, lr=lr, train_loss=mean_loss,
                                 train_accuracy=correct.item() / max(seen, 1),
                                 seconds=time.perf_counter() - started)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{result.train_accuracy:.3f}")
            if on_epoch_end is not None:
                on_epoch_end(result)
        bar.close()
