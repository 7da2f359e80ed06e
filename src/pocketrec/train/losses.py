"""Loss terms shared by the recipes: cross-entropy over the catalogue, KL distillation, InfoNCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pocketrec.data.batching import Batch


def targets_and_queries(model: torch.nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Query vectors ``(N, d)`` at every target position of ``batch`` and their targets ``(N,)``."""
    mask = batch.target_mask
    return model.prefix_queries(batch.inputs)[mask], batch.targets[mask]


def catalogue_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Softmax cross-entropy over the whole catalogue (column 0 is masked by the tables)."""
    return F.cross_entropy(logits, targets)


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) at ``temperature``, averaged over examples (scaled by T^2 as usual).

    OD-Rec's code sums over the batch, which makes its weight depend on the batch size; the mean keeps
    the weight meaningful (METHODS.md §1.4 item 2).
    """
    t = temperature
    teacher = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    student = F.log_softmax(student_logits / t, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * (t * t)


def info_nce(anchors: Tensor, positives: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE with cosine similarity; row ``b`` of ``positives`` is the positive of anchor ``b``."""
    a = F.normalize(anchors, dim=-1)
    p = F.normalize(positives, dim=-1)
    logits = a @ p.t() / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
