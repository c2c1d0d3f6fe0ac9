"""Fine-tuning: the base method unchanged, registered under its own name; ``head: full`` gives it every class's
output from the first task (van de Ven & Tolias's and Hsu et al.'s 10-output layer, their "none" rows)."""

from .base import Method
from .parts.components import OutputLayerOptions


class FineTune(Method):
    name = "finetune"
    description = "fine-tuning: train on each task in turn, no protection against forgetting (lower bound)"
    Options = OutputLayerOptions
    mixes_labels = True  # the objective is the batch's classification loss: cutmix applies

    def __init__(self, options: OutputLayerOptions, model, context):
        super().__init__(options, model, context)
        self.full_head = options.head == "full"
