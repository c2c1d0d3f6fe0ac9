"""Joint (cumulative) training: every task trains on all data seen so far — the upper bound."""

from ..data import ImageData
from ..scenarios import Task, concat
from .base import Method


class Joint(Method):
    name = "joint"
    description = "joint training on all data seen so far (upper bound, not incremental)"
    mixes_labels = True  # the objective is the batch's classification loss: cutmix applies

    def training_data(self, task: Task) -> ImageData:
        return concat([t.train for t in self.context.scenario[: task.index + 1]])
