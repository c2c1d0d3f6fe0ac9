"""Classification and distillation losses, selectable by name.

The iCaRL ablation study crosses classification ∈ {bce, ce, mse} with distillation ∈ {bce, mse, kd};
keeping them here lets every method offer the same choices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLASSIFICATION_LOSSES = ("ce", "bce", "mse")
DISTILLATION_LOSSES = ("bce", "mse", "kd")


def classification_loss(kind: str, logits: torch.Tensor, targets: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of ``logits`` (N, C) against integer ``targets``.

    ``mask`` (N, C, bool) keeps only the outputs each sample may use (a task's head in multi-head
    training); masked-out outputs neither compete in the softmax nor receive gradient.
    - ce: softmax cross-entropy;
    - bce: one-vs-all binary cross-entropy with logits against one-hot targets (iCaRL);
    - mse: squared error between softmax probabilities and one-hot targets.
    """
    if kind == "ce":
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return F.cross_entropy(logits, targets)
    one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    if kind == "bce":
        per_output = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    elif kind == "mse":
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        per_output = (logits.softmax(1) - one_hot).square()
    else:
        raise ValueError(f"unknown classification loss {kind!r}")
    if mask is not None:
        per_output = per_output * mask
        return per_output.sum() / mask.sum().clamp_min(1)
    return per_output.mean()


def distillation_loss(kind: str, logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 2.0, t2_scaling: bool = False) -> torch.Tensor:
    """Keep ``logits`` (the new model's outputs for the old classes) close to ``teacher_logits``.

    - bce: binary cross-entropy with the teacher's sigmoid outputs as soft targets (iCaRL);
    - mse: squared error between the two logit vectors;
    - kd: Li & Hoiem's L_old, the cross-entropy between the temperature-softened softmaxes,
      ``-Σ_c q_c log p_c`` with ``q = softmax(teacher/T)``, ``p = softmax(logits/T)``, averaged over the
      batch.  It differs from Hinton's KL only by the teacher's entropy (a constant: same gradient).
      LwF has no T² factor; ``t2_scaling`` multiplies by T² as Hinton et al. do to keep the gradient
      scale independent of T.
    """
    if logits.shape[1] == 0:
        return logits.sum() * 0.0
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher_logits))
    if kind == "mse":
        return F.mse_loss(logits, teacher_logits)
    if kind == "kd":
        log_p = F.log_softmax(logits / temperature, dim=1)
        q = F.softmax(teacher_logits / temperature, dim=1)
        loss = -(q * log_p).sum(1).mean()
        return loss * temperature ** 2 if t2_scaling else loss
    raise ValueError(f"unknown distillation loss {kind!r}")
