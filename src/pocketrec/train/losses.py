"""Small loss helpers shared by the recipes (the catalogue CE/KL live in :mod:`.catalogue_loss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pocketrec.data.batching import Batch
from pocketrec.train import distributed


def targets_and_queries(model: torch.nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Query vectors ``(N, d)`` at every target position of ``batch`` and their targets ``(N,)``."""
    mask = batch.target_mask
    return model.prefix_queries(batch.inputs)[mask], batch.targets[mask]


def info_nce(anchors: Tensor, positives: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE with cosine similarity; row ``b`` of ``positives`` is the positive of anchor ``b``.

    Under ``torch.distributed`` (each rank holding its slice of the global batch's rows) the negatives are
    every rank's positives, and the gradient is the single-process one: every rank computes the loss of
    *all* anchors against all positives with only its own rows differentiable (the others' are gathered
    constants), so that over the ranks each term's gradient is taken once, with respect to each of its
    rows, by the rank that owns it; DDP sums them (its average, times ``W``). The value is this rank's
    anchors' share, so that the mean over ranks is the global loss. Every rank must call it.
    """
    a = F.normalize(anchors, dim=-1)
    p = F.normalize(positives, dim=-1)
    if not distributed.is_distributed():
        logits = a @ p.t() / temperature
        return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
    all_a, offset = distributed.gather_rows(a)
    all_p, _ = distributed.gather_rows(p)
    n, mine = len(all_a), (len(a) if not distributed.padding_step() else 0)
    if n == 0:  # no rank has a row
        return (a.sum() + p.sum()) * 0.0
    terms = F.cross_entropy(all_a @ all_p.t() / temperature, torch.arange(n, device=a.device), reduction="none")
    scale = distributed.world_size() / n
    gradient = terms.sum() * scale
    value = terms[offset:offset + mine].detach().sum() * scale
    return gradient + (value - gradient.detach())
