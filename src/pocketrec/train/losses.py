"""Small loss helpers shared by the recipes (the catalogue CE/KL live in :mod:`.catalogue_loss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pocketrec.data.batching import Batch


def targets_and_queries(model: torch.nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Query vectors ``(N, d)`` at every target position of ``batch`` and their targets ``(N,)``."""
    mask = batch.target_mask
    return model.prefix_queries(batch.inputs)[mask], batch.targets[mask]


def info_nce(anchors: Tensor, positives: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE with cosine similarity; row ``b`` of ``positives`` is the positive of anchor ``b``."""
    a = F.normalize(anchors, dim=-1)
    p = F.normalize(positives, dim=-1)
    logits = a @ p.t() / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
