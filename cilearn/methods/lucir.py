"""LUCIR, learning a unified classifier incrementally via rebalancing (Hou, Pan, Loy, Wang & Lin, CVPR 2019).

Three parts on the exemplar memory (:class:`~cilearn.methods.parts.rehearsal.CosineRehearsal`):

- cosine normalisation: logits ``η · cos(θ_c, f)`` (:class:`~cilearn.models.heads.CosineHead`, η learnable),
  so old and new classes' weight norms cannot drift apart; the new classes' vectors are imprinted from
  their normalised mean feature before a task, the old ones stay fixed while it trains;
- less-forget constraint: ``λ · (1 - cos(f, f_old))`` on the normalised features of every sample, with the
  adaptive ``λ = λ_base · sqrt(old classes / new classes)``;
- inter-class separation: for each sample of an old class (an exemplar), a margin ranking loss between
  its ground-truth cosine and the K highest cosines of new classes,
  ``Σ_k max(0, m - cos(θ_y, f) + cos(θ_k, f))``, averaged over the old-class samples of the batch.

Total: ``mean(CE + λ·L_dis) + mean over old samples(L_mr)``, weights as the paper (λ_base 5 on CIFAR-100,
m 0.5, K 2).  Departures: the original code averages L_mr over the K pairs too (1/K of the paper's sum);
its class-balanced fine-tuning (used on ImageNet) is not included.  LUCIR's ResNets drop the last ReLU
(``model.options.last_relu: false``); an MLP's features stay non-negative.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ..models.heads import CosineHead
from ..schema import option
from .base import Batch, Output
from .parts.rehearsal import CosineRehearsal, RehearsalOptions, feature_distillation


@dataclasses.dataclass
class LUCIROptions(RehearsalOptions):
    lambda_base: float = option(5.0, min=0.0, help="λ_base of the less-forget constraint (5 on CIFAR-100, "
                                                   "10 on ImageNet: the paper and the authors' run.sh --lamda)")
    margin: float = option(0.5, min=0.0, help="m of the margin ranking loss (0.5: the paper, run.sh --dist)")
    hard_negatives: int = option(2, min=1, help="K, new classes ranked against each exemplar's ground truth (2: the "
                                                "paper, run.sh --K)")
    ranking_weight: float = option(1.0, min=0.0, help="weight of the margin ranking loss (1: run.sh --lw_mr)")
    imprint: bool = option(True, help="imprint the new classes' weights from their features before a task")


def adaptive_lambda(lambda_base: float, n_old: int, n_new: int) -> float:
    """LUCIR's ``λ = λ_base · sqrt(|C_old| / |C_new|)``."""
    return lambda_base * math.sqrt(n_old / n_new)


def margin_ranking(cosines: torch.Tensor, labels: torch.Tensor, n_old: int, margin: float, k: int) -> torch.Tensor:
    """``Σ_k max(0, m - cos_y + cos_k)`` over the k largest new-class cosines, averaged over the samples of
    old classes (``labels < n_old``); 0 without such samples."""
    old = labels < n_old
    if not bool(old.any()) or cosines.shape[1] <= n_old:
        return cosines.sum() * 0.0
    cos = cosines[old]
    positive = cos.gather(1, labels[old][:, None])
    hardest = cos[:, n_old:].topk(min(k, cos.shape[1] - n_old), dim=1).values
    return F.relu(margin - positive + hardest).sum(1).mean()


class LUCIR(CosineRehearsal):
    name = "lucir"
    description = "LUCIR: cosine classifier + less-forget feature distillation + margin ranking on exemplars"
    paper = ("Hou, Pan, Loy, Wang & Lin, Learning a Unified Classifier Incrementally via Rebalancing, "
             "CVPR 2019")
    Options = LUCIROptions
    primary_classifier = "head"

    @classmethod
    def make_head(cls, options: LUCIROptions, in_features: int) -> torch.nn.Module:
        return CosineHead(in_features, proxies=1, scale=1.0)

    @property
    def imprint(self) -> bool:
        return self.options.imprint

    @property
    def less_forget_weight(self) -> float:
        return adaptive_lambda(self.options.lambda_base, self.n_old, len(self.task.new_classes))

    def loss(self, out: Output, batch: Batch) -> torch.Tensor:
        loss = F.cross_entropy(out.logits, batch.labels)
        if not self.teacher:
            return loss
        teacher_features, _ = self.teacher.output(batch.inputs)
        loss = loss + self.less_forget_weight * feature_distillation(out.features, teacher_features)
        if self.options.ranking_weight:
            cosines = self.model.head.similarities(out.features)
            loss = loss + self.options.ranking_weight * margin_ranking(
                cosines, batch.labels, self.n_old, self.options.margin, self.options.hard_negatives)
        return loss
