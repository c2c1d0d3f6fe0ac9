"""Joint (cumulative) training on all data seen so far — the upper bound.

``when: every_task`` (default): every task trains on all data seen so far, from the weights the previous task
left (van de Ven & Tolias's "offline").  ``when: at_end``: the tasks before the last train nothing; the last task
trains once on all the data (Hsu et al.'s offline training, Mammoth's joint): only the last accuracies are the
upper bound, those after the earlier tasks are the untrained network's.
"""

import dataclasses
from typing import Literal

from ..data import ImageData
from ..scenarios import Task, concat
from ..schema import option
from .base import Method, MethodOptions, Stage


@dataclasses.dataclass
class JointOptions(MethodOptions):
    when: Literal["every_task", "at_end"] = option(
        "every_task", help="every_task: each task trains on all data seen so far; at_end: only the last task "
                           "trains, once, on all the data (Hsu et al.'s offline, Mammoth's joint; the accuracies "
                           "after the earlier tasks are then the untrained network's)")


class Joint(Method):
    name = "joint"
    description = "joint training on all data seen so far (upper bound, not incremental)"
    Options = JointOptions
    mixes_labels = True  # the objective is the batch's classification loss: cutmix applies

    def stages(self, task: Task) -> list[Stage]:
        last = task.index + 1 == len(self.context.scenario)
        return [Stage()] if self.options.when == "every_task" or last else []

    def training_data(self, task: Task) -> ImageData:
        return concat([t.train for t in self.context.scenario[: task.index + 1]])
