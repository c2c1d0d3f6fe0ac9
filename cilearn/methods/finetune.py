"""Fine-tuning: the base method unchanged, registered under its own name."""

from .base import Method


class FineTune(Method):
    name = "finetune"
    description = "fine-tuning: train on each task in turn, no protection against forgetting (lower bound)"
    mixes_labels = True  # the objective is the batch's classification loss: cutmix applies
